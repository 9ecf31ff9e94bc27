"""In-memory multimodal arrays: the object feature builders return and the trainer and estimators consume.

:class:`ArrayDataset` is a dict of equally long numpy arrays keyed by the names in :mod:`healthfusion.features.batch`.
It indexes like a numpy array (``ds[idx]`` with an int array, slice or boolean mask returns a new ``ArrayDataset``),
has a ``shape`` of ``(n,)`` so scikit-learn's CV utilities can split it, and turns into a torch batch with
:meth:`ArrayDataset.batch`.

Example::

    ds = ArrayDataset({"static": np.zeros((4, 3), np.float32), "target": np.array([0, 1, 0, 1.0])})
    ds[np.array([0, 2])].batch()["static"].shape  # torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from healthfusion.features import batch as B


class ArrayDataset(Mapping[str, np.ndarray]):
    """Equally long numpy arrays, one per batch key, indexable by sample.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        Every array's first dimension is the sample axis. An ``"index"`` array (int64 row ids) is added if absent.
    meta : dict, optional
        Free-form, JSON-serialisable information carried along unchanged (e.g. variable names).

    Raises
    ------
    ValueError
        If the arrays do not share their first dimension or a value is not an ndarray.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], meta: dict | None = None):
        arrays = dict(arrays)
        lengths = {}
        for key, value in arrays.items():
            if not isinstance(value, np.ndarray):
                raise ValueError(
                    f"ArrayDataset expects numpy arrays; key {key!r} holds {type(value).__name__}. "
                    "Convert it with np.asarray first."
                )
            lengths[key] = value.shape[0]
        if len(set(lengths.values())) > 1:
            raise ValueError(f"ArrayDataset arrays differ in length (first dimension): {lengths}.")
        n = next(iter(lengths.values()), 0)
        if B.INDEX not in arrays:
            arrays[B.INDEX] = np.arange(n, dtype=np.int64)
        self._arrays = arrays
        self.meta = dict(meta or {})

    # Mapping protocol -----------------------------------------------------------------------------------------
    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return self._arrays[key]
        return self.subset(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return int(self._arrays[B.INDEX].shape[0])

    @property
    def shape(self) -> tuple[int]:
        """``(n_samples,)``, so scikit-learn treats the dataset as indexable along its first axis."""
        return (len(self),)

    def subset(self, idx) -> ArrayDataset:
        """Rows ``idx`` (int array, slice or boolean mask) of every array, as a new dataset."""
        if isinstance(idx, list):
            idx = np.asarray(idx)
        return ArrayDataset({k: v[idx] for k, v in self._arrays.items()}, meta=self.meta)

    def with_arrays(self, **arrays: np.ndarray) -> ArrayDataset:
        """A copy with ``arrays`` added or replaced."""
        return ArrayDataset({**self._arrays, **arrays}, meta=self.meta)

    def without(self, *keys: str) -> ArrayDataset:
        """A copy without ``keys`` (missing keys are ignored)."""
        return ArrayDataset({k: v for k, v in self._arrays.items() if k not in keys}, meta=self.meta)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities this dataset carries, in :data:`healthfusion.features.batch.MODALITIES` order."""
        keys = {"ts": B.TS_VALUES, "static": B.STATIC, "codes": B.CODES, "text": B.TEXT, "image": B.IMAGE}
        return tuple(m for m in B.MODALITIES if keys[m] in self._arrays)

    def usable_rows(self) -> np.ndarray:
        """``[n]`` bool: rows with at least one of the dataset's modalities present (a row with none cannot be
        scored by a model over these modalities)."""
        out = np.zeros(len(self), dtype=bool)
        for m in self.modalities:
            out |= self._arrays[B.present_key(m)]
        return out

    def batch(self, idx=None, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Rows ``idx`` (default: all) as a dict of torch tensors on ``device``."""
        part = self._arrays if idx is None else {k: v[idx] for k, v in self._arrays.items()}
        out = {}
        for key, value in part.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            out[key] = tensor.to(device) if device is not None else tensor
        return out

    def iter_batches(self, batch_size: int, order: np.ndarray | None = None, device=None):
        """Yield torch batches of at most ``batch_size`` rows, following ``order`` (default: 0..n-1)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        order = np.arange(len(self)) if order is None else np.asarray(order)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size], device=device)
