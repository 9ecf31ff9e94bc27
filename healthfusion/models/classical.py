"""Classical baselines for tabular risk prediction, as scikit-learn pipelines that accept NaN features.

===================== ==================================================================================
name                  pipeline (last step is always named ``"model"``)
===================== ==================================================================================
logistic_regression   median imputation + missing indicators -> standard scaling -> LogisticRegression (L2)
svm                   median imputation + missing indicators -> standard scaling -> Platt-calibrated
                      :class:`SVMClassifier` (RBF kernel up to 5,000 training rows, linear above)
random_forest         median imputation + missing indicators -> RandomForestClassifier (300 trees)
gradient_boosting     :class:`~healthfusion.models.boosting.BoostingClassifier` alone (LightGBM with early stopping
                      on an inner validation split): it handles NaN natively (learns where missing values go at
                      each split), so imputation would only throw that information away
===================== ==================================================================================

``class_weight="balanced"`` (the default) reweights classes inversely to their frequency, which helps recall on rare
outcomes but shifts predicted probabilities away from the true risk (the SVM is recalibrated, the others are not):
check calibration, or pass ``class_weight=None`` when calibrated risks matter more than ranking.

Parallelism: the forest and LightGBM use ``n_jobs=2``; change it with ``pipe.set_params(model__n_jobs=...)``.
LightGBM uses OpenMP: set ``OMP_WAIT_POLICY=PASSIVE`` in the environment before it is imported on shared or small
machines (spinning threads made small fits 50x slower there).

Example
-------
>>> import numpy as np
>>> X = np.array([[0.0, np.nan], [1.0, 2.0], [2.0, 1.0], [3.0, np.nan]] * 10)
>>> y = np.array([0, 0, 1, 1] * 10)
>>> make_baseline("logistic_regression").fit(X, y).predict_proba(X).shape
(40, 2)
"""

from __future__ import annotations

import difflib
import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted, check_X_y

from healthfusion.models.boosting import BoostingClassifier

logger = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("logistic_regression", "svm", "random_forest", "gradient_boosting")
"""Names accepted by :func:`make_baseline`."""

REGRESSION_BASELINES: tuple[str, ...] = ("ridge_regression", "random_forest")
"""Names accepted by :func:`make_regression_baseline`."""

CLASS_WEIGHTS: tuple[str | None, ...] = ("balanced", None)

SVM_KERNELS: tuple[str, ...] = ("auto", "rbf", "linear")


class SVMClassifier(ClassifierMixin, BaseEstimator):
    """Support vector classifier that switches from an RBF to a linear kernel on large training sets.

    An exact RBF SVM costs between O(n^2) and O(n^3) time and O(n^2) kernel memory, which is minutes to hours past a
    few thousand rows on a small machine; a linear SVM (liblinear) is O(n). With ``kernel="auto"`` the RBF kernel is
    used for at most ``max_rbf_samples`` training rows and the linear one above. It outputs decision scores only;
    :func:`make_baseline` wraps it in :class:`~sklearn.calibration.CalibratedClassifierCV` for probabilities.

    Args:
        C: inverse regularisation strength (default 1.0).
        kernel: ``"auto"``, ``"rbf"`` or ``"linear"``.
        max_rbf_samples: the largest training set fitted with the RBF kernel under ``"auto"`` (default 5,000).
        class_weight: ``"balanced"`` or ``None``.
        random_state: seed.

    Attributes:
        estimator_: the fitted ``SVC`` or ``LinearSVC``.
        kernel_: ``"rbf"`` or ``"linear"``, the kernel used.
        classes_, n_features_in_: as in scikit-learn.
    """

    def __init__(self, C=1.0, kernel="auto", max_rbf_samples=5000, class_weight=None, random_state=None):
        self.C = C
        self.kernel = kernel
        self.max_rbf_samples = max_rbf_samples
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y):
        """Fit on ``X`` ``[n, d]`` (no NaN) and labels ``y`` ``[n]``. Raises ``ValueError`` on bad parameters."""
        if self.kernel not in SVM_KERNELS:
            raise ValueError(f"Unknown kernel {self.kernel!r}; expected one of {', '.join(SVM_KERNELS)}.")
        if not isinstance(self.max_rbf_samples, (int, np.integer)) or self.max_rbf_samples < 1:
            raise ValueError(f"Expected max_rbf_samples to be a positive integer, got {self.max_rbf_samples!r}.")
        X, y = check_X_y(X, y)
        kernel = self.kernel
        if kernel == "auto":
            kernel = "rbf" if X.shape[0] <= self.max_rbf_samples else "linear"
            if kernel == "linear":
                logger.info("SVM: %d training rows > max_rbf_samples=%d, using a linear kernel.",
                            X.shape[0], self.max_rbf_samples)
        if kernel == "rbf":
            est = SVC(kernel="rbf", C=self.C, gamma="scale", class_weight=self.class_weight,
                      random_state=self.random_state)
        else:
            est = LinearSVC(C=self.C, class_weight=self.class_weight, random_state=self.random_state,
                            dual="auto", max_iter=5000)
        est.fit(X, y)
        self.estimator_ = est
        self.kernel_ = kernel
        self.classes_ = est.classes_
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        """Signed distance to the separating surface, ``[n]`` for two classes."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def predict(self, X):
        """Predicted class labels ``[n]``."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)


