"""Pure torch models: encoders, fusion, heads, the hybrid model, and the save/load format (no data, no training);
gradient boosting (:class:`BoostingClassifier`), weighted ensembles of risk models (:mod:`.ensemble`), a run's
ensemble (:class:`RunEnsemble`), calibrators (:mod:`.calibration`) and the one scoring entry point
:func:`load_model` (:mod:`.scoring`) of a run's model folder (:mod:`.folder`).

Importing this package registers every built-in model type in :data:`MODEL_REGISTRY`.
"""

from healthfusion.models.base import (
    FORMAT_VERSION,
    MODEL_REGISTRY,
    ModelConfig,
    ModelLoadError,
    PretrainedModel,
    load_network,
    model_fingerprint,
    register_model,
)
from healthfusion.models.boosting import BoostingClassifier
from healthfusion.models.calibration import Calibrator, choose_calibrator
from healthfusion.models.encoders import (
    CNNEncoder,
    CNNEncoderConfig,
    CodesEncoder,
    CodesEncoderConfig,
    LSTMEncoder,
    LSTMEncoderConfig,
    MLPEncoder,
    MLPEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from healthfusion.models.ensemble import EnsembleWeights, combine, fit_weights
from healthfusion.models.fusion import (
    FUSION_KINDS,
    AttentionFusion,
    ConcatFusion,
    Fusion,
    FusionKind,
    GatedFusion,
    build_fusion,
)
from healthfusion.models.heads import HEAD_KINDS, Head, HeadKind, head_predictions
from healthfusion.models.hybrid import HybridConfig, HybridModel
from healthfusion.models.run_ensemble import RunEnsemble
from healthfusion.models.scoring import PredictionError, ScoringModel, load_model

__all__ = [
    "FORMAT_VERSION",
    "FUSION_KINDS",
    "HEAD_KINDS",
    "MODEL_REGISTRY",
    "AttentionFusion",
    "BoostingClassifier",
    "Calibrator",
    "CNNEncoder",
    "CNNEncoderConfig",
    "CodesEncoder",
    "CodesEncoderConfig",
    "ConcatFusion",
    "EnsembleWeights",
    "Fusion",
    "FusionKind",
    "GatedFusion",
    "Head",
    "HeadKind",
    "HybridConfig",
    "HybridModel",
    "LSTMEncoder",
    "LSTMEncoderConfig",
    "MLPEncoder",
    "MLPEncoderConfig",
    "ModelConfig",
    "ModelLoadError",
    "PredictionError",
    "PretrainedModel",
    "RunEnsemble",
    "ScoringModel",
    "TextEncoder",
    "TextEncoderConfig",
    "build_fusion",
    "choose_calibrator",
    "combine",
    "fit_weights",
    "head_predictions",
    "load_model",
    "load_network",
    "model_fingerprint",
    "register_model",
]
