"""healthfusion multitask: config validation, label extraction, all five task kinds from one config, TIM by seed."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from healthfusion.data.synthetic import generate
from healthfusion.models.base import load_network
from healthfusion.workflows.config import ConfigError
from healthfusion.workflows.multitask import (
    MultitaskConfig,
    TaskConfig,
    load_multitask_config,
    prepare,
    run_multitask,
)
from healthfusion.workflows.multitask_labels import extract_labels, icd9_group

TASKS = [
    {"name": "death", "kind": "binary", "source": {"label": "mortality"}},
    {"name": "long", "kind": "binary", "source": {"label": "los_days", "above": 3}},
    {"name": "los", "kind": "regression", "source": {"label": "los_days"}},
    {"name": "unit", "kind": "multiclass", "source": {"stays": "care_unit"}},
    {"name": "dx", "kind": "multilabel", "source": {"label": "diagnoses"}, "modalities": ["static"]},
    {"name": "pheno", "kind": "clustering", "n_clusters": 3},
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "cohort"
    generate(160, seed=0).save(path)
    return path


def config_dict(synth, out, **overrides):
    raw = {
        "name": "t", "out": str(out),
        "data": {"cohort": str(synth), "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0}},
        "features": {"modalities": ["ts", "static"], "hours": 48, "step": 8},
        "tasks": TASKS,
        "model": {"hidden": 4, "task_dim": 4},
        "training": {"max_epochs": 2, "patience": 1, "cluster_warmup_epochs": 1, "batch_size": 32},
        "n_boot": 20,
    }
    raw.update(overrides)
    return raw


@pytest.fixture(scope="module")
def full_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = MultitaskConfig.model_validate(config_dict(
        synth, out, tim={"ablation": "both"}, comparison={"single_task": True, "seeds": [0]}))
    return run_multitask(config)


def test_all_five_kinds_train_together_from_one_config(full_run):
    table = pd.read_csv(full_run / "tasks.csv")
    assert sorted(table["kind"].unique()) == ["binary", "clustering", "multiclass", "multilabel", "regression"]
    assert table["multitask"].notna().all() and table["single_mean"].notna().all()
    binary = table["kind"] == "binary"  # calibration beside AUROC, for the tasks it is defined for
    assert table.loc[binary, ["ece", "cal_slope", "cal_intercept", "ece_ci_low", "ece_ci_high"]].notna().all().all()
    assert table.loc[~binary, "ece"].isna().all()
    assert (table.loc[binary, "ece_ci_low"] <= table.loc[binary, "ece"]).all()
    per_seed = pd.read_csv(full_run / "comparison.csv")
    assert per_seed.loc[per_seed["task"].isin(table.loc[binary, "task"]), "ece"].notna().all()
    for stem in ("tim_attention", "tim_ablation", "tim_retrain"):
        tim = pd.read_csv(full_run / f"{stem}.csv", index_col=0)
        assert list(tim.index) == list(tim.columns) == [t["name"] for t in TASKS]
        assert (full_run / f"{stem}.png").stat().st_size > 0
    np.testing.assert_allclose(pd.read_csv(full_run / "tim_attention.csv", index_col=0).sum(axis=1), 1.0, atol=1e-5)
    model, state = load_network(full_run / "model")
    assert [t.kind for t in model.config.tasks] == [t["kind"] for t in TASKS]
    assert set(state) == {"featurizer", "tasks", "classes"}
    clusters = json.loads((full_run / "clusters.json").read_text())["pheno"]
    assert sum(clusters["sizes"]) == clusters["n"] == int(table.loc[table["task"] == "pheno", "n"].iloc[0])
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert set(metrics["improvement"]) == {"all_tasks", "supervised_tasks"}


def test_tim_is_reproducible_by_seed(synth, tmp_path, full_run):
    """The attention TIM of seed 0 does not depend on what else the run trains, and the CLI writes the same one."""
    path = tmp_path / "mt.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config_dict(synth, tmp_path / "cli")))
    from healthfusion.cli.main import app

    result = CliRunner().invoke(app, ["multitask", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "Run folder" in result.output
    a = pd.read_csv(full_run / "tim_attention.csv", index_col=0)
    b = pd.read_csv(tmp_path / "cli" / "tim_attention.csv", index_col=0)
    pd.testing.assert_frame_equal(a, b)


def test_config_rejects_unknown_keys_and_bad_tasks(tmp_path, synth):
    base = config_dict(synth, tmp_path)
    for bad, match in [
        ({**base, "extra": 1}, "extra"),
        ({**base, "tasks": [{**TASKS[0], "wieght": 2}]}, "wieght"),
        ({**base, "tasks": [{"name": "c", "kind": "clustering", "source": {"label": "mortality"}}]}, "without labels"),
        ({**base, "tasks": [{"name": "b", "kind": "binary"}]}, "needs a label"),
        ({**base, "tasks": [{**TASKS[0], "modalities": ["image"]}]}, "not in features.modalities"),
        ({**base, "tasks": [TASKS[0], TASKS[0]]}, "unique"),
        ({**base, "tasks": [{"name": "b", "kind": "binary", "source": {"label": "x", "stays": "y"}}]}, "exactly one"),
    ]:
        path = tmp_path / "bad.yaml"
        import yaml

        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=match):
            load_multitask_config(path)


def test_label_sources(synth):
    from healthfusion.data.cohort import Cohort

    cohort = Cohort.load(synth)
    ids = [str(s) for s in cohort.stay_ids]
    tasks = [TaskConfig.model_validate(t) for t in TASKS[:5]]
    labels, classes = extract_labels(cohort, tasks, ids)
    los = cohort.label("los_days").reindex(ids).to_numpy(dtype=float)
    np.testing.assert_array_equal(labels["long"], (los > 3).astype(np.float32))
    units = cohort.stays.set_index("stay_id")["care_unit"].reindex(ids)
    assert [classes["unit"][k] for k in labels["unit"]] == units.tolist()
    assert labels["dx"].shape == (len(ids), len(classes["dx"]))
    with pytest.raises(ValueError, match="is regression but label 'mortality' is binary"):
        extract_labels(cohort, [TaskConfig(name="x", kind="regression", source={"label": "mortality"})], ids)
    with pytest.raises(ValueError, match="no column 'nope'"):
        extract_labels(cohort, [TaskConfig(name="x", kind="multiclass", source={"stays": "nope"})], ids)


def test_a_static_target_leaves_the_inputs(synth, tmp_path):
    config = MultitaskConfig.model_validate(config_dict(
        synth, tmp_path, tasks=[{"name": "adm", "kind": "multiclass", "source": {"static": "admission_type"}}]))
    prep = prepare(config)
    names = prep["featurizer"].transformers_["static"].feature_names_
    assert prep["excluded"] == ["admission_type"]
    assert not any(n.startswith("admission_type") for n in names)


def test_icd9_groups():
    assert [icd9_group(c) for c in ("428", "250.83", "486", "008", "V57", "E885", "820", "174", "715")] == [
        "circulatory", "diabetes", "respiratory", "other", "other", "other", "injury", "neoplasms",
        "musculoskeletal"]


@pytest.mark.realdata
@pytest.mark.slow
def test_diabetes_benchmark_config_labels(shared_dataset):
    """The Diabetes 130 benchmark config: five task kinds, labels derived from the real cohort (ICD-9 groups from
    discharge codes that the admission-time features cannot see)."""
    from pathlib import Path

    config_path = Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "multitask-diabetes130.yaml"
    config = load_multitask_config(config_path)
    config.data.path = shared_dataset("uci_diabetes130")
    config = config.model_copy(update={"data": config.data.model_copy(update={"max_stays": 2000})})
    assert {t.kind for t in config.tasks} == {"binary", "multiclass", "multilabel", "regression", "clustering"}
    prep = prepare(config)
    labels, classes = prep["labels"], prep["classes"]
    dx = labels["dx_groups"]
    assert classes["dx_groups"] == ["circulatory", "respiratory", "digestive", "diabetes", "injury",
                                    "musculoskeletal", "genitourinary", "neoplasms", "other"]
    assert np.nanmean(dx[:, 0]) > 0.3  # circulatory diagnoses are the most common group in this data
    assert np.isnan(labels["time_in_hospital"]).sum() == 0
    assert prep["data"]["train"]["static"].shape[1] > 10
    assert "codes" not in prep["data"]["train"].modalities


def test_physionet_benchmark_config_keeps_icu_type_out_of_the_inputs():
    from pathlib import Path

    config_path = Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "multitask-physionet2012.yaml"
    config = load_multitask_config(config_path)
    icu = [t for t in config.tasks if t.name == "icu_type"][0]
    assert icu.source.static == "ICUType" and icu.kind == "multiclass"
    assert len(config.tasks) == 6


def test_report_of_a_multitask_run(full_run):
    from healthfusion.workflows.report import build_report

    html = build_report(full_run).read_text()
    assert "multitask (M3H) report" in html and "tasks.csv" in html and "tim_attention" in html
    assert "data:image/png;base64," in html
    table = pd.read_csv(full_run / "tasks.csv")  # a task with < 10 test stays or events shows "<10", not its value
    small = (table["n"] < 10) | (table["n_positive"] < 10)
    assert small.any() and "&lt;10" in html


def test_transformer_time_series_encoder_in_a_multitask_run(synth, tmp_path):
    config = MultitaskConfig.model_validate(config_dict(synth, tmp_path / "tf", tasks=TASKS[:3],
                                                        model={"hidden": 8, "task_dim": 4, "ts_encoder": "transformer"}))
    run = run_multitask(config)
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["ts"]["encoder"] == "transformer" and saved["ts"]["d_model"] == 8
    model, _ = load_network(run / "model")
    assert type(model.backbone.encoders["ts"]).__name__ == "TransformerEncoder"
    with pytest.raises(ValueError, match="model.hidden must be a multiple of 4; got 6"):
        MultitaskConfig.model_validate(config_dict(synth, tmp_path, model={"hidden": 6, "ts_encoder": "transformer"}))


def _with_icu_type(synth, tmp_path, derived: dict):
    """The synthetic cohort plus a static ``ICUType`` column that encodes ``care_unit`` (as PhysioNet's does)."""
    from healthfusion.data.cohort import Cohort

    cohort = Cohort.load(synth)
    units = cohort.stays.set_index("stay_id")["care_unit"]
    codes = {u: f"type{i}" for i, u in enumerate(sorted(units.unique()))}
    static = cohort.static.assign(ICUType=cohort.static["stay_id"].map(units).map(codes))
    meta = cohort.meta
    meta.feature_types = {**meta.feature_types, "ICUType": "categorical"}
    meta.derived = derived
    tables = {t: cohort.read_table(t) for t in ("events", "labels") if cohort.has(t)}
    out = tmp_path / "with-icu-type"
    Cohort(cohort.stays, static=static, meta=meta, **tables).save(out)
    return out


@pytest.mark.parametrize("derived", [{"care_unit": ["ICUType"]}, {}])  # declared by the reader, or found in data
def test_a_stays_target_takes_its_source_columns_out_of_every_input(synth, tmp_path, derived):
    cohort_dir = _with_icu_type(synth, tmp_path, derived)
    tasks = [TASKS[0], {"name": "unit", "kind": "multiclass", "source": {"stays": "care_unit"}}]
    prep = prepare(MultitaskConfig.model_validate(config_dict(cohort_dir, tmp_path, tasks=tasks)))
    names = prep["featurizer"].transformers_["static"].feature_names_
    assert prep["excluded"] == ["ICUType"]
    assert not any(n.startswith("ICUType") for n in names) and any(n.startswith("admission_type") for n in names)
    # a task on another column leaves ICUType in
    other = [TASKS[0], {"name": "adm", "kind": "multiclass", "source": {"static": "admission_type"}}]
    prep = prepare(MultitaskConfig.model_validate(config_dict(cohort_dir, tmp_path, tasks=other)))
    assert prep["excluded"] == ["admission_type"]
    assert any(n.startswith("ICUType") for n in prep["featurizer"].transformers_["static"].feature_names_)


def test_every_label_source_kind_excludes_its_inputs(synth):
    from healthfusion.data.cohort import Cohort
    from healthfusion.workflows.multitask_labels import label_source_inputs

    cohort = Cohort.load(synth)
    assert cohort.meta.derived == {"age_group": ["age"], "sex": ["sex"]}  # declared by the reader, saved
    cases = [({"static": "weight"}, ["weight"]), ({"stays": "age_group"}, ["age"]), ({"stays": "sex"}, ["sex"]),
             ({"stays": "site"}, []), ({"label": "mortality"}, []), ({"codes": "icd9_groups"}, [])]
    for source, expected in cases:
        kind = "multilabel" if "codes" in source else "multiclass"
        task = TaskConfig(name="t", kind=kind, source=source)
        assert label_source_inputs(cohort, [task]) == expected, source
    cohort.meta.derived["mortality"] = ["comorbidity_count"]  # a label a reader computed from a static column
    assert label_source_inputs(cohort, [TaskConfig(name="t", kind="binary", source={"label": "mortality"})]) == [
        "comorbidity_count"]


def test_a_codes_target_refuses_the_codes_input(synth, tmp_path):
    raw = config_dict(synth, tmp_path, tasks=[{"name": "dx", "kind": "multilabel",
                                               "source": {"codes": "icd9_groups"}}])
    raw["features"]["modalities"] = ["ts", "static", "codes"]
    with pytest.raises(ValueError, match="codes input would carry its label"):
        MultitaskConfig.model_validate(raw)


def test_a_multitask_run_refuses_a_non_empty_folder_and_records_its_artefacts(synth, full_run, tmp_path):
    """Refused before the data is read (a bad data path with --overwrite leaves the earlier run whole); every
    table is recorded as an artefact of model/, and the report refuses one that was changed."""
    import shutil

    from healthfusion.workflows.report import build_report
    from healthfusion.workflows.runfolder import RunFolderError

    before = {p: p.read_bytes() for p in full_run.rglob("*") if p.is_file()}
    config = MultitaskConfig.model_validate(config_dict(synth, full_run))
    missing = config.model_copy(update={"data": config.data.model_copy(update={"cohort": tmp_path / "missing"})})
    with pytest.raises(RunFolderError, match="is not empty"):
        run_multitask(missing)
    with pytest.raises(ValueError, match="missing"):
        run_multitask(missing, overwrite=True)
    assert {p: p.read_bytes() for p in full_run.rglob("*") if p.is_file()} == before
    files = json.loads((full_run / "artefacts.json").read_text())["files"]
    assert {"tasks.csv", "comparison.csv", "metrics.json", "tim_attention.csv", "config.yaml"} <= set(files)
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    (copy / "tasks.csv").write_text((copy / "tasks.csv").read_text().replace("binary", "binary ", 1))
    with pytest.raises(RunFolderError, match="tasks.csv was changed after the run wrote it"):
        build_report(copy, tmp_path / "r.html")