def _imputer() -> SimpleImputer:
    # keep_empty_features keeps an all-NaN training column (as 0) so the column count never changes silently
    return SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)


def make_baseline(name: str, seed: int = 0, class_weight: str | None = "balanced") -> Pipeline:
    """Build an unfitted classical baseline (see the module table for what each contains).

    Args:
        name: one of :data:`BASELINES`.
        seed: random seed of the model (and of the SVM's calibration folds' models).
        class_weight: ``"balanced"`` (default; the forest uses ``"balanced_subsample"``, its per-tree form) or
            ``None``.

    Returns:
        An unfitted :class:`~sklearn.pipeline.Pipeline` with ``fit``/``predict_proba``, accepting NaN in ``X``.

    Raises:
        ValueError: unknown ``name`` (with the valid names and a close match) or ``class_weight``.
    """
    if name not in BASELINES:
        close = difflib.get_close_matches(str(name), BASELINES, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown baseline {name!r}; expected one of {', '.join(BASELINES)}.{hint}")
    if class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"Expected class_weight 'balanced' or None, got {class_weight!r}.")

    if name == "logistic_regression":
        model = LogisticRegression(C=1.0, max_iter=2000, class_weight=class_weight, random_state=seed)
        return Pipeline([("impute", _imputer()), ("scale", StandardScaler()), ("model", model)])
    if name == "svm":
        svm = SVMClassifier(C=1.0, kernel="auto", max_rbf_samples=5000, class_weight=class_weight, random_state=seed)
        model = CalibratedClassifierCV(svm, method="sigmoid", cv=3)
        return Pipeline([("impute", _imputer()), ("scale", StandardScaler()), ("model", model)])
    if name == "random_forest":
        model = RandomForestClassifier(
            n_estimators=300,
            min_samples_leaf=3,
            max_features="sqrt",
            class_weight="balanced_subsample" if class_weight == "balanced" else None,
            n_jobs=2,
            random_state=seed,
        )
        return Pipeline([("impute", _imputer()), ("model", model)])
    # gradient_boosting: the tuned defaults of BoostingClassifier (LightGBM is imported only when it is fitted)
    return Pipeline([("model", BoostingClassifier(class_weight=class_weight, random_state=seed, n_jobs=2))])


def make_regression_baseline(name: str, seed: int = 0) -> Pipeline:
    """Build an unfitted classical baseline for a continuous outcome.

    ``ridge_regression``: median imputation + missing indicators -> standard scaling -> Ridge (alpha 1);
    ``random_forest``: median imputation + missing indicators -> RandomForestRegressor (300 trees, a third of the
    features per split).

    Args:
        name: one of :data:`REGRESSION_BASELINES`.
        seed: random seed of the forest.

    Returns:
        An unfitted :class:`~sklearn.pipeline.Pipeline` with ``fit``/``predict``, accepting NaN in ``X``; its last
        step is named ``"model"``.

    Raises:
        ValueError: unknown ``name`` (with the valid names).
    """
    if name == "ridge_regression":
        return Pipeline([("impute", _imputer()), ("scale", StandardScaler()), ("model", Ridge(alpha=1.0))])
    if name == "random_forest":
        model = RandomForestRegressor(n_estimators=300, min_samples_leaf=3, max_features=1 / 3, n_jobs=2,
                                      random_state=seed)
        return Pipeline([("impute", _imputer()), ("model", model)])
    raise ValueError(f"Unknown regression baseline {name!r}; expected one of {', '.join(REGRESSION_BASELINES)}.")
