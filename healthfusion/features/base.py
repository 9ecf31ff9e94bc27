"""Base class of the feature transformers: constructors store, ``fit`` learns (attributes ending in ``_``), state
round-trips through JSON so a saved model carries its preprocessing without pickle."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np


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
