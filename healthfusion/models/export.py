"""ONNX export of the hybrid model and onnxruntime scoring (extra ``onnx``; the only module importing onnxruntime).

:class:`HybridModel`'s forward encodes each modality only on the rows where it is present (so that batch norm in
training mode never sees an absent row) and runs the LSTM on a packed sequence: both are data-dependent branches
that the torch exporters cannot follow. :class:`BranchFreeHybrid` computes the same evaluation-mode output without
them, sharing the model's parameters (the state-dict keys do not change):

- every encoder runs on every row and absent rows are replaced by zeros afterwards (in evaluation mode every encoder
  is row-wise, so a present row's embedding is unchanged); the lengths of absent rows are clamped to 1;
- the LSTM runs on the padded sequence: the forward direction's outputs at real steps are those of the packed run
  (padding sits at the end); the backward direction runs on each sequence reversed within its own length, which is
  exactly what packing does; padded steps are zeroed, and ``"last"`` pooling reads each direction's final state at
  its own last real step;
- bags of ids (codes, hashed text) are an embedding lookup and a mean over the non-padding ids, as
  ``nn.EmbeddingBag(mode="mean", padding_idx=0)`` computes it;
- fusion is :meth:`Fusion.combine <healthfusion.models.fusion.Fusion.combine>`, the check-free half of its forward.

Input checks (shapes, id ranges, a row with no modality) are the torch model's: run them before scoring with
:func:`check_inputs`. A model with a local Hugging Face text encoder cannot be exported (:class:`ExportError`).

Example::

    path = export_onnx(model, batch, "runs/m1/model.onnx")      # batch: any real batch, fixes the input widths
    session = OnnxScorer(path)
    logits = session.logits(batch)                               # [B] numpy, equal to model(batch)["logits"]
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.files import display_path
from healthfusion.models.encoders.cnn import CNNEncoder
from healthfusion.models.encoders.codes import CodesEncoder, IdBag
from healthfusion.models.encoders.lstm import LSTMEncoder, series_inputs, step_weights
from healthfusion.models.encoders.mlp import MLPEncoder
from healthfusion.models.encoders.text import TextEncoder
from healthfusion.models.encoders.transformer import TransformerEncoder, sinusoidal_encoding
from healthfusion.models.fusion import presence_matrix
from healthfusion.models.heads import head_predictions
from healthfusion.models.hybrid import HybridModel
from healthfusion.models.inference import SCORING_BATCH
from healthfusion.optional import require

log = logging.getLogger(__name__)



class ExportError(ValueError):
    """The model cannot be exported (an encoder without a branch-free form) or the export failed."""


def input_names(model: HybridModel) -> list[str]:
    """The ONNX graph's input names for ``model``, in order: each modality's tensors then its presence flag.

    ``ts``: ts_values, ts_mask, [ts_delta], ts_lengths, ts_present; ``text``/``codes``/``static``/``image``: the
    input key and ``<m>_present``.
    """
    names: list[str] = []
    for m in model.modalities:
        if m == "ts":
            names += [B.TS_VALUES, B.TS_MASK] + ([B.TS_DELTA] if model.config.ts.use_delta else []) + [B.TS_LENGTHS]
        else:
            names.append({"static": B.STATIC, "codes": B.CODES, "text": B.TEXT, "image": B.IMAGE}[m])
        names.append(B.present_key(m))
    return names


def _bag_mean(bag: IdBag, ids: torch.Tensor) -> torch.Tensor:
    """``nn.EmbeddingBag(mode="mean", padding_idx=0)`` as a lookup and masked mean: ``[B, L]`` -> ``[B, D]``."""
    real = (ids != 0).to(bag.bag.weight.dtype)  # [B, L]
    summed = (bag.bag.weight[ids] * real[:, :, None]).sum(dim=1)
    return summed / real.sum(dim=1, keepdim=True).clamp_min(1.0)  # an all-padding row gives zeros


class _BranchFreeLSTM(nn.Module):
    """:class:`LSTMEncoder` in evaluation mode on the padded sequence (see the module docstring)."""

    def __init__(self, encoder: LSTMEncoder):
        super().__init__()
        self.encoder = encoder
        lstm = encoder.lstm
        self.layers = nn.ModuleList()
        for layer in range(lstm.num_layers):
            width = lstm.input_size if layer == 0 else lstm.hidden_size * encoder.directions
            for suffix in ("", "_reverse")[: encoder.directions]:
                single = nn.LSTM(width, lstm.hidden_size, batch_first=True)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(single, f"{name}_l0").data = getattr(lstm, f"{name}_l{layer}{suffix}").data
                self.layers.append(single)

    def forward(self, values, mask, delta, lengths):
        enc = self.encoder
        if enc.config.input_decay:
            values = enc.decayed_values(values, mask, delta)
        x = torch.cat([values, mask] + ([delta] if enc.config.use_delta else []), dim=-1)
        steps = x.shape[1]
        positions = torch.arange(steps, device=x.device)[None, :]
        valid = positions < lengths[:, None]  # [B, T]
        # index that reverses each row within its length and leaves the padding where it is (an involution)
        flip = torch.where(valid, lengths[:, None] - 1 - positions, positions)
        last = (lengths - 1)[:, None, None]
        finals = []
        for layer in range(enc.lstm.num_layers):
            outs = []
            for d in range(enc.directions):
                module = self.layers[layer * enc.directions + d]
                if d == 0:
                    out, _ = module(x)
                    final = out.gather(1, last.expand(-1, 1, out.shape[2])).squeeze(1)
                else:
                    index = flip[:, :, None].expand(-1, -1, x.shape[2])
                    rev, _ = module(x.gather(1, index))
                    final = rev.gather(1, last.expand(-1, 1, rev.shape[2])).squeeze(1)
                    out = rev.gather(1, flip[:, :, None].expand(-1, -1, rev.shape[2]))
                outs.append(out)
                finals.append(final)
            x = torch.cat(outs, dim=-1)
        out = x * valid[:, :, None].to(x.dtype)  # 0 on padding, as pad_packed_sequence gives
        weights = _pool_weights(enc, out, valid, lengths)
        if enc.config.pooling == "last":  # each direction's final state, as h_n of the packed run
            return torch.cat(finals[-enc.directions :], dim=-1), weights
        return torch.bmm(weights.unsqueeze(1), out).squeeze(1), weights


def _pool_weights(enc, out, valid, lengths) -> torch.Tensor:
    """The encoder's pooling weights ``[B, T]``; ``"last"`` as a comparison instead of ``one_hot`` (exportable)."""
    if enc.config.pooling == "last":
        positions = torch.arange(out.shape[1], device=out.device)[None, :]
        return (positions == (lengths - 1)[:, None]).to(out.dtype)
    return step_weights(out, valid, lengths, enc.config.pooling, getattr(enc, "attn_proj", None),
                        getattr(enc, "attn_score", None))


