"""Run folders that cannot mix two runs: a new or empty folder (or --overwrite), an earlier run left alone by a
train that fails on its data, and report / explain / evaluate refusing artefacts that are not the model's own;
`cohort build` refuses a folder that is not a cohort."""

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.demo import run_demo
from healthfusion.workflows.report import build_report
from healthfusion.workflows.runfolder import RunFolderError
from healthfusion.workflows.train import run_training


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return run_demo(out=tmp_path_factory.mktemp("demo") / "run", n_stays=200, seed=1, max_epochs=1)["run_dir"]


def _config(tmp_path, out, cohort) -> object:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(out), "data": {"cohort": str(cohort), "label": "mortality"},
        "features": {"modalities": ["static"]}, "model": {"hidden": 8}, "training": {"max_epochs": 1},
        "baselines": [], "evaluation": {"n_boot": 20, "audit": False}}))
    return load_run_config(path)


def test_a_non_empty_folder_is_refused_and_overwrite_clears_it(demo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run's file")
    with pytest.raises(RunFolderError, match=r"is not empty \(notes.txt\).*--overwrite"):
        run_training(_config(tmp_path, out, demo / "cohort"))
    run = run_training(_config(tmp_path, out, demo / "cohort"), overwrite=True)
    assert not (run / "notes.txt").exists() and (run / "predictions.csv").is_file()
    assert (run / "artefacts.json").is_file() and not (run / "audit").exists()
    with pytest.raises(RunFolderError, match="not empty"):
        run_demo(out=demo, n_stays=60, max_epochs=1)


def test_a_train_that_fails_on_its_data_leaves_the_earlier_run_alone(demo, tmp_path):
    before = {name: (demo / name).read_bytes() for name in ("config.yaml", "accounting.csv", "metrics.json")}
    for overwrite, message in ((False, "not empty"), (True, "does not exist")):
        with pytest.raises(ValueError, match=message):
            run_training(_config(tmp_path, demo, tmp_path / "missing"), overwrite=overwrite)
    assert {name: (demo / name).read_bytes() for name in before} == before


def test_report_explain_and_evaluate_refuse_artefacts_that_are_not_the_models_own(demo, tmp_path):
    runner = CliRunner()
    mixed = tmp_path / "mixed"
    shutil.copytree(demo, mixed)
    assert build_report(mixed, tmp_path / "ok.html").is_file()  # a copied folder is still whole
    (mixed / "audit" / "stale.csv").write_text("x\n1\n")  # left by an earlier run
    with pytest.raises(RunFolderError, match=r"audit/stale.csv was not written by the run"):
        build_report(mixed, tmp_path / "r.html")
    (mixed / "audit" / "stale.csv").unlink()
    predictions = (mixed / "predictions.csv").read_text().splitlines()
    (mixed / "predictions.csv").write_text("\n".join(predictions[:-5]) + "\n")  # another run's rows
    for args in (["evaluate", str(mixed)], ["explain", str(mixed)], ["report", str(mixed)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "predictions.csv was changed after the run wrote it" in result.output, args
    shutil.copy(demo / "predictions.csv", mixed / "predictions.csv")
    (mixed / "model" / "config.json").write_text((mixed / "model" / "config.json").read_text() + " ")
    with pytest.raises(RunFolderError, match="is not the model the artefacts"):
        build_report(mixed, tmp_path / "r.html")


def test_evaluate_records_what_it_rewrites(demo, tmp_path):
    run = tmp_path / "again"
    shutil.copytree(demo, run)
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    assert build_report(run, tmp_path / "r.html").is_file()  # the rewritten comparison is the model's own


def test_cohort_build_refuses_a_folder_that_is_not_a_cohort(demo, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["cohort", "build", "--source", "synthetic", "--out", str(demo)])
    assert result.exit_code == 2 and "not a cohort folder" in result.output and "--out" in result.output
    assert (demo / "predictions.csv").is_file()
    cohort = tmp_path / "cohort"
    for _ in range(2):  # a cohort folder may be rebuilt in place
        result = runner.invoke(app, ["cohort", "build", "--source", "synthetic", "--out", str(cohort)])
        assert result.exit_code == 0, result.output


def test_config_paths_are_written_relative_to_the_run_folder(tmp_path):
    from healthfusion.workflows.runfolder import inputs_inside, write_run_config

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    dump = {"out": str(run), "data": {"cohort": str(tmp_path / "data" / "cohort"), "label": "mortality",
                                      "test": {"path": str(run / "cohort"), "cohort": None}},
            "tasks": [{"name": "a", "path": str(tmp_path / "x.csv")}], "name": "r1"}
    written = yaml.safe_load(write_run_config(dump, run).read_text())
    assert written["out"] == "." and written["data"]["cohort"] == "../../data/cohort"
    assert written["data"]["test"]["path"] == "cohort" and written["tasks"][0]["path"] == "../../x.csv"
    assert written["data"]["label"] == "mortality" and str(tmp_path) not in (run / "config.yaml").read_text()
    assert inputs_inside(run, [run / "cohort" / "x.parquet", tmp_path / "data", None, run]) == ["cohort"]


def test_artefacts_are_not_checked_without_a_record(tmp_path):
    from healthfusion.workflows.runfolder import check_artefacts, model_digest, record_artefacts

    (tmp_path / "predictions.csv").write_text("stay_id\n1\n")
    check_artefacts(tmp_path)  # no artefacts.json: a hand-made folder
    record_artefacts(tmp_path)  # no model/: nothing to tie the files to
    assert not (tmp_path / "artefacts.json").exists() and model_digest(tmp_path / "model") is None
