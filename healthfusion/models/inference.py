"""Forward passes of a saved network for scoring: eval mode, no gradients, fixed-size batches.

The one inference path of every scorer that loads a model folder (``predict``, the service, streams); it gives the
numbers :meth:`healthfusion.training.Trainer.predict` gives during training (same batching, same output maps).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.heads import head_predictions

#: rows per forward pass (the Trainer's default prediction batch: twice its training batch of 64)
SCORING_BATCH = 128


@torch.inference_mode()
def network_outputs(model: nn.Module, data: ArrayDataset, kind: str, batch_size: int = SCORING_BATCH) -> np.ndarray:
    """Predictions of ``model`` on ``data``: binary ``[n]`` probabilities, multiclass ``[n, K]`` softmax, multilabel
    ``[n, K]`` sigmoid, regression ``[n]`` values (float32). The model's train/eval mode is restored (a model
    already in eval mode, as a loaded scorer keeps it, is not switched: that walk over the modules cost ~1 ms a
    call).

    Raises
    ------
    ValueError
        An empty ``data``, an unknown ``kind``, or a model whose forward does not return ``{"logits": tensor}``.
    """
    if len(data) == 0:
        raise ValueError("Nothing to score: the dataset has 0 rows.")
    was_training = model.training
    if was_training:
        model.eval()
    chunks = []
    try:
        for batch in data.iter_batches(batch_size):
            batch.pop(B.TARGET, None)
            out = model(batch)
            if not isinstance(out, Mapping) or not isinstance(out.get("logits"), torch.Tensor):
                raise ValueError(f"{type(model).__name__}.forward(batch) must return a dict with a 'logits' tensor.")
            chunks.append(out["logits"].float())
    finally:
        if was_training:
            model.train()
    return head_predictions(torch.cat(chunks), kind).cpu().numpy()
