"""Ray (extra ``scale``): the only module of healthfusion that imports it.

:class:`RayCluster` is one command's connection to a cluster (see :mod:`healthfusion.scale.cluster`): ``local``
starts a cluster on this machine (``ray.init`` with ``num_cpus=N``, no dashboard, bound to 127.0.0.1, its logs in
a temporary folder) and shuts it down when the command ends; ``auto`` and an address join a running one and leave
it running. Inside a process that already runs Ray (a test's shared cluster), the running cluster is used and
left alone.

What runs on it goes through the same code as a single-process run:

* :meth:`RayCluster.map` runs a function over argument tuples as Ray tasks (one CPU each): it is the
  :class:`~healthfusion.data.partition.Partitions` of a partitioned cohort build, so each task runs the reader's
  own reduction of its stays' events.
* :meth:`RayCluster.fit` trains with Ray Train's ``TorchTrainer`` (gloo on CPU, NCCL on GPU): every worker runs
  the one :class:`~healthfusion.training.Trainer` with the
  :class:`~healthfusion.training.distributed.DataParallel` plug-in; worker 0's weights and history come back.

healthfusion must be importable on every node (installed, or on ``PYTHONPATH`` of a local cluster).

Example::

    with RayCluster("local:2") as cluster:
        cohort = mimic4.build(root, out="cohort", partitions=cluster)
        model, history = cluster.fit(model, train, val, TrainerConfig(max_epochs=5))
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from healthfusion.optional import require
from healthfusion.scale.cluster import ClusterSpec, parse_cluster

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0  # how often map() logs the tasks done


def _ray():
    return require("ray", extra="scale", needed_for="Running on a Ray cluster (--cluster)")


class RayCluster:
    """A Ray cluster for the length of a ``with`` block.

    Parameters
    ----------
    spec : ClusterSpec or str
        A ``--cluster`` value (``local``, ``local:N``, ``auto``, ``HOST:PORT``, ``ray://HOST:PORT``).

    Attributes
    ----------
    n : int
        Workers: the CPUs of the cluster (``local:N``: N). Partitioned builds use ``n`` partitions and
        data-parallel fits ``n`` training processes unless told otherwise.

    Raises
    ------
    MissingExtraError
        Naming the ``scale`` extra, when Ray is not installed (on entering the block).
    ValueError
        For a ``spec`` that is not a cluster value.
    """

    def __init__(self, spec: ClusterSpec | str):
        self.spec = spec if isinstance(spec, ClusterSpec) else parse_cluster(spec)
        self.n = self.spec.workers or 1
        self._owned = False
        self._temp: str | None = None

    def __enter__(self) -> RayCluster:
        ray = _ray()
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if ray.is_initialized():
            log.info("using the Ray cluster already running in this process")
        elif self.spec.kind == "local":
            self._temp = tempfile.mkdtemp(prefix="hf-ray-")
            start = time.perf_counter()
            ray.init(address="local", num_cpus=self.spec.workers, include_dashboard=False,
                     _node_ip_address="127.0.0.1", _temp_dir=self._temp, log_to_driver=False,
                     configure_logging=False)  # workers inherit this process's environment (PYTHONPATH)
            self._owned = True
            log.info("started a local Ray cluster of %d workers in %.0f s (logs: %s)", self.spec.workers,
                     time.perf_counter() - start, self._temp)
        else:
            ray.init(address=self.spec.address or "auto", log_to_driver=False, configure_logging=False)
            self._owned = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.n = self.spec.workers if self.spec.kind == "local" and self.spec.workers else max(cpus, 1)
        return self

    def __exit__(self, *exc) -> None:
        if self._owned:
            _ray().shutdown()
            self._owned = False
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    # ------------------------------------------------------------------------------------------ tasks
    def map(self, function: Callable, arguments: Sequence[tuple]) -> list[Any]:
        """``[function(*args) for args in arguments]``, each call a Ray task with one CPU; results in order.

        An exception raised by a call is raised here as it was (the first failing task's).
        """
        ray = _ray()
        task = ray.remote(num_cpus=1, max_retries=0)(function)
        refs = [task.remote(*args) for args in arguments]
        pending, last, start = list(refs), time.perf_counter(), time.perf_counter()
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=PROGRESS_SECONDS)
            if pending and time.perf_counter() - last >= PROGRESS_SECONDS:
                log.info("%d of %d tasks done (%.0f s)", len(refs) - len(pending), len(refs),
                         time.perf_counter() - start)
                last = time.perf_counter()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            raise (cause.cause if getattr(cause, "cause", None) is not None else cause) from None

    # ----------------------------------------------------------------------------------------- training
    def fit(self, model, train, val, config, head_kind: str = "binary", workers: int | None = None):
        """Train ``model`` data-parallel with Ray Train on ``workers`` processes (default :attr:`n`).

        Every worker runs ``Trainer(config, plugins=[DataParallel()]).fit(model, train, val, head_kind)``; a
        worker uses ``config.num_threads`` torch threads, default 1. GPUs are used (NCCL) when the cluster has
        one per worker and ``config.device`` is not ``"cpu"``; otherwise gloo on CPU.

        Returns
        -------
        (model, TrainingHistory)
            ``model`` (the object passed) holding worker 0's final weights, and worker 0's history.
        """
        ray = _ray()
        import torch
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from healthfusion.training.config import TrainingHistory

        workers = int(workers or self.n)
        use_gpu = config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= workers
        if config.num_threads is None:
            config = config.model_copy(update={"num_threads": 1})
        storage = tempfile.mkdtemp(prefix="hf-ray-train-")
        try:
            trainer = TorchTrainer(
                _worker_fit,
                train_loop_config={"model": ray.put(model), "train": ray.put(train),
                                   "val": ray.put(val) if val is not None else None,
                                   "config": config.model_dump(), "head_kind": head_kind},
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                run_config=RunConfig(name="healthfusion-fit", storage_path=storage),
            )
            start = time.perf_counter()
            log.info("data-parallel fit on %d %s workers", workers, "GPU" if use_gpu else "CPU")
            result = trainer.fit()
            log.info("data-parallel fit done in %.0f s", time.perf_counter() - start)
            if result.checkpoint is None:
                raise RuntimeError(f"Ray Train returned no checkpoint from worker 0 ({result.error!r}).")
            with result.checkpoint.as_directory() as folder:
                state = torch.load(Path(folder) / "model.pt", weights_only=True, map_location="cpu")
                history = TrainingHistory(**json.loads((Path(folder) / "history.json").read_text()))
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        model.load_state_dict(state)
        return model, history


def _worker_fit(cfg: dict) -> None:
    """One Ray Train worker: the one Trainer with the DataParallel plug-in; worker 0 reports a checkpoint with
    the final weights (``model.pt``) and the history (``history.json``)."""
    import ray
    import ray.train
    import torch

    from healthfusion.training.distributed import DataParallel
    from healthfusion.training.trainer import Trainer

    model, train = ray.get(cfg["model"]), ray.get(cfg["train"])
    val = ray.get(cfg["val"]) if cfg["val"] is not None else None
    trainer = Trainer(cfg["config"], plugins=[DataParallel()])
    history = trainer.fit(model, train, val, head_kind=cfg["head_kind"])
    metrics = {"epochs": len(history.train_loss), "best_epoch": history.best_epoch}
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(folder) / "model.pt")
        (Path(folder) / "history.json").write_text(json.dumps(asdict(history)))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
