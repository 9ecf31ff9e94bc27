"""``healthfusion transfer``: config validation, the run folder, no target test stay in training or model selection,
and reproducibility by seed."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

import healthfusion.workflows.transfer as tw
from healthfusion.data.synthetic import generate
from healthfusion.evaluation.calibration import calibration_slope_intercept, expected_calibration_error
from healthfusion.features import batch as B
from healthfusion.models.base import load_network
from healthfusion.workflows.config import ConfigError
from healthfusion.workflows.transfer import (
    STRATEGIES,
    TransferConfig,
    gains,
    load_transfer_config,
    run_transfer,
    seed_splits,
)


def _raw(cohort_dir, out, **over):
    raw = {
        "name": "tiny", "out": str(out),
        "data": {"sources": [{"cohort": str(cohort_dir)}], "label": "mortality"},
        "domain": {"column": "site", "target": ["C"]},
        "protocol": {"sizes": [30], "seeds": [0, 1], "headline_size": 30, "n_boot": 20},
        "features": {"hours": 12, "step": 4, "embed": ["sex", "admission_type"]},
        "model": {"hidden": 4, "static_hidden": 3, "embedding_dim": 2},
        "training": {"max_epochs": 2, "patience": 2, "batch_size": 64},
        "finetune": {"max_epochs": 2, "patience": 2, "batch_size": 16},
        "shap": {"n_patients": 6, "n_background": 6, "n_samples": 2, "compare": "finetune_dann_mmd"},
    }
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cohort")
    generate(320, seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def recorded_run(cohort_dir, tmp_path_factory):
    """One run of every strategy, recording the stays of every dataset handed to the training loop."""
    calls = []
    original = tw.protocol.train_model

    def spy(model, train, val, config, losses, sources=None, **kwargs):
        def stays(data):
            return None if data is None else {data.meta["stay_ids"][i] for i in data[B.INDEX]}

        sources = sources or {}
        calls.append({"train": stays(train), "val": stays(val), "source": stays(sources.get("source")),
                      "target": stays(sources.get("target")), "seed": config.seed,
                      "terms": [t.name for t in losses]})
        return original(model, train, val, config, losses, sources, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(tw.protocol, "train_model", spy)
    try:
        config = TransferConfig.model_validate(_raw(cohort_dir, tmp_path_factory.mktemp("run") / "out"))
        run_dir = run_transfer(config)
    finally:
        mp.undo()
    return config, run_dir, calls


def test_config_rejects_unknown_keys_and_names_them(tmp_path, cohort_dir):
    raw = _raw(cohort_dir, tmp_path / "o")
    raw["training"]["max_epoch"] = 3
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="training.max_epoch"):
        load_transfer_config(path)
    raw = _raw(cohort_dir, tmp_path / "o", strategies=["dann", "dann"])
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="twice"):
        load_transfer_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_transfer_config(tmp_path / "missing.yaml")


def test_config_resolves_relative_paths(tmp_path, cohort_dir):
    raw = _raw(cohort_dir, tmp_path / "o")
    raw["data"]["sources"] = [{"source": "physionet2012", "path": "data/set-a"}]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    config = load_transfer_config(tmp_path / "t.yaml")
    assert config.data.sources[0].path == (tmp_path / "data/set-a").resolve()


def test_run_writes_table_plot_models_shift_and_shap(recorded_run):
    config, run_dir, _ = recorded_run
    results = pd.read_csv(run_dir / "results.csv")
    assert set(results["strategy"]) == set(STRATEGIES)
    assert len(results) == len(STRATEGIES) * 2 and (results["status"] == "ok").all()
    for col in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "accuracy", "precision", "recall", "f1"):
        assert col in results.columns
    # calibration beside AUROC: ECE, slope and intercept of each model on the target test stays
    predictions = pd.read_csv(run_dir / "predictions.csv")
    first = results.iloc[0]
    test = predictions[(predictions["seed"] == first["seed"]) & (predictions["size"].astype(str) == str(first["size"]))
                       & (predictions["strategy"] == first["strategy"])]
    assert first["ece"] == pytest.approx(expected_calibration_error(test["y"], test["prob"]))
    assert first["cal_slope"] == pytest.approx(calibration_slope_intercept(test["y"], test["prob"])["slope"], rel=1e-4)
    assert (results["ece_ci_low"] <= results["ece"]).all() and (results["ece"] <= results["ece_ci_high"]).all()
    summary = pd.read_csv(run_dir / "summary.csv")
    assert (summary["n_seeds"] == 2).all()
    assert {"ece", "ece_seed_ci_low", "cal_slope", "cal_slope_seed_ci_high", "cal_intercept"} <= set(summary.columns)
    assert set(pd.read_csv(run_dir / "gains.csv")["bar"]) <= {"source_only", "pooled"}
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    shift = json.loads((run_dir / "shift.json").read_text())
    assert 0.0 <= shift["domain_auroc"] <= 1.0 and shift["target_values"] == ["C"]
    assert {"variable", "smd", "ks"} <= set(pd.read_csv(run_dir / "shift.csv").columns)
    model, prep = load_network(run_dir / "models" / "dann" / "seed1-n30")
    assert model.model_type == "transfer_bilstm" and prep["categorical"]["columns"] == ["sex", "admission_type"]
    load_network(run_dir / "models" / "source_only" / "seed0")
    importance = pd.read_csv(run_dir / "shap" / "global_importance.csv", index_col=0)
    assert list(importance.columns) == ["source_only", "finetune_dann_mmd"]
    assert (run_dir / "shap" / "global_importance.png").is_file()
    top = pd.read_csv(run_dir / "shap" / "top_features.csv")
    assert top.groupby(["model", "stay_id"]).size().max() == config.shap.top_k


def test_no_target_test_stay_reaches_training_or_model_selection(recorded_run):
    config, run_dir, calls = recorded_run
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"stay_id": str})
    assert ((predictions["prob"] >= 0.5) == (predictions["risk"] == "high")).all()
    assert len(calls) == 2 * (1 + (len(STRATEGIES) - 1))
    for call in calls:
        test = set(predictions.loc[predictions["seed"] == call["seed"], "stay_id"])
        assert test, "every seed scores some test stays"
        for part in ("train", "val", "source", "target"):
            assert not (call[part] or set()) & test, f"a target test stay reached {part}"
        if call["target"] is not None:  # the unlabelled target pool is target-domain training stays
            assert call["target"].isdisjoint(call["source"])
    assert {tuple(c["terms"]) for c in calls} == {("supervised",), ("supervised", "dann"), ("supervised", "mmd"),
                                                  ("supervised", "mmd", "dann")}


def test_training_sections_are_trainer_configs_and_read_earlier_keys(cohort_dir, tmp_path):
    from healthfusion.workflows.transfer import FINETUNE_PRESET

    raw = _raw(cohort_dir, tmp_path / "o")
    raw["training"] = {"max_epochs": 3, "class_weight": False, "early_stopping": False, "device": "cpu"}
    del raw["finetune"]
    config = TransferConfig.model_validate(raw)
    assert config.training.imbalance == "none" and config.training.patience is None
    assert config.training.monitor == "val_loss" and config.training.device == "cpu"
    assert config.finetune.lr == FINETUNE_PRESET["lr"] and config.finetune.max_epochs == 40
    raw["training"] = {"class_weight": True, "imbalance": "none"}
    with pytest.raises(ValueError, match="imbalance only"):
        TransferConfig.model_validate(raw)


def test_seed_splits_are_disjoint_and_nested(cohort_dir, tmp_path):
    config = TransferConfig.model_validate(_raw(cohort_dir, tmp_path / "o"))
    cohort = tw.load_cohort(config)
    split = tw.split_domains(cohort, "site", ["C"])
    ids = seed_splits(config, cohort, split, seed=3)
    test = set(ids["test"])
    train30, val30 = ids["labelled"](30)
    train_all, val_all = ids["labelled"]("all")
    assert not test & (set(train30) | set(val30) | set(ids["pool"]) | set(ids["source_train"]))
    assert set(train30) | set(val30) <= set(train_all) | set(val_all) <= set(ids["pool"])
    assert len(train30) + len(val30) == 30 and not set(train30) & set(val30)
    assert set(ids["source_train"]).isdisjoint(ids["source_val"])


def test_results_are_reproducible_by_seed(cohort_dir, tmp_path, recorded_run):
    _, first_dir, _ = recorded_run
    raw = _raw(cohort_dir, tmp_path / "again", strategies=["source_only", "finetune_dann_mmd", "dann"])
    raw["shap"]["enabled"] = False
    raw["protocol"]["sizes"] = [30, 100_000]  # larger than the target pool: skipped, recorded in run.json
    again_dir = run_transfer(TransferConfig.model_validate(raw))
    again = pd.read_csv(again_dir / "results.csv", dtype={"size": str})
    assert [s["size"] for s in json.loads((again_dir / "run.json").read_text())["skipped_sizes"]] == [100_000] * 2
    first = pd.read_csv(first_dir / "results.csv", dtype={"size": str})
    keys = ["seed", "size", "strategy"]
    merged = again.merge(first, on=keys, suffixes=("", "_first"))
    assert len(merged) == len(again) == 6
    np.testing.assert_allclose(merged["auroc"], merged["auroc_first"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged["brier"], merged["brier_first"], rtol=0, atol=1e-12)


def test_an_interrupted_sweep_resumes_to_the_same_results(cohort_dir, tmp_path, monkeypatch):
    raw = _raw(cohort_dir, tmp_path / "full", strategies=["source_only", "dann", "finetune"], shift=False)
    raw["shap"]["enabled"] = False
    raw["protocol"]["seeds"] = [0]
    full = pd.read_csv(run_transfer(TransferConfig.model_validate(raw)) / "results.csv")
    raw["out"] = str(tmp_path / "cut")
    original, calls = tw.protocol.train_model, []

    def crash_in_second_fit(model, train, val, config, *args, **kwargs):  # source_only, then finetune
        calls.append(1)
        if len(calls) < 2:
            return original(model, train, val, config, *args, **kwargs)
        original(model, train, val, config.model_copy(update={"max_epochs": 1}), *args, **kwargs)
        raise KeyboardInterrupt  # after epoch 0 of the second fit was checkpointed

    monkeypatch.setattr(tw.protocol, "train_model", crash_in_second_fit)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(TransferConfig.model_validate(raw))
    assert (tmp_path / "cut" / "checkpoints" / "finetune" / "seed0-n30" / "epoch_0000.pt").is_file()
    monkeypatch.setattr(tw.protocol, "train_model", original)
    from healthfusion.training.trainer import Trainer

    epochs, train_epoch = [], Trainer._train_epoch
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self: epochs.append(1) or train_epoch(self))
    resumed = run_transfer(TransferConfig.model_validate(raw), resume=True)
    done = full.set_index("strategy")["epochs"]
    assert len(epochs) == done["finetune"] - 1 + done["dann"]  # source_only restored, finetune from epoch 1
    again = pd.read_csv(resumed / "results.csv")
    np.testing.assert_allclose(again["auroc"], full["auroc"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(again["brier"], full["brier"], rtol=0, atol=1e-12)
    assert not (resumed / "checkpoints").exists()
    with pytest.raises(ValueError, match="out:"):
        run_transfer(TransferConfig.model_validate({**raw, "out": None}), resume=True)


def test_categorical_levels_come_from_source_stays_only(cohort_dir, tmp_path):
    config = TransferConfig.model_validate(_raw(cohort_dir, tmp_path / "o"))
    cohort = tw.load_cohort(config)
    split = tw.split_domains(cohort, "site", ["C"])
    planted = split.target_ids[0]  # a target stay (test or pool) with a level no source stay has
    static = cohort.static
    static.loc[static["stay_id"] == planted, "admission_type"] = "PLANTED"
    _, coder, data = tw.featurize(config, cohort, split)
    assert "PLANTED" not in coder.levels_["admission_type"]
    row = data.meta["stay_ids"].index(planted)
    column = coder.columns.index("admission_type")
    assert data["static_categorical"][row, column] == 0  # the fixed zero vector of unseen levels


def test_gains_pick_the_better_baseline_and_pair_by_seed():
    rows = []
    for seed, (src, pooled, dann) in enumerate([(0.70, 0.72, 0.75), (0.71, 0.74, 0.76), (0.69, 0.73, 0.74)]):
        for strategy, value in (("source_only", src), ("pooled", pooled), ("dann", dann)):
            rows.append({"seed": seed, "size": "100", "strategy": strategy, "auroc": value, "status": "ok"})
    table = gains(pd.DataFrame(rows))
    row = table.set_index("strategy").loc["dann"]
    assert row["bar"] == "pooled" and row["gain"] == pytest.approx(np.mean([0.03, 0.02, 0.01]))
    assert row["gain_ci_low"] < row["gain"] < row["gain_ci_high"] and row["wins"] == 3


def test_shap_of_a_finished_run_is_recomputed_from_its_folder(recorded_run):
    _, run_dir, _ = recorded_run
    before = pd.read_csv(run_dir / "shap" / "global_importance.csv", index_col=0)
    info = tw.explain_transfer_run(run_dir)
    after = pd.read_csv(run_dir / "shap" / "global_importance.csv", index_col=0)
    assert info["models"] == ["source_only", "finetune_dann_mmd"]
    pd.testing.assert_frame_equal(before.sort_index(), after.sort_index(), rtol=1e-4, atol=1e-7)
    assert any(name.startswith("static:") for name in after.index)


@pytest.mark.realdata
@pytest.mark.slow
def test_physionet2012_ccu_protocol_splits(shared_dataset, tmp_path):
    """The benchmark's domains on sets A + B: CCU vs the other units, nothing of the CCU test set elsewhere."""
    from pathlib import Path

    root = shared_dataset("physionet2012")
    config = load_transfer_config(Path(__file__).resolve().parents[2] / "benchmarks/configs/"
                                  "transfer-physionet2012-ccu.yaml")
    config = config.model_copy(update={"data": config.data.model_copy(update={"sources": [
        s.model_copy(update={"path": root / Path(s.path).name}) for s in config.data.sources]})})
    cohort = tw.load_cohort(config)
    split = tw.split_domains(cohort, "care_unit", ["CCU"])
    assert len(cohort) == 8000 and split.dropped_overlap == 0
    assert set(cohort.stays.set_index("stay_id").loc[split.target_ids, "care_unit"]) == {"CCU"}
    ids = seed_splits(config, cohort, split, seed=0)
    train, val = ids["labelled"](100)
    assert len(train) + len(val) == 100
    assert not set(ids["test"]) & (set(ids["pool"]) | set(ids["source_train"]) | set(ids["source_val"]))


