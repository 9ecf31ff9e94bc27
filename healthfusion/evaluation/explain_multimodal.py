"""Explanations beyond per-variable attributions: image saliency, LSTM attention over time, modality contributions.

* :func:`image_saliency`: where in the image the logit is sensitive, by plain gradients (``"gradient"``),
  Integrated Gradients from a black image (``"integrated_gradients"``) or Grad-CAM on the CNN's last convolution
  (``"grad_cam"``, upsampled to the image size), via Captum. Returns ``[n, H, W]`` maps (absolute values summed
  over channels for the pixel methods, positive part for Grad-CAM) to overlay on the images.
* :func:`attention_over_time`: the hybrid model's ``ts_attention`` ``[n, T]`` (zeros where the series is absent).
* :func:`modality_contributions`: each modality's share of a fused prediction, from the model's own missing-data
  path (``<m>_present`` flags): exact Shapley values over modalities, or leave-one-out ablation.

Example::

    maps = image_saliency(model, batch, method="grad_cam")          # [n, H, W]
    weights = attention_over_time(model, batch)                      # [n, T]
    shares = modality_contributions(model, batch, method="shapley")  # DataFrame [n x modalities]
"""

from __future__ import annotations

from itertools import combinations
from math import factorial

import numpy as np
import pandas as pd
import torch
from torch import nn

from healthfusion.evaluation.explain import _logits, _to_batch
from healthfusion.features import batch as B

SALIENCY_METHODS: tuple[str, ...] = ("gradient", "integrated_gradients", "grad_cam")


def _last_conv(model: nn.Module) -> nn.Conv2d:
    encoder = model.encoders["image"] if hasattr(model, "encoders") and "image" in model.encoders else model
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a model with a Conv2d layer (an image encoder); none was found.")
    return convs[-1]


