"""``run_transfer``: the whole sweep of a transfer config, written to one run folder."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import concat_cohorts, split_domains
from healthfusion.evaluation.compare import risk_groups
from healthfusion.features import batch as B
from healthfusion.files import write_csv, write_text
from healthfusion.workflows.common import open_source
from healthfusion.workflows.runfolder import (
    check_run_folder,
    claim_run_folder,
    inputs_inside,
    record_artefacts,
    source_paths,
    write_run_config,
)
from healthfusion.workflows.transfer.config import STRATEGIES, TransferConfig
from healthfusion.workflows.transfer.explain import explain_models
from healthfusion.workflows.transfer.features import featurize, model_config, pretrained_ts
from healthfusion.workflows.transfer.protocol import Rows, predict, run_strategy, score, seed_splits
from healthfusion.workflows.transfer.summaries import gains, measure_shift, plot_learning_curve, summarise

log = logging.getLogger(__name__)

def load_cohort(config: TransferConfig, console=None) -> Cohort:
    """The configured sources read and pooled into one cohort."""
    return concat_cohorts([open_source(spec, console) for spec in config.data.sources])


def run_transfer(config: TransferConfig, console=None, resume: bool = False, overwrite: bool = False) -> Path:
    """Run the whole sweep and write the run folder (see the package docstring). Returns the folder.

    The run folder must be new or empty (data inside it is kept); ``overwrite`` clears it once the data has been
    read. Files are written atomically and recorded in ``artefacts.json`` as artefacts of the sweep's ``models/``
    (:mod:`healthfusion.workflows.runfolder`), so ``report`` refuses a folder that mixes two sweeps.

    Every fit keeps its newest epoch in ``RUN_DIR/checkpoints/`` until the sweep ends; with ``resume`` an
    interrupted sweep (same config, same ``out``) continues from there: finished fits restore their final state,
    the interrupted one goes on from its last epoch, and the results equal an uninterrupted sweep.

    Raises
    ------
    ValueError
        On bad data, domain values or label (the message names what to fix), or ``resume`` without ``out``;
        RunFolderError on a non-empty run folder without ``overwrite`` or ``resume``.
    """
    if resume and config.out is None:
        raise ValueError("--resume continues the run folder of the config's out:; set out: to the interrupted run.")
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    run_dir = Path(config.out or f"runs/transfer-{datetime.now():%Y%m%d-%H%M%S}")
    inputs = inputs_inside(run_dir, source_paths(config.data.sources))
    if not resume:  # an interrupted sweep's folder is continued, not refused
        check_run_folder(run_dir, overwrite, keep=inputs)
    cohort = load_cohort(config, console)
    cohort.meta.label(config.data.label)  # fails early, naming the labels the cohort has
    if not resume:
        claim_run_folder(run_dir, overwrite, keep=inputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(config.model_dump(mode="json"), run_dir)  # paths relative to the run folder
    d = config.domain
    split = split_domains(cohort, d.column, d.target, d.source, d.bins)
    featurizer, coder, data = featurize(config, cohort, split)
    rows = Rows(data)
    config_of_model = model_config(config, featurizer, coder)
    pretrained = pretrained_ts(config)
    ts_state = pretrained["ts"][0].state_dict() if pretrained else None
    prep = {"featurizer": featurizer.get_state(), "categorical": None if coder is None else coder.get_state(),
            "domain": split.summary()}
    y_all = cohort.label(config.data.label)
    p = config.protocol
    strategies = [s for s in STRATEGIES if s in config.strategies]
    sized = [s for s in strategies if s != "source_only"]
    need_source = any(s in strategies for s in ("source_only", "finetune", "finetune_frozen", "finetune_dann_mmd"))
    results, predictions, histories, saved, skipped = [], [], {}, {}, []
    shift_info = None
    total = len(p.seeds) * (int(need_source) + len(p.sizes) * len(sized))
    progress = _progress(console)
    task = progress.add_task("transfer", total=total) if progress else None
    with progress if progress else nullcontext():
        for seed in p.seeds:
            ids = seed_splits(config, cohort, split, seed)
            test = rows(ids["test"])
            y_test = test[B.TARGET]
            if config.shift and shift_info is None:
                static_names = (featurizer.transformers_["static"].feature_names_
                                if "static" in featurizer.transformers_ else None)
                shift_info = measure_shift(rows, split.source_ids, ids["pool"],
                                           featurizer.transformers_["ts"].variables_, static_names, seed)
            source_model = None
            base = {"source_train": ids["source_train"], "source_val": ids["source_val"], "pool": ids["pool"]}
            if need_source:
                _describe(progress, task, f"seed {seed}: source pretraining")
                t0 = time.perf_counter()
                source_model, hist = run_strategy("source_only", config, rows, {**base, "target_train": [],
                                                  "target_val": []}, config_of_model, None, seed, ts_state,
                                                  run_dir / "checkpoints" / "source_only" / f"seed{seed}", resume)
                source_seconds = time.perf_counter() - t0
                source_prob = predict(source_model, test, config.training)
                source_scores = score(y_test, source_prob, p.n_boot, seed)
                histories[f"source_only/seed{seed}"] = hist.to_dict()
                saved[("source_only", seed, None)] = source_model
                _advance(progress, task)
            for size in p.sizes:
                if size != "all" and size > len(ids["order"]):
                    log.warning("Size %s skipped for seed %d: the target pool has %d labelled stays.", size, seed,
                                len(ids["order"]))
                    skipped.append({"seed": seed, "size": size, "pool": len(ids["order"])})
                    _advance(progress, task, len(sized))
                    continue
                target_train, target_val = ids["labelled"](size)
                fold = {**base, "target_train": target_train, "target_val": target_val}
                n_labelled = len(target_train) + len(target_val)
                common = {"seed": seed, "size": str(size), "n_labelled": n_labelled,
                          "n_target_train": len(target_train), "n_target_val": len(target_val)}
                if "source_only" in strategies:
                    results.append({**common, "strategy": "source_only", "status": "ok", **source_scores,
                                    "best_epoch": hist.best_epoch, "epochs": len(hist.train_loss),
                                    "seconds": source_seconds, "domain_accuracy": None, "mmd": None})
                    predictions.append(_pred_frame(ids["test"], y_test, source_prob, "source_only", seed, size))
                for strategy in sized:
                    _describe(progress, task, f"seed {seed}, n={size}: {strategy}")
                    t0 = time.perf_counter()
                    try:
                        model, h = run_strategy(strategy, config, rows, fold, config_of_model, source_model, seed,
                                                ts_state, run_dir / "checkpoints" / strategy / f"seed{seed}-n{size}",
                                                resume)
                    except ValueError as exc:
                        log.warning("%s (seed %d, n=%s) failed: %s", strategy, seed, size, exc)
                        results.append({**common, "strategy": strategy, "status": f"failed: {exc}"})
                        _advance(progress, task)
                        continue
                    prob = predict(model, test, config.training)
                    results.append({**common, "strategy": strategy, "status": "ok", **score(y_test, prob, p.n_boot,
                                                                                              seed),
                                    "best_epoch": h.best_epoch, "epochs": len(h.train_loss),
                                    "seconds": time.perf_counter() - t0,
                                    "domain_accuracy": _last(h.metrics.get("domain_accuracy")),
                                    "mmd": _last(h.metrics.get("mmd"))})
                    predictions.append(_pred_frame(ids["test"], y_test, prob, strategy, seed, size))
                    histories[f"{strategy}/seed{seed}/n{size}"] = h.to_dict()
                    log.info("seed %d, n=%s, %s: AUROC %.3f (%d epochs, %.0f s)", seed, size, strategy,
                             results[-1]["auroc"], len(h.train_loss), results[-1]["seconds"])
                    write_csv(pd.DataFrame(results), run_dir / "results.csv", index=False)  # partial results survive
                    if size == p.headline_size:
                        saved[(strategy, seed, size)] = model
                    _advance(progress, task)
    if not predictions:
        pools = sorted({row["pool"] for row in skipped})
        raise ValueError(f"No target size of protocol.sizes {list(p.sizes)} could be trained: the target pool has "
                         f"{', '.join(map(str, pools))} labelled stays (per seed); choose sizes up to that, or 'all'.")
    results_df = pd.DataFrame(results)
    write_csv(results_df, run_dir / "results.csv", index=False)
    write_csv(pd.concat(predictions, ignore_index=True), run_dir / "predictions.csv", index=False)
    write_text(run_dir / "histories.json", json.dumps(histories, indent=1, default=_json_default))
    summary = summarise(results_df)
    write_csv(summary, run_dir / "summary.csv", index=False)
    write_csv(gains(results_df), run_dir / "gains.csv", index=False)
    if len(summary):
        plot_learning_curve(summary, run_dir / "learning_curve.png",
                            title=f"{config.name}: target {d.column} in {d.target}")
    for (strategy, seed, size), model in saved.items():
        folder = run_dir / "models" / strategy / (f"seed{seed}" if size is None else f"seed{seed}-n{size}")
        model.save_pretrained(folder, preprocessing_state=prep)
    if shift_info is not None:
        info, table = shift_info
        write_text(run_dir / "shift.json", json.dumps({**info, **split.summary()}, indent=2, default=_json_default))
        write_csv(table, run_dir / "shift.csv", index=False)
    meta = {"seconds": time.perf_counter() - started, "n_target_test": len(ids["test"]),
            "domain": split.summary(), "y_prevalence_target": float(y_all.reindex(split.target_ids).mean()),
            "skipped_sizes": skipped}
    write_text(run_dir / "run.json", json.dumps(meta, indent=2, default=_json_default))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the sweep is complete: nothing left to resume
    compare, first = config.shap.compare, p.seeds[0]
    if config.shap.enabled and ("source_only", first, None) in saved and (compare, first, p.headline_size) in saved:
        log.info("SHAP: source vs adapted model")  # the progress bar has closed: a spinner shows this last step
        with console.status("SHAP: source vs adapted model ...") if console is not None else nullcontext():
            explain_models(config, run_dir, rows, seed_splits(config, cohort, split, first),
                           {"source_only": saved[("source_only", first, None)],
                            compare: saved[(compare, first, p.headline_size)]}, featurizer, first)
    elif config.shap.enabled:
        log.warning("SHAP skipped: it needs the source model and %s at the headline size %s.", compare,
                    p.headline_size)
    record_artefacts(run_dir)
    return run_dir


# ------------------------------------------------------------------------------------------------ helpers
def _pred_frame(stay_ids, y, prob, strategy, seed, size) -> pd.DataFrame:
    return pd.DataFrame({"seed": seed, "size": str(size), "strategy": strategy, "stay_id": stay_ids,
                         "y": y, "prob": prob, "risk": risk_groups(prob, 0.5)})


def _last(values):
    return values[-1] if values else None


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def _progress(console):
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def _describe(progress, task, text: str) -> None:
    if progress is not None:
        progress.update(task, description=text)
    log.info(text)


def _advance(progress, task, steps: int = 1) -> None:
    if progress is not None:
        progress.advance(task, steps)
