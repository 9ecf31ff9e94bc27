import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.data.cohort import Cohort
from healthfusion.models.base import ModelLoadError
from healthfusion.models.calibration import Calibrator
from healthfusion.models.ensemble import EnsembleWeights, combine
from healthfusion.models.run_ensemble import BOOSTING, HYBRID, RunEnsemble, first_network
from healthfusion.training import Trainer
from healthfusion.workflows.common import make_featurizer
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.ensemble import cross_fitted
from healthfusion.workflows.predict import predict_source
from healthfusion.workflows.report import build_report
from healthfusion.workflows.train import run_training
from tests.workflows.conftest import rescore_test_stays

STATS = ["last", "mean", "count", "first", "slope"]


def _config(root, **extra):
    cfg = {
        "name": "ens", "out": str(root / "run"),
        "data": {"cohort": "cohort", "label": "mortality"},
        "features": {"modalities": ["ts", "static"], "summary": True, "summary_stats": STATS},
        "model": {"hidden": 8},
        "training": {"max_epochs": 2, "batch_size": 32},
        "baselines": ["gradient_boosting"],
        "baseline_params": {"gradient_boosting": {"n_estimators": 60, "learning_rate": 0.1}},
        "ensemble": {"seeds": 2},
        "evaluation": {"n_boot": 30, "audit": False},
        **extra,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root / "run.yaml"


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    synthetic.write(root / "cohort", n_stays=300, seed=2)
    return run_training(load_run_config(_config(root))), root


def test_ensemble_run_saves_one_loadable_model_folder(ensemble_run):
    run, _ = ensemble_run
    for name in ("ensemble.json", "preprocessing.json", "hybrid-seed0/model.safetensors",
                 "hybrid-seed1/model.safetensors", "gradient_boosting/model.txt"):
        assert (run / "model" / name).is_file(), name
    preds = pd.read_csv(run / "predictions.csv")
    assert {HYBRID, BOOSTING, "ensemble"} <= set(preds.columns)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ensemble"]["seeds"] == [0, 1]
    assert sum(metrics["ensemble"]["weights"]) == pytest.approx(1.0)
    assert set(json.loads((run / "history.json").read_text())["best_epoch_by_seed"]) == {"0", "1"}


def test_loaded_ensemble_reproduces_the_run_and_its_parts(ensemble_run):
    run, root = ensemble_run
    ens = RunEnsemble.load(run / "model")
    assert ens.stats == tuple(STATS)
    cohort = Cohort.load(root / "cohort")
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    test = preds[preds["split"] == "test"]
    ids = test["stay_id"].tolist()
    members = ens.member_probabilities(cohort, ids)
    # the table's hybrid and ensemble columns are calibrated on the validation stays (maps in metrics.json)
    calibrators = {k: Calibrator.from_dict(v)
                   for k, v in json.loads((run / "metrics.json").read_text())["calibrators"].items()}
    np.testing.assert_allclose(calibrators[HYBRID].transform(members[HYBRID]), test[HYBRID], atol=1e-6)
    np.testing.assert_allclose(members[BOOSTING], test[BOOSTING], atol=1e-9)
    np.testing.assert_allclose(calibrators["ensemble"].transform(ens.predict_proba(cohort, ids)), test["ensemble"],
                               atol=1e-6)
    # the hybrid member is the logit average of both networks, not one of them
    data = ens.featurizer.transform(cohort, ids, with_target=False)
    single = {str(s): Trainer().predict(net, data, head_kind="binary") for s, net in ens.networks.items()}
    assert not np.allclose(single["0"], single["1"])
    np.testing.assert_allclose(members[HYBRID], combine(single, EnsembleWeights.uniform(["0", "1"])), atol=1e-6)
    first, state = first_network(run / "model")
    assert state is not None and first.fingerprint() == ens.networks[0].fingerprint()


def test_predict_scores_raw_files_with_the_ensemble(ensemble_run, tmp_path):
    run, _ = ensemble_run
    frame, test = rescore_test_stays(run, tmp_path)  # same stays, same ensemble scores
    np.testing.assert_allclose(frame.loc[test.index, "probability"], test["ensemble"], atol=1e-6)
    assert set(frame["status"]) == {"ok"}
    assert set(frame["risk_group"]) <= {"high", "low"}


def test_report_names_the_ensemble(ensemble_run):
    run, _ = ensemble_run
    html = build_report(run).read_text()
    assert "ensemble of the hybrid fusion model" in html
    assert "gradient boosting on engineered features" in html


def test_damaged_ensemble_folders_fail_with_the_part_named(ensemble_run, tmp_path):
    run, _ = ensemble_run
    broken = tmp_path / "model"
    shutil.copytree(run / "model", broken)
    shutil.rmtree(broken / "hybrid-seed1")
    with pytest.raises(ModelLoadError, match="hybrid-seed1"):
        RunEnsemble.load(broken)
    shutil.copytree(run / "model", broken, dirs_exist_ok=True)
    spec = json.loads((broken / "ensemble.json").read_text())
    (broken / "ensemble.json").write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="version"):
        RunEnsemble.load(broken)
    (broken / "ensemble.json").write_text(json.dumps(spec))
    state = json.loads((broken / "preprocessing.json").read_text())
    state["modalities"] = ["ts"]
    (broken / "preprocessing.json").write_text(json.dumps(state))
    with pytest.raises(ModelLoadError, match="other preprocessing"):
        RunEnsemble.load(broken)


