"""Per-modality encoders: each maps one modality's batch tensors to a ``[B, out_dim]`` feature vector."""

from healthfusion.models.encoders.cnn import CNNEncoder, CNNEncoderConfig
from healthfusion.models.encoders.codes import CodesEncoder, CodesEncoderConfig
from healthfusion.models.encoders.lstm import LSTMEncoder, LSTMEncoderConfig
from healthfusion.models.encoders.mlp import MLPEncoder, MLPEncoderConfig
from healthfusion.models.encoders.text import TextEncoder, TextEncoderConfig

__all__ = [
    "CNNEncoder",
    "CNNEncoderConfig",
    "CodesEncoder",
    "CodesEncoderConfig",
    "LSTMEncoder",
    "LSTMEncoderConfig",
    "MLPEncoder",
    "MLPEncoderConfig",
    "TextEncoder",
    "TextEncoderConfig",
]
