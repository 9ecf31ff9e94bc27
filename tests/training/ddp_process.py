"""One process of a 2-process data-parallel fit on loopback, run by test_distributed.py (and the single-process
reference fit it is compared with).

    python ddp_process.py RANK WORLD_SIZE PORT OUT.pt
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyNet, planted_binary  # noqa: E402

from healthfusion.training.config import TrainerConfig  # noqa: E402
from healthfusion.training.distributed import DataParallel  # noqa: E402
from healthfusion.training.trainer import Trainer  # noqa: E402

CONFIG = TrainerConfig(max_epochs=4, batch_size=32, lr=0.01, seed=0, patience=None, num_threads=1)


def fit(plugins=()) -> tuple[dict, list]:
    """The fit both sides run: TinyNet (seed 0) on 400 planted rows, validated on 200 others."""
    torch.manual_seed(0)
    model = TinyNet(5)
    history = Trainer(CONFIG, plugins=list(plugins)).fit(model, planted_binary(400, seed=0),
                                                        planted_binary(200, seed=1))
    return model.state_dict(), history.val_metric


if __name__ == "__main__":
    import torch.distributed as dist

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        weights, val_metric = fit([DataParallel()])
        torch.save({"weights": weights, "val_metric": val_metric}, out)
    finally:
        dist.destroy_process_group()
