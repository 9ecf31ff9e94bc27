"""What every training workflow shares: opening a configured source, the run's featurizer and hybrid, the data
preparation of a run (folder, split, row accounting) and the model folder's card (data options, label, training
summary). Every workflow may import this module; no workflow imports another workflow's private function."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion._version import __version__
from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import concat_cohorts
from healthfusion.data.errors import CohortError
from healthfusion.data.schema import LabelSpec
from healthfusion.data.sources import check_options, get_source, scoring_options
from healthfusion.data.splits import (
    predefined_split,
    shared_patients,
    split_patients,
    write_development_patients,
)
from healthfusion.features.codes import CodeTransformer
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.image import ImageTransformer
from healthfusion.features.text import HFTokenTransformer, TextTransformer
from healthfusion.features.timeseries import TimeSeriesTransformer
from healthfusion.files import display_path, write_csv
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.callbacks import ProgressCallback
from healthfusion.training.privacy import DPSGD, PrivacyConfig, copy_to_plain, make_private_model
from healthfusion.workflows.config import FeatureSpec, ModelSpec, RunConfig, SourceSpec
from healthfusion.workflows.modeling import build_run_hybrid, pretrained_featurizer
from healthfusion.workflows.runfolder import (
    check_run_folder,
    claim_run_folder,
    inputs_inside,
    write_run_config,
)

log = logging.getLogger(__name__)
TRAINABLE_KINDS = ("binary", "multiclass", "regression")


def open_source(spec: SourceSpec, console=None, images: bool = True) -> Cohort:
    """The cohort a :class:`SourceSpec` names: a saved folder, built in memory from raw files, or (a run config's
    ``data.sources``) several of those pooled (:func:`pool_sources`; ``images`` as there)."""
    if getattr(spec, "sources", None):
        return pool_sources(spec.sources, console, images=images)
    if spec.cohort is not None:
        return Cohort.load(spec.cohort)
    builder = get_source(spec.source)
    check_options(spec.source, spec.options)  # a misspelt option names itself, not a TypeError
    if console is not None:
        with console.status(f"Reading {spec.source} from {display_path(spec.path)} ..."):
            return builder(spec.path, **spec.options)
    return builder(spec.path, **spec.options)


def source_names(specs: list[SourceSpec]) -> list[str]:
    """A name per pooled source for the stays' ``source`` column: its file or folder name (``set-a.tar.gz``), made
    unique with the entry's index where two entries share one."""
    names = [Path(s.cohort if s.cohort is not None else s.path).name for s in specs]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def pool_sources(specs: list[SourceSpec], console=None, images: bool = True, what: str = "data.sources") -> Cohort:
    """The cohorts of ``specs`` read and pooled into one (stay ids must be distinct), each stay's entry named in
    the stays' ``source`` column. Pooling keeps the tables, not the image arrays: with ``images=False`` (a run
    that does not use the image modality) sources with images are pooled without them (logged).

    Raises
    ------
    CohortError
        A stay id in two sources, or (``images=True``) a source with images; ``what`` names the config key.
    """
    cohorts = [open_source(s, console) for s in specs]
    names = source_names(specs)
    for name, cohort in zip(names, cohorts, strict=True):
        if cohort.images is not None and len(cohort.images) and not images:
            log.info("%s: the images of %s are not pooled (the run does not use the image modality)", what, name)
        elif cohort.images is not None and len(cohort.images):
            raise CohortError(f"{what}: {name} has images, and pooled sources keep no image arrays; use one image "
                              "source (e.g. its own train/val/test splits in one cohort folder with split: "
                              "predefined).")
    pooled = concat_cohorts(cohorts, names=names)
    log.info("data.sources: %s pooled into %d stays", dict(zip(names, map(len, cohorts), strict=True)), len(pooled))
    return pooled


def open_test_sets(config: RunConfig, console=None) -> Cohort | None:
    """The external test cohort of ``config.data.test``: None without one, the cohort of a single entry, or the
    entries of a list pooled (:func:`pool_sources`; each stay's entry in the stays' ``source`` column)."""
    specs = config.data.test_sources
    if len(specs) == 1:
        return open_source(specs[0], console)
    if specs:
        return pool_sources(specs, console, images="image" in config.features.modalities, what="data.test")
    return None