def test_cli_writes_table_plot_and_shap_and_rejects_a_bad_config(cohort_dir, tmp_path):
    from typer.testing import CliRunner

    from healthfusion.cli.main import app

    raw = _raw(cohort_dir, tmp_path / "cli-run", strategies=["source_only", "finetune_dann_mmd"])
    raw["protocol"]["seeds"] = [0]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["transfer", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "Gain over the better of source-only and pooled" in result.output
    for name in ("results.csv", "learning_curve.png", "shap/global_importance.png", "shap/top_features.csv"):
        assert (tmp_path / "cli-run" / name).is_file(), name
    raw["domain"]["colum"] = "site"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["transfer", "--config", str(path)])
    assert result.exit_code == 2 and "domain.colum" in result.output


def test_report_of_a_transfer_run(recorded_run):
    from healthfusion.workflows.report import build_report

    _, run_dir, _ = recorded_run
    html = build_report(run_dir).read_text()
    assert "cross-domain transfer report" in html and "gains.csv" in html and "summary.csv" in html
    assert "data:image/png;base64," in html  # the SHAP figures
    # the tiny target test sets have fewer than 10 deaths: every result row is suppressed, the learning curve
    # drawn from them is left out, and no per-stay prediction is shown
    results = pd.read_csv(run_dir / "results.csv")
    assert (results["n_test_positive"] < 10).all()
    assert "&lt;10" in html and "0.5" not in _cells(html, "results.csv")
    assert "learning curve is not shown" in html and "learning_curve.png</" not in html
    assert "predictions.csv" not in html
    # the headline (gains over the bar, then the summary, each with what its columns mean) comes before every
    # other table
    body = html[html.index('<section id="headline">'):]
    assert body.index("gains.csv") < body.index("summary.csv") < body.index('<section id="results">') \
        < body.index("results.csv")
    assert "paired by seed" in html and "standardised mean difference" in html