class _BranchFreeTransformer(nn.Module):
    """:class:`TransformerEncoder` without its input checks (its forward is otherwise branch-free)."""

    def __init__(self, encoder: TransformerEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, values, mask, delta, lengths):
        enc = self.encoder
        x = torch.cat([values, mask] + ([delta] if enc.config.use_delta else []), dim=-1)
        steps = x.shape[1]
        valid = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]
        x = x.masked_fill(~valid[:, :, None], 0.0)
        h = enc.input_proj(x) + sinusoidal_encoding(steps, enc.out_dim, dtype=x.dtype, device=x.device)
        for layer in enc.layers.layers:
            h = _encoder_layer(layer, h, ~valid)
        out = enc.layers.norm(h).masked_fill(~valid[:, :, None], 0.0)
        weights = _pool_weights(enc, out, valid, lengths)
        return torch.bmm(weights.unsqueeze(1), out).squeeze(1), weights


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """A pre-norm ``nn.TransformerEncoderLayer`` in evaluation mode, written out with shapes read from the input
    (its fused fast path has no ONNX form and the traced module fixes the sequence length):
    ``x + attn(norm1(x))``, then ``x + ff(norm2(x))``."""
    attn = layer.self_attn
    heads = attn.num_heads
    batch, steps, width = x.shape
    q, k, v = nn.functional.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, D / H]
        return t.reshape(batch, steps, heads, width // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(width // heads)
    scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    mixed = (torch.softmax(scores, dim=-1) @ split(v)).transpose(1, 2).reshape(batch, steps, width)
    x = x + attn.out_proj(mixed)
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


class BranchFreeHybrid(nn.Module):
    """The evaluation-mode forward of a :class:`HybridModel` without data-dependent branches, returning the logits.

    Parameters
    ----------
    model : HybridModel
        Shared, not copied (its parameters are this module's); put into evaluation mode.

    Shapes
    ------
    forward(*inputs in :func:`input_names` order) -> logits [B] (binary, regression) or [B, K]

    Raises
    ------
    ExportError
        The model has an encoder without a branch-free form (a local Hugging Face text encoder).
    """

    def __init__(self, model: HybridModel):
        super().__init__()
        self.model = model.eval()
        self.names = input_names(model)
        self.ts = None
        for m in model.modalities:
            encoder = model.encoders[m]
            if isinstance(encoder, LSTMEncoder):
                self.ts = _BranchFreeLSTM(encoder)
            elif isinstance(encoder, TransformerEncoder):
                self.ts = _BranchFreeTransformer(encoder)
            elif not isinstance(encoder, MLPEncoder | CodesEncoder | TextEncoder | CNNEncoder):
                raise ExportError(
                    f"The {m!r} encoder ({type(encoder).__name__}) has no exportable form; export a model without "
                    "it (e.g. the hashed-bag text encoder instead of a Hugging Face one) or score it with torch."
                )

    def _embed(self, m: str, named: dict[str, torch.Tensor]) -> torch.Tensor:
        encoder = self.model.encoders[m]
        present = named[B.present_key(m)]
        if m == "ts":
            lengths = torch.where(present, named[B.TS_LENGTHS], torch.ones_like(named[B.TS_LENGTHS]))
            return self.ts(named[B.TS_VALUES], named[B.TS_MASK], named.get(B.TS_DELTA), lengths)[0]
        if isinstance(encoder, MLPEncoder):
            return encoder.layers(named[B.STATIC])
        if isinstance(encoder, CodesEncoder):
            return encoder.dropout(_bag_mean(encoder.embed, named[B.CODES]))
        if isinstance(encoder, TextEncoder):
            return encoder.mlp(_bag_mean(encoder.embed, named[B.TEXT]))
        return encoder.embed(named[B.IMAGE])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.names, inputs, strict=True))
        model = self.model
        embeddings = []
        for m in model.modalities:
            feats = self._embed(m, named)
            embeddings.append(torch.where(named[B.present_key(m)][:, None], feats, torch.zeros_like(feats)))
        matrix = torch.stack([named[B.present_key(m)] for m in model.modalities], dim=1)
        fused, _ = model.fusion.combine(embeddings, matrix)
        return model.head(model.fc(fused))