def test_cross_fitting_scores_every_stay_by_models_that_never_saw_it(tmp_path):
    cohort = synthetic.build(tmp_path / "c", n_stays=120, seed=4)
    ids = cohort.stay_ids.tolist()
    config = load_run_config(_config(tmp_path))
    fitted_on = []

    def fit_featurizer(fit_ids):
        fitted_on.append(set(fit_ids))
        return make_featurizer(config.features, "mortality").fit(cohort, fit_ids)

    def fit_network(feat, train):
        from healthfusion.workflows.modeling import build_run_hybrid

        model, training = build_run_hybrid(feat, config.model, config.training.model_copy(update={"max_epochs": 1}))
        Trainer(training).fit(model, train)
        return model

    y, oof = cross_fitted(cohort, ids, "mortality", fit_featurizer=fit_featurizer, fit_network=fit_network,
                          boosting=None, stats=STATS, folds=3, seed=0)
    assert len(fitted_on) == 3
    held_out = [set(ids) - fit for fit in fitted_on]
    assert all(held for held in held_out)
    assert sorted(s for held in held_out for s in held) == sorted(ids)  # each stay held out exactly once
    assert list(oof) == [HYBRID] and not np.isnan(oof[HYBRID]).any()
    np.testing.assert_array_equal(y, cohort.label("mortality").reindex(ids).to_numpy())


@pytest.mark.parametrize("change, message", [
    ({"ensemble": {"members": ["gradient_boosting"]}}, "must include 'hybrid'"),
    ({"baseline_params": {"gradient_boosting": {"learning_rat": 0.1}}}, "learning_rat"),
    ({"baseline_params": {"xgboost": {}}}, "unknown baseline 'xgboost'"),
    ({"features": {"summary_stats": ["last", "median"]}}, "median"),
    ({"ensemble": {"fit": "stack"}}, "ensemble.fit"),
])
def test_bad_ensemble_settings_are_config_errors(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(_config(tmp_path, **change))


def test_a_seed_bag_alone_is_saved_and_scored_as_the_hybrid(tmp_path):
    synthetic.write(tmp_path / "cohort", n_stays=200, seed=3)
    run = run_training(load_run_config(_config(tmp_path, baselines=[], baseline_params={},
                                               ensemble={"seeds": 2, "members": ["hybrid"]})))
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    assert "ensemble" not in preds.columns and BOOSTING not in preds.columns
    ens = RunEnsemble.load(run / "model")
    assert ens.boosting is None and ens.members == (HYBRID,) and sorted(ens.networks) == [0, 1]
    frame = predict_source(run / "model", "synthetic", tmp_path / "again", n_stays=200, seed=3).set_index("stay_id")
    test = preds[preds["split"] == "test"].set_index("stay_id")
    np.testing.assert_allclose(frame.loc[test.index, "probability"], test[HYBRID], atol=1e-6)


def test_stacked_weights_reach_the_saved_ensemble_and_its_card(tmp_path):
    synthetic.write(tmp_path / "cohort", n_stays=200, seed=4)
    run = run_training(load_run_config(_config(tmp_path, ensemble={"seeds": 1, "fit": "stacking"})))
    metrics = json.loads((run / "metrics.json").read_text())
    info = metrics["ensemble"]["fit_info"]
    assert info["method"] == "stacking" and set(info["coefficients"]) == {HYBRID, BOOSTING}
    total = sum(info["coefficients"].values())
    expected = [info["coefficients"][m] / total for m in metrics["ensemble"]["members"]] if total else [0.5, 0.5]
    assert metrics["ensemble"]["weights"] == pytest.approx(expected)
    assert RunEnsemble.load(run / "model").weights.weights == pytest.approx(tuple(expected))
    assert "by a non-negative logistic regression (stacking) on the validation stays" in build_report(run).read_text()