def sample_stays(cohort: Cohort, max_stays: int | None, seed: int) -> Cohort:
    """``cohort`` cut to at most ``max_stays`` stays by whole patients (shuffled with ``seed``, kept while their
    stays fit); the cohort itself when ``max_stays`` is None or not below its size. Logs what it kept."""
    if max_stays is None or len(cohort) <= max_stays:
        return cohort
    stays = cohort.stays
    patients = stays["patient_id"].drop_duplicates().to_numpy()
    np.random.default_rng(seed).shuffle(patients)
    per_patient = stays.groupby("patient_id").size().reindex(patients).cumsum()
    keep = set(per_patient.index[per_patient.to_numpy() <= max_stays])
    ids = stays.loc[stays["patient_id"].isin(keep), "stay_id"].astype(str).tolist()
    log.info("max_stays: %d of %d stays kept (%d patients sampled with seed %d)", len(ids), len(cohort), len(keep),
             seed)
    return cohort.subset(ids)


def make_featurizer(spec: FeatureSpec, label: str | None) -> CohortFeaturizer:
    """A featurizer with the run's per-modality settings."""
    transformers = {
        "ts": TimeSeriesTransformer(hours=spec.hours, step=spec.step, min_count=spec.min_count),
        "image": ImageTransformer(size=spec.image_size),
        "codes": CodeTransformer(min_count=spec.code_min_count),
        "text": (TextTransformer(n_buckets=spec.text_buckets) if spec.text_model is None
                 else HFTokenTransformer(str(spec.text_model), max_length=spec.text_max_length)),
    }
    return CohortFeaturizer(modalities=spec.modalities, label=label, summary=spec.summary,
                            summary_stats=spec.summary_stats,
                            transformers={m: t for m, t in transformers.items() if m in spec.modalities})


def fit_hybrid(feat, spec: ModelSpec, train, val, training: TrainerConfig, console=None, head: str = "binary",
               n_outputs: int = 1, init=None, privacy: PrivacyConfig | None = None, cluster=None):
    """Build and fit the run's hybrid; ``init(model)``, when given, sets initial weights after the seeded build.
    With ``privacy`` the fit is DP-SGD on a private copy (LSTM -> DPLSTM) whose weights are copied back; the
    :class:`~healthfusion.training.privacy.DPSGD` plug-in (its ``report()``) is among ``trainer.plugins``.
    With ``cluster`` (a started :class:`~healthfusion.scale.ray.RayCluster`) the fit is data-parallel on its
    workers (the same Trainer with the DataParallel plug-in); the trainer returned then only predicts."""
    model, training = build_run_hybrid(feat, spec, training, head=head, n_outputs=n_outputs)
    if init is not None:
        init(model)
    if cluster is not None:
        if privacy is not None:
            raise ValueError("A `privacy` (DP-SGD) run cannot train data-parallel on a cluster: its accounting "
                             "assumes one process. Drop --cluster or the privacy section.")
        if console is not None:
            with console.status(f"Training data-parallel on {cluster.n} Ray workers (Ray Train starts in about "
                                "a minute) ..."):
                model, history = cluster.fit(model, train, val, training, head_kind=head)
        else:
            model, history = cluster.fit(model, train, val, training, head_kind=head)
        trainer = Trainer(training)
        trainer.head_kind = head
        return model, trainer, history
    callbacks = [ProgressCallback(console=console)] if console is not None else []
    trained, plugins = model, []
    if privacy is not None:
        plugins.append(DPSGD(privacy, len(train), training.batch_size, training.max_epochs))
        trained = make_private_model(model)
    trainer = Trainer(training, callbacks=callbacks, plugins=plugins)
    history = trainer.fit(trained, train, val, head_kind=head)
    if trained is not model:
        copy_to_plain(trained, model)
    return model, trainer, history


def featurize_run(config: RunConfig, spec: ModelSpec, main: Cohort, cohorts: dict, ids: dict, say):
    """The featurizer fitted on the training stays, each split's arrays and each split's usable rows.

    A stay with none of the model's modalities cannot be scored by the hybrid: it is left out of training and gets
    no hybrid score (evaluation counts it under models_without_score), never a default probability.
    """
    say("[bold cyan]Features[/] fitted on the training stays")
    feat = pretrained_featurizer(make_featurizer(config.features, config.data.label).fit(main, ids["train"]), spec)
    data = {s: feat.transform(cohorts[s], ids[s]) for s in ids}
    usable = {s: data[s].usable_rows() for s in ids}
    no_input = {s: int((~u).sum()) for s, u in usable.items() if (~u).any()}
    if no_input:
        say(f"      stays with none of the modalities {list(feat.transformers_)}: {no_input}")
    return feat, data, usable


