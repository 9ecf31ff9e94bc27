"""Per-epoch sample orders: a seeded shuffle, or random minority oversampling to balanced classes.

Both draw only from the ``numpy.random.Generator`` they are given, so a trainer that saves the generator's state
(``rng.bit_generator.state``) in a checkpoint reproduces every later epoch after a resume.

Example::

    rng = np.random.default_rng(0)
    order = balanced_order(np.array([0, 0, 0, 1]), rng)  # 6 indices: three of class 0, three of class 1
"""

from __future__ import annotations

import numpy as np


def shuffled_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``0..n-1`` (int64, shape [n])."""
    return rng.permutation(n).astype(np.int64)


def balanced_size(labels: np.ndarray) -> int:
    """Length of :func:`balanced_order` ``(labels, rng)`` for any ``rng``."""
    y = np.asarray(labels).astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(y) & (y >= 0)
    _, counts = np.unique(y[valid], return_counts=True)
    return int(counts.size * counts.max()) + int((~valid).sum()) if counts.size else int((~valid).sum())


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices for one epoch in which every class appears as often as the largest class, shuffled.

    Every sample of every class is kept once; smaller classes are topped up by drawing their samples with
    replacement. Samples with a missing label (NaN or negative) are kept once each and not counted as a class.

    Parameters
    ----------
    labels : ndarray
        [n] class labels (binary 0/1 or multiclass ids).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int64
        Shape [K * n_max + n_missing], where ``n_max`` is the size of the largest class.

    Raises
    ------
    ValueError
        If ``labels`` is not 1-D (multilabel and regression targets cannot be oversampled by class).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"Oversampling needs one class label per sample ([n]); got shape {labels.shape}. "
            "Use imbalance='class_weight' or 'none' for multilabel targets."
        )
    y = labels.astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(y) & (y >= 0)
    parts = [np.flatnonzero(~valid)]
    classes, counts = np.unique(y[valid], return_counts=True)
    n_max = int(counts.max()) if counts.size else 0
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(valid & (y == cls))
        parts.append(members)
        if count < n_max:
            parts.append(rng.choice(members, size=n_max - int(count), replace=True))
    order = np.concatenate(parts).astype(np.int64)
    return order[rng.permutation(order.size)]


class EpochLoader:
    """The training batches of one epoch, reordered on every iteration: the trainer's data loader.

    Iterating yields CPU batch dicts (``ArrayDataset.batch``) of at most ``batch_size`` rows; every new iteration
    draws a fresh order from ``rng`` (a shuffle, or balanced oversampling with ``oversample=True``). A plug-in
    (see :mod:`healthfusion.training.plugins`) may replace the loader with any iterable of batch dicts, e.g. the
    torch ``DataLoader`` of :meth:`to_torch` that Opacus's ``make_private`` expects.

    Parameters
    ----------
    data : ArrayDataset
    batch_size : int
    rng : numpy.random.Generator
    oversample : bool, default False
        Use :func:`balanced_order` on ``data["target"]``.
    pin_memory : bool, default False
        Pin each batch's tensors (for asynchronous copies to a CUDA device).
    """

    def __init__(self, data, batch_size: int, rng: np.random.Generator, oversample: bool = False,
                 pin_memory: bool = False):
        self.dataset = data
        self.batch_size = int(batch_size)
        self.rng = rng
        self.oversample = oversample
        self.pin_memory = pin_memory

    def order(self) -> np.ndarray:
        """A new epoch's row order."""
        if self.oversample:
            return balanced_order(self.dataset["target"], self.rng)
        return shuffled_order(len(self.dataset), self.rng)

    def __len__(self) -> int:
        n = balanced_size(self.dataset["target"]) if self.oversample else len(self.dataset)
        return -(-n // self.batch_size)

    def __iter__(self):
        order = self.order()
        for start in range(0, len(order), self.batch_size):
            batch = self.dataset.batch(order[start : start + self.batch_size])
            yield {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch

    def to_torch(self):
        """The same batches as a ``torch.utils.data.DataLoader`` over row indices (a shuffled sampler driven by
        this loader's generator, a collate function that builds the batch dict): the form that wrappers such as
        Opacus's ``make_private`` accept (they read ``dataset``, ``batch_sampler`` and ``collate_fn``)."""
        import torch
        from torch.utils.data import DataLoader, Dataset

        loader = self

        class _Rows(Dataset):
            def __len__(self):
                return len(loader.dataset)

            def __getitem__(self, i):
                return int(i)

        class _Batches:
            def __iter__(self):
                order = loader.order()
                for start in range(0, len(order), loader.batch_size):
                    yield order[start : start + loader.batch_size].tolist()

            def __len__(self):
                return len(loader)

        def collate(rows):
            return loader.dataset.batch(np.asarray(rows, dtype=np.int64)) if rows else {}

        return DataLoader(_Rows(), batch_sampler=_Batches(), collate_fn=collate,
                          pin_memory=self.pin_memory and torch.cuda.is_available())


class SourceSampler:
    """Batches from several auxiliary data sources for one training step: the one abstraction behind every
    multi-source step (e.g. source and target features for DANN/MMD).

    Each source is an endless stream of shuffled batches of its *features* (its ``"target"`` array is dropped
    unread); every call of :meth:`draw` takes the next batch of each source, in the order given, from the shared
    generator, so a seeded fit draws the same batches every time.

    Parameters
    ----------
    sources : mapping of str -> ArrayDataset
    batch_size : int
        Per source (at most the source's size).
    rng : numpy.random.Generator

    Raises
    ------
    ValueError
        If a source is empty.
    """

    def __init__(self, sources, batch_size: int, rng: np.random.Generator):
        empty = [name for name, data in sources.items() if len(data) == 0]
        if empty:
            raise ValueError(f"Auxiliary source(s) {empty} are empty; pass at least one row each.")
        self.sources = {name: data.without("target") for name, data in sources.items()}
        self.sizes = {name: min(int(batch_size), len(data)) for name, data in self.sources.items()}
        self.rng = rng
        self._orders = {name: np.empty(0, dtype=np.int64) for name in self.sources}

    def draw(self, device=None) -> dict:
        """``{source name: batch dict}`` of the next step (on ``device``)."""
        out = {}
        for name, data in self.sources.items():
            size, order = self.sizes[name], self._orders[name]
            if len(order) < size:
                order = np.concatenate([order, shuffled_order(len(data), self.rng)])
            out[name] = data.batch(order[:size], device=device)
            self._orders[name] = order[size:]
        return out

    def state_dict(self) -> dict:
        """The rows left in each stream's current pass (the generator's state is the trainer's)."""
        return {name: order.tolist() for name, order in self._orders.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, order in state.items():
            if name in self._orders:
                self._orders[name] = np.asarray(order, dtype=np.int64)
