"""Training: the loop, its callbacks, losses, and scikit-learn wrappers.

Public API::

    TrainerConfig, TrainingHistory, Trainer                        # trainer, config
    LossTerm, Losses, StepState, SupervisedLoss                    # loss terms (losses/: dann, mmd, ...)
    TrainingPlugin, TrainingParts                                  # plug-ins (wrap model/optimizer/loader)
    Callback, EarlyStopping, Checkpoint, ProgressCallback         # callbacks
    Objective, masked_loss, class_weights_from_labels, HEAD_KINDS # objectives
    NeuralRiskClassifier                                          # estimator
    cross_validate_params                                         # tuning
"""

from healthfusion.training.callbacks import Callback, Checkpoint, EarlyStopping, ProgressCallback
from healthfusion.training.config import TrainerConfig, TrainingHistory
from healthfusion.training.estimator import NeuralRiskClassifier
from healthfusion.training.losses import Losses, LossTerm, StepState
from healthfusion.training.losses.supervised import SupervisedLoss
from healthfusion.training.objectives import HEAD_KINDS, Objective, class_weights_from_labels, masked_loss
from healthfusion.training.plugins import TrainingParts, TrainingPlugin
from healthfusion.training.trainer import Trainer
from healthfusion.training.tuning import cross_validate_params

__all__ = [
    "HEAD_KINDS",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "LossTerm",
    "Losses",
    "NeuralRiskClassifier",
    "Objective",
    "ProgressCallback",
    "StepState",
    "SupervisedLoss",
    "Trainer",
    "TrainerConfig",
    "TrainingHistory",
    "TrainingParts",
    "TrainingPlugin",
    "class_weights_from_labels",
    "cross_validate_params",
    "masked_loss",
]