@dataclass
class RunData:
    """What every kind of run needs before fitting: the run folder, the cohorts and stay ids of each split (stays
    without the label already left out and counted) and the label's spec."""

    run_dir: Path
    main: Cohort
    cohorts: dict[str, Cohort]
    ids: dict[str, list[str]]
    label: LabelSpec
    started: float
    say: Callable[[str], None]
    summary: dict = field(default_factory=dict)  # of the training stays (training_summary), saved with the model
    test_sets: dict[str, list[str]] = field(default_factory=dict)  # a list of data.test: name -> its stay ids


#: the modalities the classical baselines' engineered features are built from
BASELINE_MODALITIES = ("ts", "static")


def run_baselines(config: RunConfig, say) -> list[str]:
    """``config.baselines`` when the run has a modality they can use (``ts`` or ``static``: they work on engineered
    features of those); else none, said in one line (an image-only or text-only run needs no ``baselines: []``)."""
    if not config.baselines or set(BASELINE_MODALITIES) & set(config.features.modalities):
        return list(config.baselines)
    text = (f"baselines {config.baselines} skipped: they use engineered features of the ts/static modalities, and "
            f"this run has {config.features.modalities}")
    log.info(text)
    say(f"      {text}")
    return []


def scored_splits(ids: dict) -> list[str]:
    """The splits a run scores and writes to ``predictions.csv``: ``val`` and, when the run has test stays,
    ``test``."""
    return [s for s in ("val", "test") if s in ids]


def evaluated_split(ids: dict) -> str:
    """The split a run's comparison table is computed on: ``test``, or ``val`` in a run without a test set (its
    report says the figures are on the validation stays that chose the epoch and the calibrator)."""
    return "test" if "test" in ids else "val"


def _check_label_kind(config: RunConfig, spec_label: LabelSpec, main: Cohort) -> None:
    """Stop, naming the setting, when the label's kind cannot be trained by ``healthfusion train`` as configured."""
    kind, name = spec_label.kind, config.data.label
    if kind == "binary":
        return
    if kind not in TRAINABLE_KINDS:
        raise ValueError(
            f"`healthfusion train` predicts binary, multiclass and regression labels; label {name!r} is {kind}. "
            f"Train it with `healthfusion multitask` (binary, multiclass, multilabel, regression and clustering "
            f"tasks), or pick another label: "
            f"{[lab.name for lab in main.meta.labels if lab.kind in TRAINABLE_KINDS]}.")
    unsupported = {"ensemble": config.ensemble is not None, "reference_scores": bool(config.reference_scores),
                   "privacy": config.privacy is not None, "tuning": config.tuning is not None}
    for key, used in unsupported.items():
        if used:
            raise ValueError(f"The run config's {key!r} section works with binary labels only; label {name!r} is "
                             f"{kind}. Remove {key!r} from the config, or pick a binary label.")
    if kind == "regression" and config.training.imbalance != "none":
        raise ValueError(f"training.imbalance: {config.training.imbalance!r} needs class labels; label {name!r} is "
                         "a regression label. Use imbalance: none.")


def _strata(cohort: Cohort, spec_label: LabelSpec) -> pd.Series:
    """The label as split strata: the 0/1 label itself (binary), the class index (multiclass) or the quintile
    of the value (regression); missing labels stay missing (their own stratum)."""
    label = cohort.label(spec_label.name)
    if spec_label.kind == "binary":
        return label
    if spec_label.kind == "multiclass":
        codes = pd.Index(spec_label.classes).get_indexer(label.astype("string").astype(object))
        return pd.Series(np.where(codes >= 0, codes, np.nan), index=label.index)
    values = pd.to_numeric(label, errors="coerce")
    ranks = values.rank(method="first", pct=True)
    return np.ceil(ranks * 5).clip(1, 5)


