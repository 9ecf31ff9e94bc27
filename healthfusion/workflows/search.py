"""Hyperparameter search with Optuna over a run config's ``tuning:`` section.

This is the only module that imports ``optuna`` (lazily: ``pip install "healthfusion[tune]"``). It owns the
study (sampler, pruner, storage, resumption) and the trial table; the objective, patient-level K-fold CV on the
training stays with early stopping inside each fold's training part, is
:func:`healthfusion.workflows.train.tune_hybrid`'s ``cross_validate`` and is passed in.

* samplers: ``tpe`` and ``random`` draw from lists (categorical) and ranges (``{low, high, log, step}``);
  ``grid`` tries every combination of lists (the older ``tuning: {grid: ...}`` form);
* pruning: after each fold the running mean fold AUROC is reported; Optuna's median pruner stops a trial whose
  running mean is below the median of earlier trials at that fold (after 5 finished trials);
* storage: with ``tuning.storage`` (a SQLite file) the study survives the process; a re-run with the same
  study name loads it, re-runs a trial a killed or interrupted run left unfinished, and runs only the trials still missing to
  reach ``trials``. A study runs in one process at a time.
* parallel trials: with ``parallel`` (``train --cluster``: a Ray cluster, or any object with ``n`` and
  ``map(function, argument_tuples)``) Optuna runs ``n`` trials at a time (``optimize(n_jobs=n)``), each trial's
  cross-validation one task of the cluster (one CPU); the study (sampler, storage, resumption, trial table) stays
  here, in the driver. Pruning needs each fold's score while the trial runs, so parallel trials are not pruned.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from healthfusion.optional import require
from healthfusion.workflows.config import SearchRange, TuningSpec, tuned_number_type

log = logging.getLogger(__name__)
DEFAULT_TRIALS = 40
#: (model/training field values, report(fold, running_mean) -> stop?) -> held-out AUROC of each fold scored
CrossValidate = Callable[[dict[str, Any], Callable[[int, float], bool]], list[float]]


class SearchError(ValueError):
    """A stored study that does not match the config's search."""


def _optuna():
    optuna = require("optuna", extra="tune", needed_for="The run config's `tuning:` search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _suggest(trial, name: str, choice: list[Any] | SearchRange) -> Any:
    if isinstance(choice, list):
        return trial.suggest_categorical(name, choice)
    if tuned_number_type(name) is int:
        return trial.suggest_int(name, int(choice.low), int(choice.high), step=int(choice.step or 1),
                                 log=choice.log)
    return trial.suggest_float(name, choice.low, choice.high, step=choice.step, log=choice.log)


def _sampler(optuna, tuning: TuningSpec, seed: int):
    name = tuning.resolved_sampler
    if name == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in tuning.search_space.items()}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _signature(tuning: TuningSpec) -> str:
    """What a stored study must share with the config to be resumed: sampler, folds and space."""
    space = {k: v if isinstance(v, list) else v.model_dump() for k, v in tuning.search_space.items()}
    return json.dumps({"sampler": tuning.resolved_sampler, "folds": tuning.folds, "space": space}, sort_keys=True,
                      default=str)


