"""Training: the loop, its callbacks, losses, and scikit-learn wrappers.

Public API::

    TrainerConfig, TrainingHistory, Trainer                        # trainer, config
    Callback, EarlyStopping, Checkpoint, ProgressCallback         # callbacks
    Objective, masked_loss, class_weights_from_labels, HEAD_KINDS # objectives
    NeuralRiskClassifier                                          # estimator
    cross_validate_params                                         # tuning
"""

from healthfusion.training.callbacks import Callback, Checkpoint, EarlyStopping, ProgressCallback
from healthfusion.training.config import TrainerConfig, TrainingHistory
from healthfusion.training.estimator import NeuralRiskClassifier
from healthfusion.training.objectives import HEAD_KINDS, Objective, class_weights_from_labels, masked_loss
from healthfusion.training.trainer import Trainer
from healthfusion.training.tuning import cross_validate_params

__all__ = [
    "HEAD_KINDS",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "NeuralRiskClassifier",
    "Objective",
    "ProgressCallback",
    "Trainer",
    "TrainerConfig",
    "TrainingHistory",
    "class_weights_from_labels",
    "cross_validate_params",
    "masked_loss",
]