def prepare_run(config: RunConfig, console=None, overwrite: bool = False) -> RunData:
    """Read the data, claim the run folder, split the patients and count the input rows' fate.

    The run folder must be new or empty (input data inside it, such as the demo's ``cohort/``, is kept); with
    ``overwrite`` it is cleared, but only once the data has been read, so a bad data path leaves it as it was.
    Writes ``config.yaml`` and ``accounting.csv``. Raises ValueError (SourceError, CohortError, RunFolderError) on
    a non-empty run folder without ``overwrite``, unreadable data, a label the cohort lacks, a label kind or
    setting ``healthfusion train`` cannot use, or an impossible split.
    """
    t0 = time.perf_counter()
    run_dir = Path(config.out) if config.out else Path("runs") / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    sources = [config.data, *config.data.sources, *config.data.test_sources]
    inputs = inputs_inside(run_dir, [p for spec in sources for p in (spec.path, spec.cohort)])
    check_run_folder(run_dir, overwrite, keep=inputs)

    def say(text):
        if console is not None:
            console.print(text)

    say("[bold cyan]Data[/]")
    images = "image" in config.features.modalities
    main = open_source(config.data, console, images=images)
    if config.data.max_stays is not None and len(main) > config.data.max_stays:
        n_read = len(main)
        main = sample_stays(main, config.data.max_stays, config.data.split.seed)
        say(f"      data.max_stays: {len(main)} of {n_read} stays used (whole patients, seed {config.data.split.seed})")
    spec_label = main.meta.label(config.data.label)  # fails early, naming the labels the cohort has
    _check_label_kind(config, spec_label, main)
    test_specs = config.data.test_sources
    test_cohort = open_test_sets(config, console)
    split = _split_main(config, main, spec_label, external_test=test_cohort is not None)
    claim_run_folder(run_dir, overwrite, keep=inputs)
    write_run_config(json.loads(config.model_dump_json()), run_dir)
    ids = {s: split.index[split == s].tolist() for s in ("train", "val", "test")}
    cohorts = {"train": main, "val": main, "test": main}
    test_sets = {}
    if test_cohort is not None:
        ids["test"], cohorts["test"] = test_cohort.stay_ids.tolist(), test_cohort
        _warn_shared_patients(main.stays[main.stays["stay_id"].isin(ids["train"] + ids["val"])],
                              test_cohort.stays, say)
        if len(test_specs) > 1:
            by_source = test_cohort.stays.set_index("stay_id")["source"]
            test_sets = {name: by_source.index[by_source == name].astype(str).tolist()
                         for name in source_names(test_specs)}
    if not ids["test"]:
        del ids["test"], cohorts["test"]
        say("      no test set: training and validation stays only (metrics are on the validation stays; score "
            "external data with `healthfusion predict`)")
    # stays without the label cannot be trained or scored against it; count them instead of dropping silently
    unlabeled = {}
    for s in ids:
        lab = cohorts[s].label(config.data.label).reindex(ids[s])
        unlabeled[s] = int(lab.isna().sum())
        ids[s] = lab.index[lab.notna()].tolist()
    development = main.stays[main.stays["stay_id"].isin(ids["train"] + ids["val"])]["patient_id"]
    write_development_patients(run_dir, development)  # lets predict count patients shared with training
    say("      stays: " + ", ".join(f"{s} {len(v)}" for s, v in ids.items())
        + (f" (without label, excluded: {unlabeled})" if any(unlabeled.values()) else ""))
    own = "train, val, test" if "test" in ids and test_cohort is None else "train, val"
    sources = {f"main ({own})": main}
    if test_cohort is not None:
        sources["external test"] = test_cohort
    accounting = pd.concat([c.accounting.to_frame().assign(cohort=name) for name, c in sources.items()])
    write_csv(accounting, run_dir / "accounting.csv", index=False)
    return RunData(run_dir, main, cohorts, ids, spec_label, t0, say, training_summary(main, ids["train"], spec_label),
                   test_sets=test_sets)


def _split_main(config: RunConfig, main: Cohort, spec_label: LabelSpec, external_test: bool) -> pd.Series:
    """Each stay of the main cohort's split (train/val/test) as ``data.split`` says: the cohort's own split
    column (``predefined``), or a patient-level random split stratified by the label (train/val only when there
    are external test sets).

    Raises
    ------
    CohortError
        An impossible split, a missing or unknown split column (see :func:`predefined_split`), or a predefined
        test split beside external test sets (one of them must go).
    """
    split_cfg = config.data.split
    if split_cfg.method == "predefined":
        split = predefined_split(main.stays, split_cfg.column)
        n_test = int((split == "test").sum())
        if external_test and n_test:
            raise CohortError(f"data.split: predefined gives {n_test} test stays of the cohort's own (column "
                              f"{split_cfg.column!r}) and data.test names external test sets; drop data.test, or "
                              "save the cohort without its test stays.")
        return split
    if external_test:
        frac = {"train": split_cfg.train / (split_cfg.train + split_cfg.val),
                "val": split_cfg.val / (split_cfg.train + split_cfg.val)}
    else:
        frac = {"train": split_cfg.train, "val": split_cfg.val, "test": split_cfg.test}
    return split_patients(main.stays, frac, seed=split_cfg.seed, stratify=_strata(main, spec_label))


