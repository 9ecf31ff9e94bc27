"""Training overhead of DP-SGD (Opacus) vs plain training, per epoch, and the cost of its privacy accounting
(run on demand, not a test).

Per model, the same data, seed and ``TrainerConfig`` are fitted twice through the one Trainer: plain, and with the
:class:`~healthfusion.training.privacy.DPSGD` plug-in (per-sample gradients, clipping, noise; a fixed noise
multiplier, so no calibration is timed). The figure is the median epoch time (after a first warm-up epoch) of each,
and their ratio, measured in the same run. Models:

* ``logistic``: logistic regression on 13 features, 490 rows (the size of Fed-Heart's pooled training set);
* ``hybrid``: the hybrid network (LSTM over ``--steps`` x ``--variables`` series + static MLP) on ``--n`` synthetic
  stays; under DP its ``nn.LSTM`` runs as Opacus's ``DPLSTM`` (a Python-level LSTM: expect most of the cost there).

Then the accountant: Opacus's noise calibration (``get_noise_multiplier``, done once per fit or per federated site
and run) and one epsilon query, by Opacus's ``RDPAccountant.get_epsilon`` against
:func:`~healthfusion.training.privacy.accountant_epsilon` (memoised per-step RDP curve; the same number). Before
memoisation a federated site paid one calibration and one query every round.

    python benchmarks/dp_overhead.py
    python benchmarks/dp_overhead.py --n 1000 --epochs 3 --models hybrid
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from healthfusion.features.dataset import ArrayDataset  # noqa: E402
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig  # noqa: E402
from healthfusion.models.hybrid import HybridConfig, HybridModel  # noqa: E402
from healthfusion.training import Trainer, TrainerConfig  # noqa: E402
from healthfusion.training.privacy import (  # noqa: E402
    DPSGD,
    PrivacyConfig,
    accountant_epsilon,
    calibrate_noise,
    make_private_model,
)


class Logistic(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, batch):
        return {"logits": self.linear(batch["static"]).squeeze(-1)}


def make_data(kind: str, args) -> ArrayDataset:
    rng = np.random.default_rng(0)
    if kind == "logistic":
        x = rng.normal(size=(490, 13)).astype(np.float32)
        return ArrayDataset({"static": x, "target": (x[:, 0] + rng.normal(size=490) > 0).astype(np.float32)})
    n, t, v = args.n, args.steps, args.variables
    values = rng.normal(size=(n, t, v)).astype(np.float32)
    y = (values[:, -6:, 0].mean(axis=1) + rng.normal(scale=0.5, size=n) > 0.8).astype(np.float32)
    return ArrayDataset({"ts_values": values, "ts_mask": (rng.random((n, t, v)) < 0.3).astype(np.float32),
                         "ts_delta": rng.random((n, t, v)).astype(np.float32),
                         "ts_lengths": np.full(n, t, dtype=np.int64),
                         "static": rng.normal(size=(n, 10)).astype(np.float32), "target": y})


def make_model(kind: str, args) -> nn.Module:
    torch.manual_seed(0)
    if kind == "logistic":
        return Logistic(13)
    return HybridModel(HybridConfig(ts=LSTMEncoderConfig(n_variables=args.variables, hidden_size=args.hidden),
                                    static=MLPEncoderConfig(in_dim=10, hidden_sizes=(args.hidden,))))


def epoch_seconds(kind: str, data: ArrayDataset, config: TrainerConfig, args, private: bool) -> float:
    model = make_model(kind, args)
    plugins = []
    if private:
        model = make_private_model(model)
        plugins = [DPSGD(PrivacyConfig(noise_multiplier=1.0), len(data), config.batch_size, config.max_epochs)]
    history = Trainer(config, plugins=plugins).fit(model, data, head_kind="binary")
    return statistics.median(history.epoch_seconds[1:] or history.epoch_seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["logistic", "hybrid"], default=["logistic", "hybrid"])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit; the first is a warm-up (default 4)")
    parser.add_argument("--n", type=int, default=1000, help="hybrid: synthetic stays (default 1000)")
    parser.add_argument("--steps", type=int, default=48, help="hybrid: time steps (default 48)")
    parser.add_argument("--variables", type=int, default=20, help="hybrid: series variables (default 20)")
    parser.add_argument("--hidden", type=int, default=32, help="hybrid: hidden size (default 32)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("HEALTHFUSION_THREADS", "2")))
    print(f"{'model':<10} {'plain s/epoch':>14} {'DP-SGD s/epoch':>15} {'ratio':>6}")
    for kind in args.models:
        data = make_data(kind, args)
        config = TrainerConfig(max_epochs=args.epochs, batch_size=args.batch_size, lr=0.01, progress=False, seed=0)
        plain = epoch_seconds(kind, data, config, args, private=False)
        dp = epoch_seconds(kind, data, config, args, private=True)
        print(f"{kind:<10} {plain:>14.3f} {dp:>15.3f} {dp / plain:>6.1f}")

    # the accountant, for two Fed-Heart sites' sizes (training rows, batch 16, 20 rounds of 1 local epoch)
    from opacus.accountants import RDPAccountant

    print("\naccountant (target epsilon 1 at delta 1e-5, batch 16, 20 rounds of 1 epoch):")
    for site, n in (("Cleveland", 200), ("Switzerland", 30)):
        rate, steps = 16 / n, 20 * -(-n // 16)
        start = time.perf_counter()
        noise = calibrate_noise(1.0, 1e-5, rate, steps)
        calibration = time.perf_counter() - start
        accountant = RDPAccountant()
        accountant.history = [(noise, rate, steps)]
        start = time.perf_counter()
        reference = accountant.get_epsilon(1e-5)
        opacus_query = time.perf_counter() - start
        accountant_epsilon(accountant, 1e-5)  # fills the memo (one curve per noise and rate)
        start = time.perf_counter()
        ours = accountant_epsilon(accountant, 1e-5)
        memo_query = time.perf_counter() - start
        print(f"  {site} ({n} rows, sampling rate {rate:.2f}, {steps} steps): noise calibration {calibration:.2f} s "
              f"(once per site and run); epsilon query: Opacus get_epsilon {opacus_query:.3f} s, memoised "
              f"{memo_query * 1e3:.3f} ms; epsilon {reference:.6f} vs {ours:.6f}")

if __name__ == "__main__":
    main()