def test_a_long_study_table_shows_its_first_rows_and_names_the_file():
    from healthfusion.workflows.report_studies import STUDY_TABLE_ROWS, _study_table

    frame = pd.DataFrame({"variable": [f"v{i}" for i in range(STUDY_TABLE_ROWS + 7)], "smd": 0.5})
    [block] = _study_table(frame, "shift.csv", cut=True)
    assert block["html"].count("<tr") == STUDY_TABLE_ROWS + 1  # header + the first rows
    assert f"The first {STUDY_TABLE_ROWS} of {STUDY_TABLE_ROWS + 7} rows" in block["caption"]
    assert block["caption"].startswith("Per input variable")
    [whole] = _study_table(frame, "gains.csv", cut=False)
    assert whole["html"].count("<tr") == STUDY_TABLE_ROWS + 8


def test_an_unknown_label_is_one_clear_line(cohort_dir, tmp_path):
    from typer.testing import CliRunner

    from healthfusion.cli.main import app

    raw = _raw(cohort_dir, tmp_path / "run")
    raw["data"]["label"] = "mortalty"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["transfer", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "has no label 'mortalty'" in result.output and "mortality" in result.output


def test_a_sweep_refuses_a_non_empty_folder_and_report_refuses_artefacts_of_other_models(recorded_run, tmp_path):
    """A second sweep into the same out: is refused before any data is read (--overwrite clears it only once the
    data has been read, so a bad data path leaves the first sweep whole); artefacts.json ties every artefact to
    the sweep's models, and the report refuses a stale file or a changed model."""
    import shutil

    from healthfusion.workflows.report import build_report
    from healthfusion.workflows.runfolder import RunFolderError

    config, run_dir, _ = recorded_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    missing = config.model_copy(update={"data": config.data.model_copy(update={
        "sources": [config.data.sources[0].model_copy(update={"cohort": tmp_path / "missing"})]})})
    with pytest.raises(RunFolderError, match="is not empty"):
        run_transfer(missing)
    with pytest.raises(ValueError, match="missing"):
        run_transfer(missing, overwrite=True)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    manifest = json.loads((run_dir / "artefacts.json").read_text())
    assert {"results.csv", "summary.csv", "gains.csv", "predictions.csv", "shap/global_importance.csv"} <= set(
        manifest["files"])
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "shap" / "stale.csv").write_text("feature\nx\n")  # left by another sweep
    with pytest.raises(RunFolderError, match="stale.csv was not written by the run"):
        build_report(copy, tmp_path / "r.html")
    (copy / "shap" / "stale.csv").unlink()
    weights = next((copy / "models").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(RunFolderError, match="is not the model the artefacts"):
        build_report(copy, tmp_path / "r.html")


def _cells(html: str, heading: str) -> str:
    """The HTML of the table under ``heading`` (up to the next heading)."""
    start = html.index(heading)
    return html[start:html.find("<h", start + len(heading))]

