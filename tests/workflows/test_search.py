"""Optuna search of ``tuning:``: samplers, the older grid form, pruning, resumable storage, and the best config
training through ``healthfusion train`` (the objectives here are stand-ins; test_tuning_cv covers the real CV)."""

import itertools
import json

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.data import synthetic
from healthfusion.workflows.config import TuningSpec
from healthfusion.workflows.search import SearchError, run_search


def objective(score, calls):
    """A stand-in CV: fold scores from ``score(values, fold)``, reporting the running mean like tune_hybrid."""
    def cross_validate(values, report):
        calls.append(dict(values))
        scores = []
        for k in range(3):
            scores.append(score(values, k))
            if k < 2 and report(k, sum(scores) / len(scores)):
                break
        return scores
    return cross_validate


def test_older_grid_form_tries_every_point_once_and_breaks_ties_in_list_order():
    tuning = TuningSpec.model_validate({"folds": 3, "grid": {"hidden": [4, 8, 16], "dropout": [0.1, 0.3]}})
    calls = []
    # hidden 8 and 16 tie; the grid search always kept the first of equal scores in the order of the lists
    best, table = run_search(tuning, objective(lambda v, k: 0.5 + 0.1 * (v["hidden"] > 4) - v["dropout"], calls),
                             seed=0, study_name="grid")
    points = {(c["hidden"], c["dropout"]) for c in calls}
    assert len(calls) == 6 and points == set(itertools.product([4, 8, 16], [0.1, 0.3]))
    assert best == {"hidden": 8, "dropout": 0.1}
    assert (table["state"] == "complete").all() and table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "cv_auroc"].item() == pytest.approx(0.5)


def test_tpe_draws_inside_the_space_and_pruning_stops_bad_trials():
    tuning = TuningSpec.model_validate({"sampler": "random", "trials": 14, "folds": 3, "space": {
        "hidden": [4, 8], "dropout": {"low": 0.0, "high": 0.5}}})
    calls = []
    best, table = run_search(tuning, objective(lambda v, k: 1.0 - v["dropout"], calls), seed=1, study_name="s")
    assert len(table) == 14 and all(c["hidden"] in (4, 8) and 0.0 <= c["dropout"] <= 0.5 for c in calls)
    pruned = table[table["state"] == "pruned"]
    assert len(pruned) >= 1 and (pruned["folds_scored"] < 3).all()
    assert best["dropout"] == pytest.approx(table.loc[table["state"] == "complete", "dropout"].min())


def test_a_stored_study_resumes_without_rerunning_finished_trials(tmp_path):
    space = {"sampler": "tpe", "folds": 3, "storage": str(tmp_path / "s.sqlite"), "pruning": False,
             "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": {"low": 2, "high": 64}}}
    calls = []
    run_search(TuningSpec.model_validate({**space, "trials": 3}), objective(lambda v, k: v["hidden"] / 64, calls),
               seed=0, study_name="st")
    assert len(calls) == 3 and all(isinstance(c["hidden"], int) for c in calls)

    def interrupted(values, report):  # Ctrl-C in the middle of the 5th trial
        if len(calls) == 4:
            calls.append(dict(values))
            raise KeyboardInterrupt
        return objective(lambda v, k: v["hidden"] / 64, calls)(values, report)

    with pytest.raises(KeyboardInterrupt):
        run_search(TuningSpec.model_validate({**space, "trials": 6}), interrupted, seed=0, study_name="st")
    assert len(calls) == 5
    lost = calls[4]
    _, table = run_search(TuningSpec.model_validate({**space, "trials": 6}),
                          objective(lambda v, k: v["hidden"] / 64, calls), seed=0, study_name="st")
    assert len(calls) == 7 and calls[5] == lost  # the interrupted values run first, then the one missing trial
    assert (table["state"] == "complete").sum() == 6 and (table["state"] == "failed").sum() == 1
    # a killed run (no Python cleanup) leaves its trial running in the storage: the next run runs its values again
    import optuna

    study = optuna.load_study(study_name="st", storage=f"sqlite:///{tmp_path / 's.sqlite'}")
    killed = study.ask()
    killed_values = {"lr": killed.suggest_float("lr", 1e-4, 1e-2, log=True),
                     "hidden": killed.suggest_int("hidden", 2, 64)}
    _, table = run_search(TuningSpec.model_validate({**space, "trials": 7}),
                          objective(lambda v, k: v["hidden"] / 64, calls), seed=0, study_name="st")
    assert len(calls) == 8 and calls[7] == killed_values
    assert (table["state"] == "complete").sum() == 7 and (table["state"] == "failed").sum() == 2
    with pytest.raises(SearchError, match="tuning.study to a new name"):
        run_search(TuningSpec.model_validate({**space, "folds": 2}), objective(lambda v, k: 0.5, calls),
                   seed=0, study_name="st")


