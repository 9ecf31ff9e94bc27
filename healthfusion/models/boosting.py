"""Gradient-boosted trees (LightGBM) for tabular risk prediction, with early stopping and a pickle-free save format.

:class:`BoostingClassifier` is a scikit-learn binary classifier. LightGBM handles NaN natively (each split learns
which side missing values go to), so engineered features need no imputation. The number of trees is chosen by early
stopping on validation log-loss: on ``eval_set`` when ``fit`` is given one, otherwise on an inner stratified split of
the training rows, after which the model is refitted on all rows with the chosen number of trees.

The defaults are regularised for a few thousand ICU stays with a few hundred summary features (chosen by 5-fold
cross-validation on PhysioNet 2012 set A; see ``docs/benchmarks.md``): small trees (15 leaves, at least 50 stays per
leaf), a low learning rate (0.03), row and column subsampling.

A saved model is a folder, no pickle::

    model.txt       LightGBM's own text model format (the trees)
    config.json     {"format": "healthfusion.boosting", "format_version": 1, "params": {...},
                     "feature_names": [...], "classes": [...], "n_trees": int, ...}

Example
-------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
>>> y = (X["a"] + rng.normal(scale=0.5, size=200) > 0).astype(int)
>>> clf = BoostingClassifier(n_estimators=50, validation_fraction=None, min_child_samples=5).fit(X, y)
>>> clf.predict_proba(X).shape
(200, 2)
>>> clf.predict_proba(X[["b", "a"]]).shape  # columns are matched by name
(200, 2)
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from healthfusion.models.base import ModelLoadError

logger = logging.getLogger(__name__)

BOOSTING_FORMAT = "healthfusion.boosting"
BOOSTING_FORMAT_VERSION = 1
MODEL_FILE = "model.txt"
CONFIG_FILE = "config.json"


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

    return check, f"an integer >= {low}"


def _float_in(low: float, high: float, low_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            return False
        return (v > low if low_open else v >= low) and v <= high

    return check, f"a number in {'(' if low_open else '['}{low}, {high}]"


def _is_positive(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0


class BoostingClassifier(ClassifierMixin, BaseEstimator):
    """LightGBM binary classifier with early stopping, NaN-native, seeded, saved without pickle.

    Parameters
    ----------
    n_estimators : int, default 2000
        Maximum number of trees; early stopping usually picks far fewer.
    learning_rate : float, default 0.03
    num_leaves : int, default 15
        Leaves per tree.
    min_child_samples : int, default 50
        Minimum number of training rows in a leaf.
    subsample : float, default 0.8
        Share of rows drawn (without replacement) for each tree.
    colsample_bytree : float, default 0.5
        Share of features drawn for each tree.
    reg_lambda : float, default 1.0
        L2 penalty on leaf values.
    class_weight : "balanced" or None, default None
        ``"balanced"`` reweights classes inversely to their frequency (shifts probabilities away from the true
        risk); None keeps the probabilities calibrated-ish.
    early_stopping_rounds : int or None, default 100
        Stop when validation log-loss (class-weighted like the objective under ``class_weight="balanced"``) has
        not improved for this many trees. None: always grow ``n_estimators``.
    validation_fraction : float or None, default 0.15
        Without an ``eval_set``: share of the training rows held out (stratified, seeded) for early stopping, after
        which the model is refitted on all rows with the chosen number of trees. None: no inner split (then, without
        ``eval_set``, ``n_estimators`` trees are grown).
    random_state : int, default 0
        Seeds LightGBM (bagging, feature sampling) and the inner split. Fits are deterministic for a given seed.
    n_jobs : int, default 1
        LightGBM threads. Set ``OMP_WAIT_POLICY=PASSIVE`` before LightGBM is imported on shared machines.

    Attributes
    ----------
    booster_ : lightgbm.Booster
    n_trees_ : int
        Number of trees used for prediction (the early-stopping choice, or ``n_estimators``).
    best_iteration_ : int or None
        The early-stopping choice (None without early stopping).
    classes_ : ndarray of shape (2,)
    feature_names_in_ : ndarray of str
        Training column names (``"x0"``, ``"x1"``, ... when ``X`` was an array).
    n_features_in_ : int

    Raises
    ------
    ValueError
        In ``fit``: an invalid parameter (named, with the expected values), ``y`` without exactly two classes or
        with missing values, non-numeric columns. In ``predict_proba``: columns that differ from the training
        columns (the missing and extra ones are named) or the wrong number of columns.
    """

    _param_checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "n_estimators": _int_at_least(1),
        "learning_rate": (_is_positive, "a number > 0"),
        "num_leaves": _int_at_least(2),
        "min_child_samples": _int_at_least(1),
        "subsample": _float_in(0.0, 1.0, low_open=True),
        "colsample_bytree": _float_in(0.0, 1.0, low_open=True),
        "reg_lambda": _float_in(0.0, float("inf")),
        "class_weight": (lambda v: v in ("balanced", None), "'balanced' or None"),
        "early_stopping_rounds": (lambda v: v is None or _int_at_least(1)[0](v), "None or an integer >= 1"),
        "validation_fraction": (
            lambda v: v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 0.5),
            "None or a number in (0, 0.5)",
        ),
        "random_state": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
        "n_jobs": _int_at_least(1),
    }

    def __init__(
        self,
        n_estimators: int = 2000,
        learning_rate: float = 0.03,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        colsample_bytree: float = 0.5,
        reg_lambda: float = 1.0,
        class_weight: str | None = None,
        early_stopping_rounds: int | None = 100,
        validation_fraction: float | None = 0.15,
        random_state: int = 0,
        n_jobs: int = 1,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.class_weight = class_weight
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        for name, (check, expected) in self._param_checks.items():
            value = getattr(self, name)
            if not check(value):
                raise ValueError(f"{type(self).__name__}: {name} must be {expected}; got {value!r}.")

    @staticmethod
    def _frame(X: Any, names: list[str] | None = None) -> pd.DataFrame:
        """``X`` as a float DataFrame; arrays get ``names`` or ``x0..``. Raises ValueError on non-numeric data."""
        if isinstance(X, pd.DataFrame):
            frame = X
        else:
            arr = np.asarray(X)
            if arr.ndim != 2:
                raise ValueError(
                    f"Expected 2D X [n_samples, n_features], got an array of shape {arr.shape}; "
                    "reshape it (e.g. X.reshape(-1, 1) for one feature)."
                )
            frame = pd.DataFrame(arr, columns=names or [f"x{i}" for i in range(arr.shape[1])])
        bad = [c for c in frame.columns if not (pd.api.types.is_numeric_dtype(frame[c])
                                                 or pd.api.types.is_bool_dtype(frame[c]))]
        if bad:
            raise ValueError(
                f"BoostingClassifier needs numeric features; columns {bad[:10]} are not numeric "
                f"(dtypes {[str(frame[c].dtype) for c in bad[:10]]}). Encode categorical columns first."
            )
        return frame.astype(np.float64)

    def _encode_y(self, y: Any) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"Expected 1D labels y [n_samples], got shape {y.shape}; use y.ravel() for a column.")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError(f"y has {int(np.isnan(y).sum())} missing label(s); drop those rows before fitting.")
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(
                f"BoostingClassifier is a binary classifier and needs exactly two classes in y, got {classes.tolist()}."
            )
        self.classes_ = classes
        return (y == classes[1]).astype(np.float64)

    def _lgb_params(self, y: np.ndarray) -> dict[str, Any]:
        params = {
            "objective": "binary",
            "learning_rate": float(self.learning_rate),
            "num_leaves": int(self.num_leaves),
            "min_child_samples": int(self.min_child_samples),
            "bagging_fraction": float(self.subsample),
            "bagging_freq": 1 if self.subsample < 1.0 else 0,
            "feature_fraction": float(self.colsample_bytree),
            "lambda_l2": float(self.reg_lambda),
            "seed": int(self.random_state),
            "num_threads": int(self.n_jobs),
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if self.class_weight == "balanced":
            pos = float(y.sum())
            params["scale_pos_weight"] = (len(y) - pos) / max(pos, 1.0)
        return params

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> BoostingClassifier:
        """Fit on ``X`` ``[n, d]`` (DataFrame or array, NaN allowed) and binary labels ``y`` ``[n]``.

        Parameters
        ----------
        eval_set : (X_val, y_val), optional
            Validation data for early stopping. The model is then trained on ``X`` only (no refit), so the
            validation predictions stay out-of-sample, e.g. for fitting ensemble weights.

        Raises
        ------
        ValueError
            See the class docstring.
        """
        import lightgbm as lgb  # loading LightGBM starts OpenMP: only pay when used

        self._check_params()
        frame = self._frame(X)
        target = self._encode_y(y)
        if len(target) != len(frame):
            raise ValueError(f"X has {len(frame)} rows but y has {len(target)} labels.")
        names = [str(c) for c in frame.columns]
        if len(set(names)) != len(names):
            raise ValueError("X has duplicated column names; give every feature a distinct name.")
        params = self._lgb_params(target)
        self.best_iteration_ = None
        stop = self.early_stopping_rounds
        if eval_set is not None and stop is not None:
            x_val, y_val = eval_set
            val = self._frame(x_val, names)
            if list(map(str, val.columns)) != names:
                val = self._aligned(val, names)
            y_val = (np.asarray(y_val) == self.classes_[1]).astype(np.float64)
            booster = self._train(lgb, params, frame, target, (val, y_val))
            self.best_iteration_ = booster.best_iteration
        elif self.validation_fraction is not None and stop is not None:
            idx = np.arange(len(target))
            fit_idx, val_idx = train_test_split(idx, test_size=self.validation_fraction, stratify=target,
                                                random_state=self.random_state)
            probe = self._train(lgb, params, frame.iloc[fit_idx], target[fit_idx],
                                (frame.iloc[val_idx], target[val_idx]))
            self.best_iteration_ = probe.best_iteration
            booster = lgb.train(params, self._dataset(lgb, frame, target), num_boost_round=self.best_iteration_)
        else:
            booster = lgb.train(params, self._dataset(lgb, frame, target), num_boost_round=self.n_estimators)
        self.booster_ = booster
        self.n_trees_ = int(self.best_iteration_ or self.n_estimators)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        return self

    @staticmethod
    def _dataset(lgb, frame: pd.DataFrame, target: np.ndarray, reference=None):
        # LightGBM sees positional names (it rejects JSON characters and rewrites spaces in names); the real
        # names live in feature_names_in_ and config.json
        return lgb.Dataset(frame.to_numpy(), target, reference=reference,
                           feature_name=[f"f{i}" for i in range(frame.shape[1])], free_raw_data=True)

    def _train(self, lgb, params, frame, target, val):
        train_set = self._dataset(lgb, frame, target)
        val_set = self._dataset(lgb, val[0], val[1], reference=train_set)
        if "scale_pos_weight" in params:
            # the stopping metric must weigh classes as the objective does: unweighted validation log-loss worsens
            # as soon as the weighted fit lifts the predicted risk above the prevalence, and stops after a few trees
            val_set.set_weight(np.where(np.asarray(val[1]) == 1, params["scale_pos_weight"], 1.0))
        booster = lgb.train(
            params, train_set, num_boost_round=self.n_estimators, valid_sets=[val_set], valid_names=["val"],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)],
        )
        logger.info("BoostingClassifier: early stopping chose %d trees.", booster.best_iteration)
        return booster

    # ------------------------------------------------------------------------------------------------ predict
    @staticmethod
    def _aligned(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
        got = [str(c) for c in frame.columns]
        missing = [c for c in names if c not in set(got)]
        extra = [c for c in got if c not in set(names)]
        if missing or extra:
            raise ValueError(
                f"X's columns differ from the {len(names)} training features: missing {missing[:20]}"
                f"{' ...' if len(missing) > 20 else ''} ({len(missing)} in all), extra {extra[:20]}"
                f"{' ...' if len(extra) > 20 else ''} ({len(extra)} in all). Build X with the same feature "
                "pipeline as the training data."
            )
        frame = frame.copy()
        frame.columns = got
        return frame[names]

    def _features(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "booster_")
        names = [str(c) for c in self.feature_names_in_]
        if isinstance(X, pd.DataFrame):
            frame = self._aligned(X, names)
            return self._frame(frame).to_numpy()
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise ValueError(
                f"Expected X [n_samples, {len(names)}] (the training features), got shape {arr.shape}."
            )
        return self._frame(arr, names).to_numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``[n, 2]`` (columns in ``classes_`` order). Raises ValueError on mismatched columns."""
        p = self.booster_.predict(self._features(X), num_iteration=self.n_trees_)
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of the positive class ``[n]``."""
        return self.booster_.predict(self._features(X), num_iteration=self.n_trees_, raw_score=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels ``[n]`` (probability of ``classes_[1]`` >= 0.5)."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]

    def feature_importance(self, kind: str = "gain") -> pd.Series:
        """Per-feature importance (``"gain"`` or ``"split"``), indexed by feature name, largest first."""
        check_is_fitted(self, "booster_")
        if kind not in ("gain", "split"):
            raise ValueError(f"Unknown importance kind {kind!r}; expected 'gain' or 'split'.")
        values = self.booster_.feature_importance(importance_type=kind, iteration=self.n_trees_)
        return pd.Series(values, index=list(self.feature_names_in_), name=kind).sort_values(ascending=False)

    # ------------------------------------------------------------------------------------------------ save/load
    def save(self, directory: str | Path) -> Path:
        """Write ``model.txt`` (LightGBM text model) and ``config.json`` into ``directory`` (created if needed)."""
        check_is_fitted(self, "booster_")
        import lightgbm as lgb

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(directory / MODEL_FILE), num_iteration=self.n_trees_)
        config = {
            "format": BOOSTING_FORMAT,
            "format_version": BOOSTING_FORMAT_VERSION,
            "params": self.get_params(),
            "feature_names": [str(c) for c in self.feature_names_in_],
            "classes": self.classes_.tolist(),
            "n_trees": self.n_trees_,
            "best_iteration": self.best_iteration_,
            "lightgbm_version": lgb.__version__,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BoostingClassifier:
        """Rebuild a fitted classifier saved by :meth:`save`.

        Raises
        ------
        ModelLoadError
            Missing files, another format or version, or a model file that does not match its config.
        """
        import lightgbm as lgb

        directory = Path(directory)
        config_path, model_path = directory / CONFIG_FILE, directory / MODEL_FILE
        for path in (config_path, model_path):
            if not path.is_file():
                raise ModelLoadError(f"{path} does not exist; expected a folder written by BoostingClassifier.save.")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{config_path} is not valid JSON ({err}).") from err
        if config.get("format") != BOOSTING_FORMAT or config.get("format_version") != BOOSTING_FORMAT_VERSION:
            raise ModelLoadError(
                f"{config_path} has format {config.get('format')!r} version {config.get('format_version')!r}; "
                f"expected {BOOSTING_FORMAT!r} version {BOOSTING_FORMAT_VERSION}. Re-save the model with this "
                "healthfusion."
            )
        try:
            obj = cls(**config["params"])
            booster = lgb.Booster(model_file=str(model_path))
        except (TypeError, KeyError, lgb.basic.LightGBMError) as err:
            raise ModelLoadError(f"Cannot rebuild the model in {directory}: {err}") from err
        names = list(config["feature_names"])
        if booster.num_feature() != len(names) or booster.num_trees() != config["n_trees"]:
            raise ModelLoadError(
                f"{model_path} does not match {config_path}: {booster.num_trees()} trees and "
                f"{booster.num_feature()} features vs {config['n_trees']} trees and {len(names)} features."
            )
        obj.booster_ = booster
        obj.n_trees_ = int(config["n_trees"])
        obj.best_iteration_ = config.get("best_iteration")
        obj.classes_ = np.asarray(config["classes"])
        obj.feature_names_in_ = np.asarray(names, dtype=object)
        obj.n_features_in_ = len(names)
        return obj