def check_inputs(model: HybridModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The graph inputs of ``batch`` in :func:`input_names` order, after the torch model's own checks (presence
    flags filled in where the batch has none; ``ts_lengths`` = T where absent).

    Raises
    ------
    ValueError
        As ``HybridModel.forward``: a missing input, a bad presence flag, a row with no modality (positions named),
        bad time-series shapes or lengths, ids out of range (ONNX Runtime checks the remaining widths).
    """
    present = model.presence(batch)
    presence_matrix(model.modalities, present)
    full = {**batch, **{B.present_key(m): flag for m, flag in present.items()}}
    for m in model.modalities:
        rows = present[m]
        encoder = model.encoders[m]
        if m == "ts":
            _, lengths = series_inputs(
                full[B.TS_VALUES][rows], full[B.TS_MASK][rows],
                None if full.get(B.TS_DELTA) is None else full[B.TS_DELTA][rows],
                None if full.get(B.TS_LENGTHS) is None else full[B.TS_LENGTHS][rows],
                n_variables=model.config.ts.n_variables, use_delta=model.config.ts.use_delta, owner=type(encoder).__name__)
            full[B.TS_LENGTHS] = torch.ones(rows.shape[0], dtype=torch.int64).masked_scatter(rows, lengths)
        elif isinstance(encoder, CodesEncoder | TextEncoder):
            encoder.embed.check(full[_BAG_KEY[type(encoder)]][rows])
    return [full[name] for name in input_names(model)]


_BAG_KEY = {CodesEncoder: B.CODES, TextEncoder: B.TEXT}


def _onnxruntime():
    return require("onnxruntime", extra="onnx", needed_for="ONNX scoring")


def export_onnx(model: HybridModel, batch: dict[str, torch.Tensor], path: str | Path, *,
                opset: int = 18) -> Path:
    """Write ``model``'s evaluation-mode logits as an ONNX graph at ``path`` (batch size and, for time series,
    the number of steps are dynamic; the widths are those of ``batch``, any real batch of the model's inputs). Uses the TorchScript exporter
    (``dynamo=False``): on 2 shared cores it exported a tiny hybrid in seconds where the dynamo exporter took
    50-90 s, with the same parity.

    Returns the path. The torch model is left in evaluation mode.

    Raises
    ------
    ExportError
        An encoder without a branch-free form, or the exporter failed (its message included).
    ImportError
        The ``onnx`` extra is not installed (with the install hint).
    ValueError
        ``batch`` fails the model's input checks (see :func:`check_inputs`).
    """
    require("onnx", extra="onnx", needed_for="ONNX export")
    wrapper = BranchFreeHybrid(model).eval()
    args = tuple(check_inputs(model, batch))
    dynamic = {name: ({0: "batch", 1: "steps"} if name in (B.TS_VALUES, B.TS_MASK, B.TS_DELTA) else {0: "batch"})
               for name in wrapper.names}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's notices; failures still raise
            torch.onnx.export(wrapper, args, str(path), input_names=wrapper.names, output_names=["logits"],
                              dynamic_axes={**dynamic, "logits": {0: "batch"}}, opset_version=opset, dynamo=False)
    except Exception as err:  # the exporter raises many types; keep the cause
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {err}") from err
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    log.info("Exported the model to %s (inputs %s).", display_path(path), ", ".join(wrapper.names))
    return path


class OnnxScorer:
    """Logits of an exported hybrid model with onnxruntime (the same numbers as the torch model within 1e-5).

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file :func:`export_onnx` wrote.
    model : HybridModel
        The torch model it was exported from, used for the input checks and input names (not for scoring).
    threads : int, default 1
        Intra-op threads of the onnxruntime session.

    Raises
    ------
    ImportError
        onnxruntime is not installed (with the install hint).
    ExportError
        The file cannot be loaded or its inputs are not the model's.
    """

    def __init__(self, path: str | Path, model: HybridModel, threads: int = 1):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: a spinning pool held the cores a service's event loop and
        # request thread need (single-patient p50 24 ms spinning vs ~7 ms on 2 shared cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ExportError(f"Cannot load the ONNX model {path}: {err}; export it again with export_onnx.") from err
        self.model = model
        self.names = input_names(model)
        graph = [i.name for i in self.session.get_inputs()]
        if graph != self.names:
            raise ExportError(f"{path} expects inputs {graph}, but the model gives {self.names}; it was exported "
                              "from another model: export it again.")

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """``[B]`` (or ``[B, K]``) logits of ``batch``; raises ``ValueError`` as :func:`check_inputs`."""
        inputs = check_inputs(self.model, batch)
        feeds = {name: value.detach().cpu().numpy() for name, value in zip(self.names, inputs, strict=True)}
        return self.session.run(["logits"], feeds)[0]


def example_batch(model: HybridModel, rows: int = 2) -> dict[str, torch.Tensor]:
    """A batch of ``rows`` all-zero rows (every modality present) of a model over time series and static values:
    enough to fix the exported graph's input widths, from the model's config alone.

    Raises
    ------
    ExportError
        The model reads another modality (codes, text, images): export it with a real batch.
    """
    other = [m for m in model.modalities if m not in ("ts", "static")]
    if other:
        raise ExportError(f"example_batch builds time-series and static inputs only; the model also reads {other}: "
                          "export it with export_onnx(model, a real batch, path).")
    batch: dict[str, torch.Tensor] = {}
    if "ts" in model.modalities:
        n_steps = 4
        shape = (rows, n_steps, model.config.ts.n_variables)
        batch.update({B.TS_VALUES: torch.zeros(shape), B.TS_MASK: torch.zeros(shape), B.TS_DELTA: torch.zeros(shape),
                      B.TS_LENGTHS: torch.full((rows,), n_steps, dtype=torch.int64),
                      B.present_key("ts"): torch.ones(rows, dtype=torch.bool)})
    if "static" in model.modalities:
        batch[B.STATIC] = torch.zeros(rows, model.config.static.in_dim)
        batch[B.present_key("static")] = torch.ones(rows, dtype=torch.bool)
    return batch


def onnx_session(model: HybridModel, threads: int = 1) -> OnnxScorer:
    """Export ``model`` (time series and static values, see :func:`example_batch`) to a temporary file and load it
    with onnxruntime: the scorer of ``healthfusion serve --backend onnx``. The file is deleted once loaded.

    Raises
    ------
    ExportError, ImportError
        As :func:`export_onnx` and :class:`OnnxScorer`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, example_batch(model), Path(tmp) / "model.onnx")
        return OnnxScorer(path, model, threads=threads)


def onnx_outputs(scorer: OnnxScorer, data: ArrayDataset, kind: str, batch_size: int = SCORING_BATCH) -> np.ndarray:
    """:func:`healthfusion.models.inference.network_outputs` with onnxruntime: the same batching and output maps
    (binary ``[n]`` probabilities, ...), from the exported graph's logits."""
    if len(data) == 0:
        raise ValueError("Nothing to score: the dataset has 0 rows.")
    chunks = []
    for batch in data.iter_batches(batch_size):
        batch.pop(B.TARGET, None)
        chunks.append(torch.from_numpy(np.asarray(scorer.logits(batch))).float())
    return head_predictions(torch.cat(chunks), kind).cpu().numpy()