@pytest.mark.parametrize("tuning, message", [
    ({"space": {"hiden": [4]}}, "are not fields of .model."),
    ({"sampler": "grid", "space": {"lr": {"low": 0.1, "high": 0.2}}}, "lists of values only"),
    ({"space": {"fusion": {"low": 0, "high": 1}}}, "numeric fields only"),
    ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "low > 0"),
    ({"grid": {"hidden": [4]}, "space": {"hidden": [4]}}, "keep one"),
    ({}, "needs a `space`"),
])
def test_bad_tuning_sections_say_what_to_fix(tuning, message):
    with pytest.raises(ValidationError, match=message):
        TuningSpec.model_validate(tuning)


def test_the_best_trial_trains_through_healthfusion_train(tmp_path):
    synthetic.write(tmp_path / "cohort", n_stays=120, seed=5)
    cfg = {"name": "tiny", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["static"]}, "model": {"hidden": 4},
           "training": {"max_epochs": 1, "batch_size": 32}, "baselines": ["logistic_regression"],
           "evaluation": {"n_boot": 20, "audit": False},
           "tuning": {"sampler": "random", "trials": 2, "folds": 2, "storage": "search.sqlite",
                      "space": {"hidden": [4, 6], "dropout": {"low": 0.0, "high": 0.3}}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "run.yaml")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "run" / "tuning.csv")
    assert len(table) == 2 and table["chosen"].sum() == 1 and (tmp_path / "search.sqlite").exists()
    chosen = table[table["chosen"]].iloc[0]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())  # the final model has them
    assert saved["static"]["hidden_sizes"] == [chosen["hidden"]]
    assert saved["dropout"] == pytest.approx(chosen["dropout"])
    assert "random search" in result.output and "chosen" in result.output


def test_parallel_trials_cover_the_grid_once_and_choose_as_serial():
    from healthfusion.data.partition import Sequential

    class Tasks(Sequential):
        """Sequential(2) that records the number of trials handed to each call."""

        sizes: list = []

        def map(self, function, arguments):
            self.sizes.append(len(arguments))
            return super().map(function, arguments)

    tuning = TuningSpec.model_validate({"folds": 3, "grid": {"hidden": [4, 8, 16], "dropout": [0.1, 0.3]}})
    score = lambda v, k: 0.5 + 0.1 * (v["hidden"] > 4) - v["dropout"]  # noqa: E731
    serial_calls, parallel_calls = [], []
    serial = run_search(tuning, objective(score, serial_calls), seed=0, study_name="g")
    parallel = Tasks(2)
    best, table = run_search(tuning, objective(score, parallel_calls), seed=0, study_name="g", parallel=parallel)
    assert parallel.sizes == [1] * 6  # one task per trial
    assert sorted((c["hidden"], c["dropout"]) for c in parallel_calls) == sorted(
        itertools.product([4, 8, 16], [0.1, 0.3]))
    assert best == serial[0] == {"hidden": 8, "dropout": 0.1}
    assert (table["folds_scored"] == 3).all() and (table["state"] == "complete").all()


def test_parallel_trials_are_not_pruned():
    from healthfusion.data.partition import Sequential

    tuning = TuningSpec.model_validate({"sampler": "random", "trials": 8, "folds": 3, "pruning": True, "space": {
        "dropout": {"low": 0.0, "high": 0.5}}})
    best, table = run_search(tuning, objective(lambda v, k: 1.0 - v["dropout"], []), seed=1, study_name="p",
                             parallel=Sequential(3))
    assert len(table) == 8 and (table["state"] == "complete").all()
    assert best["dropout"] == pytest.approx(table["dropout"].min())