def _warn_shared_patients(development: pd.DataFrame, external: pd.DataFrame, say) -> None:
    """Warn (log and console) when patients of the external test cohort also have training/validation stays."""
    shared = shared_patients(development, external)
    if len(shared):
        n_stays = int(external["patient_id"].astype(str).isin(shared).sum())
        text = (f"{len(shared)} patient(s) of the external test cohort ({n_stays} test stay(s)) also have stays "
                "in the training/validation cohort: the external test is not independent of training, and its "
                "metrics are optimistic for them. Remove them from one of the cohorts.")
        log.warning(text)
        say(f"[bold yellow]warning:[/] {text}")


# ------------------------------------------------------------------------------------------------ model folder card
def data_card(spec: SourceSpec, cohort: Cohort) -> dict:
    """How the stays of a model's training data were read: the source and its scoring options
    (:func:`healthfusion.data.sources.scoring_options`); for a saved cohort folder, its source and no options."""
    if getattr(spec, "sources", None):  # pooled: the first entry's reader scores new data
        card = data_card(spec.sources[0], cohort)
        return {**card, "from": f"{len(spec.sources)} pooled sources", "sources": source_names(spec.sources)}
    if spec.source is None:
        return {"source": cohort.meta.source or None, "options": {}, "from": "cohort folder"}
    return {"source": spec.source, "options": scoring_options(spec.source, spec.options), "from": "raw files"}


def _ranges(values: pd.Series, stay: pd.Series) -> dict:
    v = pd.to_numeric(values, errors="coerce")
    ok = v.notna()
    if not ok.any():
        return {"n_stays": 0}
    q = np.quantile(v[ok].to_numpy(dtype=float), [0.0, 0.01, 0.5, 0.99, 1.0])
    return {"n_stays": int(stay[ok].nunique()), "min": float(q[0]), "p01": float(q[1]), "median": float(q[2]),
            "p99": float(q[3]), "max": float(q[4])}


def training_summary(cohort: Cohort, stay_ids: list[str], label: LabelSpec) -> dict:
    """What a drift check compares new stays against: n, the label's prevalence (binary) or class counts, the
    prediction times, and per time-series variable (values observable before the prediction time) and numeric
    static column the number of stays, min, 1st percentile, median, 99th percentile and max; ``data_sha256``
    fingerprints the training stays (sorted ids with their labels)."""
    ids = [str(s) for s in stay_ids]
    y = cohort.label(label.name).reindex(ids)
    listing = "\n".join(f"{i},{v}" for i, v in sorted(zip(ids, y.astype(str), strict=True)))
    out: dict = {"n": len(ids), "data_sha256": hashlib.sha256(listing.encode()).hexdigest()}
    if label.kind == "binary":
        pos = int((pd.to_numeric(y) == 1).sum())
        out.update(n_positive=pos, prevalence=pos / len(ids) if ids else None)
    elif label.kind == "multiclass":
        out["class_counts"] = {str(k): int(v) for k, v in y.astype(str).value_counts().items()}
    times = pd.to_numeric(cohort.stays.set_index("stay_id")["prediction_time"].reindex(ids))
    out["prediction_time"] = {"min": float(times.min()), "median": float(times.median()), "max": float(times.max())}
    if cohort.has("events"):
        events = cohort.observable("events", ids)
        out["variables"] = {str(var): _ranges(g["value"], g["stay_id"]) for var, g in events.groupby("variable")}
    if cohort.has("static"):
        static = cohort.static.set_index("stay_id").reindex(ids)
        out["static"] = {str(c): _ranges(static[c], pd.Series(ids, index=static.index))
                         for c in static.columns if pd.api.types.is_numeric_dtype(static[c])}
    return out


def model_card(kind: str, config: RunConfig, prepared: RunData, featurizer: CohortFeaturizer,
               calibrator=None, operating_point: dict | None = None, scoring: dict | None = None) -> dict:
    """The card :func:`healthfusion.models.folder.write_card` saves with a run's model (see that module)."""
    threshold = float(config.evaluation.threshold)
    label = featurizer.label_spec_ or prepared.label
    return {
        "kind": kind,
        "healthfusion_version": __version__,
        "label": label.to_dict(),
        "data": data_card(config.data, prepared.main),
        "threshold": threshold,
        "risk_groups": {"rule": "high if the calibrated probability >= threshold, else low", "threshold": threshold,
                        "groups": ["low", "high"]} if label.kind == "binary" else None,
        "operating_point": operating_point,
        "calibrator": calibrator.to_dict() if calibrator is not None else None,
        "training": prepared.summary,
        "scoring": scoring or {},
    }
