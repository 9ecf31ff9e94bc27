"""Data-parallel fits (DataParallel plug-in) in a 2-process gloo group on 127.0.0.1, against the single-process
fit with the same seed; sharding of batches."""

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from healthfusion.training.config import TrainerConfig
from healthfusion.training.distributed import DataParallel, ShardedLoader
from healthfusion.training.sampling import EpochLoader
from healthfusion.training.trainer import Trainer

from .conftest import TinyNet, planted_binary

PROCESS = Path(__file__).with_name("ddp_process.py")
CONFIG = dict(max_epochs=4, batch_size=32, lr=0.01, seed=0, patience=None, num_threads=1)


def test_sharded_loader_splits_each_global_batch():
    data = planted_binary(70)
    loaders = [ShardedLoader(EpochLoader(data, 32, np.random.default_rng(5)), r, 3) for r in range(3)]
    batches = [list(loader) for loader in loaders]
    order = EpochLoader(data, 32, np.random.default_rng(5)).order()
    assert [len(b) for b in batches] == [3, 3, 3] and len(loaders[0]) == 3
    for step in range(3):
        rows = np.concatenate([batches[r][step]["static"].numpy() for r in range(3)])
        np.testing.assert_array_equal(rows, data["static"][order[step * 32:(step + 1) * 32]])
    tail = ShardedLoader(EpochLoader(planted_binary(33), 32, np.random.default_rng(0)), 2, 3)
    assert [len(b["target"]) for b in tail] == [10, 1]  # the 1-row tail is repeated so every process steps
    with pytest.raises(ValueError, match="rank"):
        ShardedLoader(EpochLoader(data, 32, np.random.default_rng(0)), 3, 3)


def test_data_parallel_needs_a_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        Trainer(TrainerConfig(**CONFIG), plugins=[DataParallel()]).fit(TinyNet(5), planted_binary(40))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_the_single_process_fit(tmp_path):
    spec = importlib.util.spec_from_file_location("ddp_process", PROCESS)
    process = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(process)
    weights, val_metric = process.fit()
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(PROCESS), str(rank), "2", str(port), str(tmp_path / f"{rank}.pt")])
             for rank in range(2)]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        # the same global batches: weights equal up to float summation order, AUROC per epoch within 1e-4
        for name, value in weights.items():
            torch.testing.assert_close(result["weights"][name], value, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(result["val_metric"], val_metric, atol=1e-4)
    assert val_metric[-1] > 0.8  # it did learn the planted signal
