"""Training-loop overhead of the one engine, per training mode: one epoch through the Trainer vs the pure forward +
loss + backward + Adam step of the same batches with the same loss maths (the reference, measured in the same run,
batches built beforehand). Target ratio <= 1.2 for every mode.

Modes: ``supervised`` (hybrid LSTM + static MLP, BCE), ``transfer`` (transfer BiLSTM, risk + MMD + DANN with a
source and a target batch per step), ``multitask`` (multitask model with a binary, a regression and a clustering
task after its warm-up) and ``pretraining`` (masked-value pretraining of an LSTM).

    python benchmarks/training_overhead.py --n 2000 --epochs 3
    python benchmarks/training_overhead.py --modes transfer multitask --n 1000
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from healthfusion.features.dataset import ArrayDataset  # noqa: E402
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig  # noqa: E402
from healthfusion.models.hybrid import HybridConfig, HybridModel  # noqa: E402
from healthfusion.models.multitask import MultitaskModel, MultitaskModelConfig, TaskSpec  # noqa: E402
from healthfusion.models.pretraining import PretrainingConfig, PretrainingModel  # noqa: E402
from healthfusion.models.transfer import TransferModel, TransferModelConfig  # noqa: E402
from healthfusion.training import Trainer, TrainerConfig  # noqa: E402
from healthfusion.training.losses.dann import DANNLoss, dann_strength  # noqa: E402
from healthfusion.training.losses.mmd import MMDLoss, gaussian_mmd  # noqa: E402
from healthfusion.training.losses.multitask import (  # noqa: E402
    MultitaskLoss,
    MultitaskObjective,
    MultitaskObjectiveConfig,
)
from healthfusion.training.losses.pretraining import PretrainingLoss  # noqa: E402
from healthfusion.training.losses.supervised import SupervisedLoss  # noqa: E402
from healthfusion.training.multitask import target_key  # noqa: E402
from healthfusion.training.objectives import masked_loss  # noqa: E402

MODES = ("supervised", "transfer", "multitask", "pretraining")


def make_data(n: int, t: int, v: int, f: int, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, t, v)).astype(np.float32)
    y = (values[:, -6:, 0].mean(axis=1) + rng.normal(scale=0.5, size=n) > 0.8).astype(np.float32)
    return ArrayDataset({
        "ts_values": values, "ts_mask": (rng.random((n, t, v)) < 0.3).astype(np.float32),
        "ts_delta": rng.random((n, t, v)).astype(np.float32), "ts_lengths": np.full(n, t, dtype=np.int64),
        "static": rng.normal(size=(n, f)).astype(np.float32), "target": y,
        target_key("risk"): y, target_key("score"): values[:, :, 1].mean(axis=1),
    })


def lstm(v: int, hidden: int) -> LSTMEncoderConfig:
    return LSTMEncoderConfig(n_variables=v, hidden_size=hidden)


class Case:
    """One mode: its model, the Trainer's loss terms and sources, and the reference step on prebuilt batches."""

    def __init__(self, mode: str, data: ArrayDataset, args):
        self.mode, self.data, self.args = mode, data, args
        v, f, h = args.variables, 10, args.hidden
        torch.manual_seed(0)
        if mode == "supervised":
            self.model = HybridModel(HybridConfig(ts=lstm(v, h), static=MLPEncoderConfig(in_dim=f, hidden_sizes=(h,))))
            self.terms, self.sources = [SupervisedLoss()], None
        elif mode == "transfer":
            self.model = TransferModel(TransferModelConfig(ts=lstm(v, h), static_dim=f, hidden=h))
            self.terms = [SupervisedLoss(class_weight=True), MMDLoss(1.0), DANNLoss(1.0)]
            half = len(data) // 2
            self.sources = {"source": data[:half], "target": data[half:]}
        elif mode == "multitask":
            tasks = (TaskSpec(name="risk", kind="binary"), TaskSpec(name="score", kind="regression"),
                     TaskSpec(name="pheno", kind="clustering", n_outputs=3))
            self.model = MultitaskModel(MultitaskModelConfig(
                ts=lstm(v, h), static=MLPEncoderConfig(in_dim=f, hidden_sizes=(h,)), tasks=tasks, fusion_dim=h,
                task_dim=h))
            self.terms = [MultitaskObjective(MultitaskObjectiveConfig(cluster_warmup_epochs=1000))]
            self.sources = None
        else:
            self.model = PretrainingModel(PretrainingConfig(encoder=lstm(v, h)))
            self.terms, self.sources = [PretrainingLoss()], None
        self.initial = {k: t.clone() for k, t in self.model.state_dict().items()}

    def fresh(self) -> nn.Module:
        self.model.load_state_dict(self.initial)
        return self.model

    def trainer_epoch(self, seed: int) -> float:
        cfg = TrainerConfig(max_epochs=1, batch_size=self.args.batch_size, patience=None, seed=seed,
                            num_threads=self.args.threads, device="cpu")
        trainer = Trainer(cfg, loss=self.terms)
        history = trainer.fit(self.fresh(), self.data, None, sources=self.sources)
        return history.epoch_seconds[0]

    def pure_epoch(self) -> float:
        model, bs = self.fresh(), self.args.batch_size
        rng = np.random.default_rng(0)
        batches = list(self.data.iter_batches(bs, order=rng.permutation(len(self.data))))
        aux = None
        if self.sources is not None:
            aux = [(self.sources["source"].without("target").batch(rng.integers(0, len(self.sources["source"]), bs)),
                    self.sources["target"].without("target").batch(rng.integers(0, len(self.sources["target"]), bs)))
                   for _ in batches]
        extra = []
        if self.mode == "multitask":
            mt = MultitaskLoss(self.model.config.tasks)
            extra = list(mt.parameters())
        generator = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(list(model.parameters()) + extra, lr=1e-3, weight_decay=1e-4)
        model.train()
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            if self.mode == "supervised":
                target = batch.pop("target")
                loss = masked_loss("binary", model(batch)["logits"], target)
            elif self.mode == "transfer":
                target = batch.pop("target")
                loss = masked_loss("binary", model(batch)["logits"], target)
                zs, zt = model.encode(aux[i][0]), model.encode(aux[i][1])
                loss = loss + gaussian_mmd(zs, zt)
                strength = dann_strength(i / max(len(batches) - 1, 1))
                logits = model.domain_logits(torch.cat([zs, zt]), strength)
                domain = torch.cat([torch.zeros(len(zs)), torch.ones(len(zt))])
                loss = loss + nn.functional.binary_cross_entropy_with_logits(logits, domain)
            elif self.mode == "multitask":
                loss, _ = mt(model(batch), batch, use_clustering=False)
            else:
                batch.pop("target")
                loss = model(batch, generator)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--variables", type=int, default=36)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_data(args.n, args.steps, args.variables, 10)
    summary = {}
    for mode in args.modes:
        case = Case(mode, data, args)
        ratios = []
        for epoch in range(args.epochs):
            ref = case.pure_epoch()
            engine = case.trainer_epoch(seed=epoch)
            ratios.append(engine / ref)
            print(f"{mode} epoch {epoch}: trainer {engine:.2f} s, pure fwd+loss+bwd {ref:.2f} s, "
                  f"ratio {ratios[-1]:.2f}", flush=True)
        summary[mode] = float(np.median(ratios))
    for mode, ratio in summary.items():
        print(f"{mode}: median ratio {ratio:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