def run_search(tuning: TuningSpec, cross_validate: CrossValidate, *, seed: int, study_name: str,
               console=None, parallel=None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run (or resume) the study of ``tuning`` and return the chosen model field values and the trial table.

    Parameters
    ----------
    tuning
        The run config's ``tuning`` section.
    cross_validate
        ``(values, report) -> fold AUROCs``: trains and scores one trial's model fields fold by fold, calling
        ``report(fold, running_mean)`` after each fold and stopping early when it returns True (pruned).
    seed
        Seed of the sampler (the run's ``training.seed``; plus the number of stored trials when resuming).
    study_name
        Study name in the storage (``tuning.study`` wins when set).
    parallel
        Run ``parallel.n`` trials at a time through ``parallel.map`` (see the module docstring); ``cross_validate``
        must then be picklable (it is sent to the workers). Default: one trial after another, in this process.

    Returns
    -------
    (values, table)
        ``values``: field -> chosen value (the best complete trial; ties go to the earlier grid point, or
        the earlier trial). ``table``: one row per trial in this study (``trial``, ``state`` complete | pruned |
        failed, each field, ``cv_auroc`` = mean held-out fold AUROC (for a pruned trial over its scored folds),
        ``cv_auroc_sd``, ``folds_scored``, ``chosen``).

    Raises
    ------
    SearchError
        A stored study of that name with another sampler, fold count or space; ``ValueError`` when no trial
        completed.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    space = tuning.search_space
    grid = tuning.resolved_sampler == "grid"
    n_grid = math.prod(len(v) for v in space.values()) if grid else 0
    target = tuning.trials or (n_grid if grid else DEFAULT_TRIALS)
    pruning = tuning.pruning if tuning.pruning is not None else not grid
    if parallel is not None and pruning:
        if tuning.pruning:
            log.warning("tuning.pruning is ignored: trials running in parallel on a cluster are not pruned")
        pruning = False
    name = tuning.study or study_name
    storage = None
    if tuning.storage is not None:
        tuning.storage.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{tuning.storage}"
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_warmup_steps=0) if pruning else optuna.pruners.NopPruner())
    signature = _signature(tuning)
    stored = study.user_attrs.get("healthfusion_search")
    if stored is None:
        study.set_user_attr("healthfusion_search", signature)
    elif stored != signature:
        raise SearchError(f"Study {name!r} in {tuning.storage} was run with another search {stored}; this config "
                          f"asks for {signature}. Set tuning.study to a new name, or restore the old settings.")
    # a resumed study draws on from a new seed: the run's seed again would repeat the first run's draws
    study.sampler = _sampler(optuna, tuning, seed + len(study.get_trials(deepcopy=False)))
    _requeue_unfinished(study, name, console)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    todo = max(target - done, 0)
    if done and console is not None:
        console.print(f"      resuming study {name!r}: {done} finished trials, {todo} to run")

    def objective(trial) -> float:
        values = {k: _suggest(trial, k, v) for k, v in space.items()}

        def report(fold: int, running_mean: float) -> bool:
            if not pruning:
                return False
            trial.report(running_mean, fold)
            return trial.should_prune()

        if parallel is not None:  # the whole trial as one task of the cluster
            scores = parallel.map(_cross_validate_unpruned, [(cross_validate, values)])[0]
        else:
            scores = cross_validate(values, report)
        trial.set_user_attr("fold_auroc", [float(s) for s in scores])
        if len(scores) < tuning.folds:
            raise optuna.TrialPruned()
        return float(np.mean(scores))

    def progress(study, trial) -> None:
        scores = trial.user_attrs.get("fold_auroc", [])
        line = (f"trial {trial.number} {trial.state.name.lower()} {trial.params} "
                f"cv_auroc={np.mean(scores) if scores else float('nan'):.4f} ({len(scores)}/{tuning.folds} folds)")
        log.info(line)
        if console is not None:
            console.print(f"      {line}")

    if todo:
        study.optimize(objective, n_trials=todo, callbacks=[progress], catch=(),
                       n_jobs=int(parallel.n) if parallel is not None else 1)
    return _choose(study, space, grid, tuning.folds)


def _cross_validate_unpruned(cross_validate: CrossValidate, values: dict[str, Any]) -> list[float]:
    """One trial in a worker: every fold scored (nothing to report to a pruner there)."""
    return [float(s) for s in cross_validate(values, lambda fold, running_mean: False)]


def _requeue_unfinished(study, name: str, console=None) -> None:
    """Queue again the values of each trial an interrupted run left running (killed) or failed (Ctrl-C, an error)
    that no finished or queued trial covers, so that a resumed grid is complete and nothing is dropped silently."""
    from optuna.trial import TrialState

    def key(params: dict) -> str:
        return json.dumps(params, sort_keys=True, default=str)

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
    covered = {key(t.params) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING))}
    covered |= {key(t.system_attrs.get("fixed_params", {})) for t in study.get_trials(
        deepcopy=False, states=(TrialState.WAITING,))}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.params and key(t.params) not in covered:
            log.warning("trial %d of study %r did not finish (interrupted or failed): its values %s run again",
                        t.number, name, t.params)
            if console is not None:
                console.print(f"      trial {t.number} did not finish (interrupted or failed): {t.params} run again")
            study.enqueue_trial(t.params, skip_if_exists=False)
            covered.add(key(t.params))


def _choose(study, space: dict, grid: bool, folds: int) -> tuple[dict[str, Any], pd.DataFrame]:
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    rows = []
    for t in study.get_trials(deepcopy=False, states=tuple(states)):
        scores = t.user_attrs.get("fold_auroc", [])
        rows.append({"trial": t.number, "state": states[t.state], **{k: t.params.get(k) for k in space},
                     "cv_auroc": float(np.mean(scores)) if scores else float("nan"),
                     "cv_auroc_sd": float(np.std(scores)) if scores else float("nan"), "folds_scored": len(scores)})
    table = pd.DataFrame(rows)
    complete = table[table["state"] == "complete"] if len(table) else table
    if not len(complete):
        raise ValueError(f"No trial of study {study.study_name!r} completed all {folds} folds; see the trial "
                         f"table, and raise tuning.trials or set tuning.pruning: false.")
    if grid:  # ties go to the earlier grid point (the order of the lists), as the grid search always did
        order = {v: i for i, v in enumerate(_grid_points(space))}
        complete = complete.assign(_at=[order.get(tuple(r[k] for k in space), len(order))
                                        for _, r in complete.iterrows()]).sort_values("_at")
    best = complete.loc[complete["cv_auroc"].idxmax()]
    table["chosen"] = table["trial"] == best["trial"]
    params = study.get_trials(deepcopy=False)[int(best["trial"])].params
    return {k: params[k] for k in space}, table


def _grid_points(space: dict) -> list[tuple]:
    from itertools import product

    return list(product(*space.values()))