def image_saliency(model: nn.Module, batch, method: str = "gradient", n_steps: int = 32) -> np.ndarray:
    """Saliency maps ``[n, H, W]`` (float, >= 0) of the model's logit with respect to ``batch["image"]``; rows
    whose ``image_present`` flag is False get an all-zero map.

    Parameters
    ----------
    model : nn.Module
        Returns logits [B] / [B, 1] or a dict with ``"logits"``; put it in eval mode.
    batch : dict of tensors or ArrayDataset
        Must hold ``"image"`` [n, C, H, W]; other inputs are held fixed.
    method : "gradient" | "integrated_gradients" | "grad_cam"
    n_steps : int
        Integration steps for integrated_gradients.

    Raises
    ------
    ValueError
        Unknown method, no ``"image"`` in the batch, or no convolution for Grad-CAM.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    if method not in SALIENCY_METHODS:
        raise ValueError(f"Unknown saliency method {method!r}; expected one of {', '.join(SALIENCY_METHODS)}.")
    x = _to_batch(batch)
    if B.IMAGE not in x:
        raise ValueError(f"The batch has no {B.IMAGE!r} (keys: {', '.join(sorted(x))}); nothing to explain.")
    n, _, height, width = x[B.IMAGE].shape
    present = x.get(B.present_key("image"), torch.ones(n, dtype=torch.bool)).bool()
    maps = np.zeros((n, height, width), dtype=np.float32)
    if not present.any():
        return maps
    if not present.all():  # rows without an image never reach the image encoder: their map stays 0
        rows = present.nonzero().flatten()
        maps[rows.numpy()] = image_saliency(model, {k: v[rows] for k, v in x.items()}, method, n_steps)
        return maps
    others = [k for k in x if k != B.IMAGE]

    def forward(image, *rest):
        return _logits(model({B.IMAGE: image, **dict(zip(others, rest, strict=True))}))

    image = x[B.IMAGE].float().clone().requires_grad_(True)
    extra = tuple(x[k] for k in others) or None
    if method == "gradient":
        attr = Saliency(forward).attribute(image, additional_forward_args=extra, abs=True)
    elif method == "integrated_gradients":
        attr = IntegratedGradients(forward).attribute(image, baselines=torch.zeros_like(image), n_steps=n_steps,
                                                      additional_forward_args=extra).abs()
    else:
        cam = LayerGradCam(forward, _last_conv(model)).attribute(image, additional_forward_args=extra,
                                                                 relu_attributions=True)
        attr = LayerAttribution.interpolate(cam, tuple(image.shape[-2:]), interpolate_mode="bilinear").clamp(min=0)
    return attr.sum(dim=1).detach().cpu().numpy()


@torch.no_grad()
def attention_over_time(model: nn.Module, batch) -> np.ndarray:
    """``[n, T]`` attention weights of the time-series encoder (rows sum to 1 over real steps; 0 without series).

    Raises
    ------
    ValueError
        If the model's output has no ``"ts_attention"`` (no time series, or pooling other than attention).
    """
    out = model(_to_batch(batch))
    if not isinstance(out, dict) or "ts_attention" not in out:
        raise ValueError("The model returns no 'ts_attention'; attention needs a hybrid model with a time series.")
    return out["ts_attention"].cpu().numpy()


@torch.no_grad()
def modality_contributions(model: nn.Module, batch, modalities: list[str] | None = None,
                           method: str = "shapley") -> pd.DataFrame:
    """Each modality's contribution to each sample's logit, switching modalities off through ``<m>_present``.

    ``"shapley"``: exact Shapley values of the value function ``v(S)`` = logit with only the modalities in ``S``
    present (among those present for the sample); ``v(empty)`` is the mean full-model logit over the batch, so a
    sample's contributions sum to its logit minus that mean. ``"ablation"``: logit with all present modalities
    minus logit with modality ``m`` switched off (0 where ``m`` is absent or the only modality present).

    Returns
    -------
    DataFrame [n x M]
        One column per modality (``modalities``, default the model's ``modalities`` attribute).

    Raises
    ------
    ValueError
        Unknown method or no modalities to compare.
    """
    if method not in ("shapley", "ablation"):
        raise ValueError(f"Unknown modality contribution method {method!r}; expected 'shapley' or 'ablation'.")
    x = _to_batch(batch)
    mods = list(modalities if modalities is not None else getattr(model, "modalities", ()))
    if not mods:
        raise ValueError("No modalities to compare; pass modalities=[...] for a model without a .modalities list.")
    n = next(iter(v for k, v in x.items() if k != B.INDEX)).shape[0]
    present = {m: x.get(B.present_key(m), torch.ones(n, dtype=torch.bool)).bool() for m in mods}
    full = _logits(model(x))

    def value(subset: tuple[str, ...]) -> torch.Tensor:
        """Logit with only ``subset`` switched on (per row; nan where nothing would be present)."""
        flags = {m: present[m] & (m in subset) for m in mods}
        any_on = torch.stack(list(flags.values())).any(dim=0)
        out = torch.full((n,), float("nan"))
        if any_on.any():
            rows = any_on.nonzero().flatten()
            sub = {k: v[rows] for k, v in x.items()}
            sub.update({B.present_key(m): flags[m][rows] for m in mods})
            out[rows] = _logits(model(sub)).float()
        return out

    contrib = np.zeros((n, len(mods)))
    if method == "ablation":
        for j, m in enumerate(mods):
            without = value(tuple(o for o in mods if o != m))
            delta = (full - without).numpy()
            contrib[:, j] = np.where(np.isnan(delta) | ~present[m].numpy(), 0.0, delta)
        return pd.DataFrame(contrib, columns=mods)
    empty = float(full.mean())
    cache = {(): torch.full((n,), empty)}
    for size in range(1, len(mods) + 1):
        for subset in combinations(mods, size):
            v = value(subset)
            cache[subset] = torch.where(torch.isnan(v), torch.full_like(v, empty), v)
    m_total = len(mods)
    for j, m in enumerate(mods):
        rest = [o for o in mods if o != m]
        for size in range(len(rest) + 1):
            weight = factorial(size) * factorial(m_total - size - 1) / factorial(m_total)
            for subset in combinations(rest, size):
                with_m = tuple(o for o in mods if o in subset or o == m)
                contrib[:, j] += weight * (cache[with_m] - cache[tuple(o for o in mods if o in subset)]).numpy()
    return pd.DataFrame(contrib, columns=mods)
