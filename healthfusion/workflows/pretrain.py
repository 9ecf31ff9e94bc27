"""``healthfusion pretrain --config PRE.yaml``: self-supervised pretraining of one encoder on unlabelled stays,
saved as a named checkpoint in the local registry (or a folder), with its model card and preprocessing.

Example ``PRE.yaml``::

    name: physionet-lstm            # registry name (saved under $HEALTHFUSION_MODELS or ~/.healthfusion/models)
    data:                           # one source, or a list pooled into one set of stays; labels are never read
      - {source: physionet2012, path: ../shared/data/physionet2012/set-a.tar.gz}
      - {source: physionet2012, path: ../shared/data/physionet2012/set-b.tar.gz}
    exclude_stays: eval_stays.txt   # optional: one stay id per line, left out of pretraining (evaluation stays)
    modality: ts
    features: {hours: 48, step: 2}
    encoder: {hidden: 32, lstm_layers: 1}
    objective: masked_value         # optional: the encoder's default
    mask_rate: 0.15
    training: {max_epochs: 20, batch_size: 64, lr: 0.001}   # the TrainerConfig of `train` (device, ...)
    checkpoints: runs/physionet-lstm-checkpoints  # optional: per-epoch checkpoint; `--resume` continues from it

``training`` is the one training config of every mode (:class:`~healthfusion.training.config.TrainerConfig`:
``device``, ``mixed_precision``, ``lr_schedule`` ... as in ``train``); keys it leaves out take
:data:`PRETRAIN_PRESET` (20 epochs, no weight decay, patience 5, gradient clipping at 1.0). The loop is the one
:class:`~healthfusion.training.trainer.Trainer` with the :class:`~healthfusion.training.losses.pretraining.PretrainingLoss`.

The encoder's architecture comes from ``encoder`` exactly as ``healthfusion train`` builds it from the same
``model`` fields, so a run config with ``model: {pretrained: {ts: physionet-lstm}}`` loads it without edits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import concat_cohorts
from healthfusion.data.splits import split_patients
from healthfusion.features import batch as B
from healthfusion.files import display_path, write_text
from healthfusion.models.pretraining import PretrainingConfig, PretrainingModel
from healthfusion.models.registry import ModelCard, registry_root, save_encoder
from healthfusion.training import checkpoint
from healthfusion.training.callbacks import ProgressCallback
from healthfusion.training.config import TrainerConfig, training_section
from healthfusion.training.losses.pretraining import PretrainingLoss
from healthfusion.training.trainer import Trainer
from healthfusion.workflows.common import make_featurizer, open_source
from healthfusion.workflows.config import (
    QUICK_DESCRIPTION,
    ConfigError,
    FeatureSpec,
    SourceSpec,
    StrictModel,
    read_yaml_config,
    resolve_paths,
)
from healthfusion.workflows.modeling import hybrid_config
from healthfusion.workflows.runfolder import check_run_folder, claim_run_folder, inputs_inside, source_paths


class EncoderSpec(StrictModel):
    """Encoder size, with the meaning of the same ``model`` fields of a run config."""

    hidden: int = Field(32, ge=1)
    lstm_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


#: What ``training:`` keys left out default to.
PRETRAIN_PRESET = {"max_epochs": 20, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "patience": 5,
                   "grad_clip": 1.0, "monitor": "val_loss"}


class PretrainRunConfig(StrictModel):
    """The ``pretrain`` job (validated; unknown keys are errors). Give ``name`` (registry) or ``out`` (a folder)."""

    #: what ``--quick`` sets (see :func:`~healthfusion.workflows.config.apply_quick`); ``--set`` still wins
    QUICK: ClassVar[dict[str, Any]] = {"training.max_epochs": 2}

    name: str | None = None
    out: Path | None = None
    quick: bool = Field(False, description=QUICK_DESCRIPTION)
    root: Path | None = None
    overwrite: bool = False
    data: list[SourceSpec]
    exclude_stays: Path | None = None
    modality: Literal["ts", "static", "codes", "text", "image"] = "ts"
    features: FeatureSpec = Field(default_factory=FeatureSpec)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    objective: Literal["masked_value", "masked_feature", "masked_code", "contrastive"] | None = None
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0)
    temperature: float = Field(0.1, gt=0.0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    split_seed: int = 0
    training: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**PRETRAIN_PRESET))
    checkpoints: Path | None = Field(None, description="folder for the newest per-epoch checkpoint (--resume)")
    notes: str = ""

    @field_validator("training", mode="before")
    @classmethod
    def _preset(cls, value):
        return training_section(value, PRETRAIN_PRESET, "training")

    @field_validator("data", mode="before")
    @classmethod
    def _as_list(cls, value):
        return [value] if isinstance(value, dict) else value

    def target(self) -> str | Path:
        if (self.name is None) == (self.out is None):
            raise ValueError("give either 'name' (save into the model registry) or 'out' (a folder), not both or "
                             "neither")
        return self.name if self.name is not None else Path(self.out)

    def folder(self) -> Path:
        """The folder the encoder is saved in: ``out``, or the registry folder of ``name``."""
        target = self.target()
        return target if isinstance(target, Path) else registry_root(self.root) / target


def load_pretrain_config(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
                         quick: bool = False) -> PretrainRunConfig:
    """Read and validate a pretraining config (``overrides``, ``out`` and ``quick`` as in
    :func:`~healthfusion.workflows.config.read_yaml_config`; ``out`` replaces a registry ``name``); relative paths
    are resolved against the file's folder.

    Raises
    ------
    ConfigError
        Missing file, invalid YAML, or invalid settings (each offending key named).
    """
    if out is not None:  # --out saves into a folder instead of the registry
        overrides = [*overrides, "name=null"]
    config = read_yaml_config(path, PretrainRunConfig, overrides, out, quick)
    try:
        config.target()
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = Path(path).parent
    for spec in config.data:
        resolve_paths(base, spec, ("path", "cohort"))
    resolve_paths(base, config, ("exclude_stays", "root", "checkpoints"))
    return config


def _read_exclusions(path: Path | None) -> set[str]:
    if path is None:
        return set()
    if not path.is_file():
        raise ValueError(f"exclude_stays file {path} does not exist; give a text file with one stay id per line.")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def run_pretraining(config: PretrainRunConfig, console=None, exclude: set[str] | None = None,
                    cohort: Cohort | None = None, resume: bool = False) -> dict:
    """Pretrain the configured encoder on the unlabelled stays and save it with its model card.

    ``exclude`` adds stay ids to those of ``config.exclude_stays``; ``cohort`` (already read) replaces reading
    ``config.data`` (which then only describes the data in the model card). Labels are never read. With
    ``config.checkpoints`` the newest epoch is checkpointed there, and ``resume`` continues from it. The encoder's
    folder must be new or empty (data or checkpoints inside it are kept) unless ``config.overwrite``, which clears
    it once the encoder is trained; it is checked before the data is read.
    Returns ``{"path", "card", "history"}``.

    Raises
    ------
    ValueError (ConfigError, SourceError, CohortError, ModelLoadError)
        Unreadable data, no stays left, a modality the data lacks, a non-empty encoder folder (RunFolderError)
        without ``overwrite``, or ``resume`` without ``checkpoints`` in the config.
    """
    t0 = time.perf_counter()
    target = config.target()
    if resume and config.checkpoints is None:
        raise ValueError("--resume needs the checkpoints: folder of the interrupted run in the config.")
    folder = config.folder()
    inputs = inputs_inside(folder, [*source_paths(config.data), config.exclude_stays, config.checkpoints])
    check_run_folder(folder, config.overwrite, keep=inputs)  # before hours of training, not after

    def say(text):
        if console is not None:
            console.print(text)

    say("[bold cyan]Data[/] (labels are not read)")
    if cohort is None:
        cohort = concat_cohorts([open_source(spec, console) for spec in config.data])
    excluded = _read_exclusions(config.exclude_stays) | set(exclude or ())
    ids = [s for s in cohort.stay_ids.tolist() if s not in excluded]
    if len(ids) < 10:
        raise ValueError(f"Only {len(ids)} stays remain after excluding {len(excluded)}; pretraining needs more.")
    stays = cohort.stays.set_index("stay_id").loc[ids].reset_index()
    split = split_patients(stays, {"train": 1 - config.val_fraction, "val": config.val_fraction},
                           seed=config.split_seed)
    parts = {s: split.index[split == s].tolist() for s in ("train", "val")}
    say(f"      stays: {len(ids)} ({len(parts['train'])} train, {len(parts['val'])} validation; "
        f"{len(cohort) - len(ids)} excluded)")

    m = config.modality
    feat = make_featurizer(config.features.model_copy(update={"modalities": [m]}), None).fit(cohort, parts["train"])
    data = {}
    for s, part in parts.items():
        ds = feat.transform(cohort, part, with_target=False)
        data[s] = ds[ds[B.present_key(m)]]
    say(f"      with {m}: " + ", ".join(f"{s} {len(d)}" for s, d in data.items()))
    enc = config.encoder
    encoder_config = getattr(hybrid_config(feat, hidden=enc.hidden, lstm_layers=enc.lstm_layers,
                                           bidirectional=enc.bidirectional, dropout=enc.dropout), m)
    torch.manual_seed(config.training.seed)  # initial weights by the seed, whatever drew from the generator before
    model = PretrainingModel(PretrainingConfig(encoder=encoder_config, objective=config.objective,
                                               mask_rate=config.mask_rate, temperature=config.temperature))
    say(f"[bold cyan]Pretraining[/] {model.objective} on the {m} encoder ({encoder_config.encoder})")
    progress = [ProgressCallback(console=console)] if console is not None else []
    trainer = Trainer(config.training, progress, loss=PretrainingLoss())
    if config.checkpoints is not None:
        checkpoint.resumable(trainer, config.checkpoints, resume)
    history = trainer.fit(model, data["train"], data["val"] if len(data["val"]) else None)
    model.eval()

    tr = feat.transformers_[m]
    prep_summary = {"modality": m, **{k: v for k, v in tr.get_params().items() if isinstance(v, int | float | str)}}
    if hasattr(tr, "variables_"):
        prep_summary["variables"] = list(tr.variables_)
    best = history.best_epoch
    card = ModelCard(
        objective=model.objective,
        data={"source": ", ".join(sorted({str(s.source or s.cohort) for s in config.data})),
              "paths": [str(s.path or s.cohort) for s in config.data], "n_stays": len(ids),
              "n_train": len(data["train"]), "n_val": len(data["val"]), "n_excluded": len(cohort) - len(ids),
              "labels_used": False},
        preprocessing=prep_summary,
        metrics={"best_epoch": best, "epochs": len(history.train_loss),
                 "val_loss": None if best is None else history.val_loss[best],
                 "train_loss": history.train_loss[-1], "seconds": round(time.perf_counter() - t0, 1)},
        notes=config.notes,
    )
    claim_run_folder(folder, config.overwrite, keep=inputs)  # an earlier encoder's files never stay beside this one
    path = save_encoder(model.encoder, target, card=card, preprocessing_state=feat.get_state(), root=config.root,
                        overwrite=config.overwrite)
    write_text(path / "pretraining_history.json", json.dumps(history.to_dict(), indent=2))
    say(f"Saved the pretrained {m} encoder to [bold]{display_path(path)}[/]")
    return {"path": path, "card": card, "history": history}
