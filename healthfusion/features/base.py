"""Base class of the feature transformers: constructors store, ``fit`` learns (attributes ending in ``_``), state
round-trips through JSON so a saved model carries its preprocessing without pickle."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pandas as pd

#: below this many values, :func:`positions` looks names up in a dict (a request's few hundred events), above it
#: in a pandas index (a cohort's millions); both give the same positions
_DICT_LOOKUP_MAX = 20_000


def positions(names: list[str], values) -> np.ndarray:
    """``[len(values)]`` int64: the position of each of ``values`` in ``names``, -1 where absent.

    ``values`` is an array, a Series or a ``pd.Categorical`` of names. A categorical (what the scoring service
    builds from a request, with the model's variables as categories) is looked up once per category, not per
    value. Building a pandas index of a few dozen strings and looking a few hundred values up in it costs ~1 ms, a
    dict lookup a tenth of that; for large inputs pandas is the faster."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        values = values.array
    if isinstance(values, pd.Categorical):
        of_category = np.append(positions(names, np.asarray(values.categories, dtype=object)), -1)
        return of_category[values.codes]  # code -1 (missing) -> the appended -1
    if isinstance(values, np.ndarray) and len(values) <= _DICT_LOOKUP_MAX:
        lookup = {name: i for i, name in enumerate(names)}
        return np.fromiter((lookup.get(v, -1) for v in values.tolist()), np.int64, len(values))
    return pd.Index(names).get_indexer(values)


class NotFittedError(ValueError):
    """A transformer was used before ``fit``."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class FeatureTransformer:
    """Shared machinery: ``get_params`` from the constructor signature, JSON state of params + fitted attributes."""

    #: fitted attribute names (ending in ``_``) saved in the state; subclasses list theirs
    _fitted: tuple[str, ...] = ()

    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def _check_fitted(self) -> None:
        if not all(hasattr(self, a) for a in self._fitted):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(...) on training data first.")

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable parameters and fitted attributes."""
        self._check_fitted()
        return {
            "type": type(self).__name__,
            "params": _jsonable(self.get_params()),
            "fitted": {a: _jsonable(getattr(self, a)) for a in self._fitted},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]):
        """Rebuild a fitted transformer from :meth:`get_state` output.

        Raises
        ------
        ValueError
            If the state was written by a different transformer type.
        """
        if state.get("type") != cls.__name__:
            raise ValueError(f"Preprocessing state is for {state.get('type')!r}, not {cls.__name__!r}.")
        params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["params"].items()}
        obj = cls(**params)
        for name, value in state["fitted"].items():
            setattr(obj, name, obj._restore(name, value))
        return obj

    def _restore(self, name: str, value: Any) -> Any:
        """Convert a fitted attribute read from JSON back to its in-memory type (override for arrays)."""
        return value
