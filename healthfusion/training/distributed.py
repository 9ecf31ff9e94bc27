"""Data-parallel training (torch DDP) as a plug-in of the one :class:`~healthfusion.training.Trainer`.

Every process of a ``torch.distributed`` process group (started by a launcher: Ray Train's ``TorchTrainer``, see
:mod:`healthfusion.scale.ray`, or ``torchrun``) runs the same ``Trainer.fit`` with the :class:`DataParallel`
plug-in. It wraps the model in ``DistributedDataParallel`` (gradients averaged across processes after every
backward pass; gloo on CPU, NCCL on GPU) and replaces the loader with a :class:`ShardedLoader`: all processes
draw the same epoch order from the same seed, and each takes its share of every global batch of
``batch_size`` rows. The averaged gradient of a step is then the gradient of the whole global batch, as in a
single-process fit with the same seed and batch size (exactly so when the batch splits evenly; dropout draws
differ). Validation runs on every process on the whole validation set, so early stopping decides the same
everywhere; ``train_loss`` is each process's own share.

Example (inside each worker of a process group)::

    history = Trainer(config, plugins=[DataParallel()]).fit(model, train, val)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from healthfusion.training.plugins import TrainingParts, TrainingPlugin

if TYPE_CHECKING:
    from healthfusion.training.trainer import Trainer

log = logging.getLogger(__name__)


class ShardedLoader:
    """Process ``rank``'s share of each batch of ``loader`` (an :class:`~healthfusion.training.sampling.EpochLoader`).

    Every process draws the same order from its generator (same seed); batch ``b`` is split by
    ``numpy.array_split`` into ``world_size`` shares and this process yields share ``rank``. A final batch with
    fewer rows than processes is topped up by repeating its rows, so that no process takes an empty step (DDP
    needs every process in every step). ``len`` is the loader's number of batches.
    """

    def __init__(self, loader, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}.")
        self.loader, self.rank, self.world_size = loader, int(rank), int(world_size)
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        order = self.loader.order()
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            if len(rows) < self.world_size:
                rows = np.resize(rows, self.world_size)
            yield self.dataset.batch(np.array_split(rows, self.world_size)[self.rank])


class DataParallel(TrainingPlugin):
    """Wrap the fit's model in ``DistributedDataParallel`` and shard its batches across the process group.

    Parameters
    ----------
    find_unused_parameters : bool, default True
        Passed to DDP: a multimodal model may leave some parameters unused in a step (e.g. a missing-modality
        vector when every row of the batch has the modality).

    Raises
    ------
    RuntimeError
        At ``fit`` when no ``torch.distributed`` process group is initialised (start the fit through a launcher).
    """

    def __init__(self, find_unused_parameters: bool = True):
        self.find_unused_parameters = find_unused_parameters
        self.rank: int | None = None
        self.world_size: int | None = None

    def wrap(self, parts: TrainingParts, trainer: Trainer) -> TrainingParts:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group; run the fit "
                               "through healthfusion.scale.ray (--cluster) or torchrun.")
        if not hasattr(parts.loader, "order"):
            raise TypeError(f"DataParallel shards an EpochLoader; another plug-in replaced it with "
                            f"{type(parts.loader).__name__}. Put DataParallel first or drop the other plug-in.")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        device = trainer.device
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        model = DistributedDataParallel(parts.model, device_ids=ids,
                                        find_unused_parameters=self.find_unused_parameters)
        log.info("data-parallel fit: process %d of %d (%s)", self.rank, self.world_size, dist.get_backend())
        return TrainingParts(model, parts.optimizer, ShardedLoader(parts.loader, self.rank, self.world_size))

    def on_fit_end(self, trainer: Trainer) -> None:
        """Unwrap: ``trainer.model`` is the plain model again (its weights are the same on every process)."""
        trainer.model = getattr(trainer.model, "module", trainer.model)
