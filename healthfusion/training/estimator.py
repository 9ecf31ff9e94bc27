"""A scikit-learn binary classifier around :class:`~healthfusion.training.trainer.Trainer`.

:class:`NeuralRiskClassifier` takes an :class:`ArrayDataset` as ``X``, so scikit-learn's splitters, ``clone``,
``cross_val_score`` and ``GridSearchCV`` work on multimodal data. The network is built inside ``fit`` by
``model_factory(train_dataset, **model_config)``, so its input sizes come from the data it is trained on.

Example::

    def make_model(ds, hidden=32):
        return MyNet(n_static=ds["static"].shape[1], hidden=hidden)  # forward(batch) -> {"logits": [B]}

    clf = NeuralRiskClassifier(make_model, model_config={"hidden": 16}, trainer_config={"max_epochs": 20})
    cross_val_score(clf, ds, y, cv=3, scoring="roc_auc")
    clf.set_params(trainer_config__lr=3e-4)  # nested keys update a copy of the dict
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.training.config import TrainerConfig
from healthfusion.training.trainer import Trainer

logger = logging.getLogger(__name__)

_NESTED = ("trainer_config", "model_config")


def _is_fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


class NeuralRiskClassifier(ClassifierMixin, BaseEstimator):
    """Binary risk classifier: a neural network trained by :class:`Trainer` on an :class:`ArrayDataset`.

    Parameters
    ----------
    model_factory : callable
        ``model_factory(train: ArrayDataset, **model_config) -> nn.Module`` whose ``forward(batch)`` returns
        ``{"logits": [B]}``. Required (default None raises in ``fit``). Called after ``torch.manual_seed(seed)``.
    model_config : dict, optional
        Keyword arguments for ``model_factory``. Tunable as ``model_config__<key>``.
    trainer_config : dict or TrainerConfig, optional
        Default ``TrainerConfig()``. Tunable as ``trainer_config__<field>``; its ``seed`` also seeds the split.
    val_fraction : float, default 0.15
        Share of the training data held out (stratified, seeded) for early stopping; 0 trains on everything for
        ``max_epochs`` epochs.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels seen in ``fit``, sorted; ``classes_[1]`` is the positive class.
    model_ : nn.Module
    trainer_ : Trainer
    history_ : TrainingHistory

    Raises (in fit)
    ---------------
    ValueError
        Invalid parameters, ``y`` without exactly two classes, missing labels, or lengths that differ.
    TypeError
        ``X`` not an ArrayDataset, or the factory not returning an ``nn.Module``.
    """

    _param_checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "model_factory": (
            callable,
            "a callable model_factory(train: ArrayDataset, **model_config) -> nn.Module",
        ),
        "model_config": (lambda v: v is None or isinstance(v, Mapping), "None or a dict of factory kwargs"),
        "trainer_config": (
            lambda v: v is None or isinstance(v, (Mapping, TrainerConfig)),
            "None, a dict or a TrainerConfig",
        ),
        "val_fraction": (_is_fraction, "a float in [0, 1)"),
    }

    def __init__(
        self,
        model_factory: Callable[..., nn.Module] | None = None,
        model_config: Mapping[str, Any] | None = None,
        trainer_config: Mapping[str, Any] | TrainerConfig | None = None,
        val_fraction: float = 0.15,
    ):
        self.model_factory = model_factory
        self.model_config = model_config
        self.trainer_config = trainer_config
        self.val_fraction = val_fraction

    def _check_params(self) -> None:
        for name, (check, expected) in self._param_checks.items():
            value = getattr(self, name)
            if not check(value):
                raise ValueError(f"{type(self).__name__}: {name} must be {expected}; got {value!r}.")

    def set_params(self, **params: Any) -> NeuralRiskClassifier:
        """As scikit-learn's, plus ``trainer_config__<field>`` / ``model_config__<key>``, which set one entry of a
        copy of that dict (so ``GridSearchCV`` and :func:`cross_validate_params` can tune them)."""
        nested = {k: v for k, v in params.items() if k.split("__", 1)[0] in _NESTED and "__" in k}
        super().set_params(**{k: v for k, v in params.items() if k not in nested})
        for key, value in nested.items():
            name, entry = key.split("__", 1)
            current = getattr(self, name)
            base = current.model_dump() if isinstance(current, TrainerConfig) else dict(current or {})
            base[entry] = value
            setattr(self, name, base)
        return self

    def fit(self, X: ArrayDataset, y: np.ndarray | None = None) -> NeuralRiskClassifier:
        """Build the model from the training part of ``X`` and train it.

        Parameters
        ----------
        X : ArrayDataset
            [n] samples.
        y : array-like of shape (n,), optional
            Two distinct labels, none missing. Default: ``X["target"]``.

        Returns
        -------
        self
        """
        if self.model_factory is None:
            raise ValueError(
                "NeuralRiskClassifier needs model_factory, a callable (train: ArrayDataset, "
                "**model_config) -> nn.Module, e.g. lambda ds: MyNet(ds['static'].shape[1])."
            )
        self._check_params()
        if not isinstance(X, ArrayDataset):
            raise TypeError(
                f"NeuralRiskClassifier.fit expects X as an ArrayDataset; got {type(X).__name__}. "
                "Build one with healthfusion.features.dataset.ArrayDataset({...})."
            )
        if y is None:
            if B.TARGET not in X:
                raise ValueError("fit got no y and X has no 'target' array; pass y or add X['target'].")
            y = X[B.TARGET]
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != len(X):
            raise ValueError(f"y must have shape ({len(X)},) to match X; got {y.shape}.")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError(
                "y has NaN labels; NeuralRiskClassifier needs every label. Drop those samples first."
            )
        classes, y_enc = np.unique(y, return_inverse=True)
        if classes.size != 2:
            raise ValueError(
                f"NeuralRiskClassifier is binary: y must hold exactly 2 classes; got {classes.size} "
                f"({classes[:5].tolist()})."
            )
        config = self.trainer_config
        if not isinstance(config, TrainerConfig):
            config = TrainerConfig.model_validate(dict(config or {}))
        data = X.with_arrays(**{B.TARGET: y_enc.astype(np.float32)})
        train, val = data, None
        if self.val_fraction > 0:
            try:
                tr_idx, va_idx = train_test_split(
                    np.arange(len(data)),
                    test_size=self.val_fraction,
                    stratify=y_enc,
                    random_state=config.seed,
                )
            except ValueError as exc:
                raise ValueError(
                    f"Cannot take a stratified validation split of {self.val_fraction} from "
                    f"{len(data)} samples ({exc}); lower val_fraction or set it to 0."
                ) from exc
            train, val = data[np.sort(tr_idx)], data[np.sort(va_idx)]
        torch.manual_seed(config.seed)
        model = self.model_factory(train, **dict(self.model_config or {}))
        if not isinstance(model, nn.Module):
            raise TypeError(f"model_factory must return an nn.Module; got {type(model).__name__}.")
        trainer = Trainer(config)
        self.history_ = trainer.fit(model, train, val, head_kind="binary")
        self.classes_ = classes
        self.model_ = model
        self.trainer_ = trainer
        return self

    def predict_proba(self, X: ArrayDataset) -> np.ndarray:
        """Class probabilities, shape (n, 2), columns ordered as ``classes_``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        TypeError
            If ``X`` is not an ArrayDataset.
        """
        check_is_fitted(self)
        p = self.trainer_.predict(self.model_, X, head_kind="binary").astype(np.float64)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: ArrayDataset) -> np.ndarray:
        """Labels from ``classes_`` (positive when its probability is >= 0.5), shape (n,)."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)]
