"""Training-loop overhead: one epoch through the Trainer vs the pure forward + backward + step of the same batches
(the reference, measured in the same run). Target ratio <= 1.2.

    python benchmarks/training_overhead.py --n 4000 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from healthfusion.features.dataset import ArrayDataset  # noqa: E402
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig  # noqa: E402
from healthfusion.models.hybrid import HybridConfig, HybridModel  # noqa: E402
from healthfusion.training import Trainer, TrainerConfig  # noqa: E402
from healthfusion.training.objectives import masked_loss  # noqa: E402


def make_data(n: int, t: int, v: int, f: int, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, t, v)).astype(np.float32)
    y = (values[:, -6:, 0].mean(axis=1) + rng.normal(scale=0.5, size=n) > 0.8).astype(np.float32)
    return ArrayDataset({
        "ts_values": values, "ts_mask": (rng.random((n, t, v)) < 0.3).astype(np.float32),
        "ts_delta": rng.random((n, t, v)).astype(np.float32), "ts_lengths": np.full(n, t, dtype=np.int64),
        "static": rng.normal(size=(n, f)).astype(np.float32), "target": y,
    })


def model_for(v: int, f: int, hidden: int) -> HybridModel:
    torch.manual_seed(0)
    return HybridModel(HybridConfig(ts=LSTMEncoderConfig(n_variables=v, hidden_size=hidden),
                                    static=MLPEncoderConfig(in_dim=f, hidden_sizes=(hidden,))))


def pure_epoch(model, data: ArrayDataset, batch_size: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batches = list(data.iter_batches(batch_size, order=np.random.default_rng(0).permutation(len(data))))
    model.train()
    t0 = time.perf_counter()
    for batch in batches:
        target = batch.pop("target")
        loss = masked_loss("binary", model(batch)["logits"], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--variables", type=int, default=36)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_data(args.n, args.steps, args.variables, 10)
    ratios = []
    for epoch in range(args.epochs):
        ref = pure_epoch(model_for(args.variables, 10, args.hidden), data, args.batch_size)
        trainer = Trainer(TrainerConfig(max_epochs=1, batch_size=args.batch_size, patience=None, seed=epoch,
                                        num_threads=args.threads))
        history = trainer.fit(model_for(args.variables, 10, args.hidden), data, None)
        ratio = history.epoch_seconds[0] / ref
        ratios.append(ratio)
        print(f"epoch {epoch}: trainer {history.epoch_seconds[0]:.2f} s, pure fwd+bwd {ref:.2f} s, ratio {ratio:.2f}",
              flush=True)
    print(f"median ratio {np.median(ratios):.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
