"""The shipped run configs of benchmarks/configs: each one passes `healthfusion config check`, and the headline
ones run end to end with `--quick` from the repository (data from ../shared/data or $HEALTHFUSION_SHARED_DATA),
then `predict` scores raw files with the saved model."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.config_schema import check_config

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"
CHECKED = sorted(p.name for p in CONFIGS.glob("*.yaml"))
TRAIN_CONFIGS = [name for name in CHECKED if check_config(CONFIGS / name)[0] == "train"]


def test_the_headline_configs_are_shipped():
    assert {"breastmnist.yaml", "physionet2012.yaml", "physionet2012-a-to-b.yaml"} <= set(TRAIN_CONFIGS)


@pytest.mark.parametrize("name", CHECKED)
def test_every_shipped_config_passes_config_check(name):
    result = runner.invoke(app, ["config", "check", str(CONFIGS / name)])
    assert result.exit_code == 0, result.output
    assert "a valid" in result.output


def test_shared_data_paths_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEALTHFUSION_SHARED_DATA", str(tmp_path / "elsewhere"))
    config = load_run_config(CONFIGS / "physionet2012.yaml")
    assert [s.path for s in config.data.sources] == [tmp_path / "elsewhere" / "physionet2012" / f"set-{x}.tar.gz"
                                                     for x in "ab"]
    monkeypatch.delenv("HEALTHFUSION_SHARED_DATA")
    default = load_run_config(CONFIGS / "breastmnist.yaml").data.path
    assert default == (CONFIGS / "../../../shared/data/medmnist/breastmnist.npz").resolve()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"data": {"source": "medmnist", "label": "label",
                                                                 "path": "${NO_SUCH_HF_VARIABLE}/x.npz"}}))
    with pytest.raises(ConfigError, match=r"NO_SUCH_HF_VARIABLE.*not set"):
        load_run_config(tmp_path / "run.yaml")


def _quick(name: str, out: Path) -> dict:
    result = runner.invoke(app, ["train", "--config", str(CONFIGS / name), "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.realdata
@pytest.mark.slow
def test_breastmnist_config_runs_quick_then_predicts(shared_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HEALTHFUSION_SHARED_DATA", str(shared_dataset("medmnist").parent))
    metrics = _quick("breastmnist.yaml", tmp_path / "run")
    assert metrics["test_set"] is False and metrics["split"] == "val"  # the shared copy has no test split
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert set(preds["split"]) == {"val"} and preds["ensemble" if "ensemble" in preds else "hybrid"].notna().all()
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    out = tmp_path / "val.csv"
    result = runner.invoke(app, ["predict", "--model", str(tmp_path / "run" / "model"), "--source", "medmnist",
                                 "--path", str(shared_dataset("medmnist") / "breastmnist.npz"), "--split", "val",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert len(scored) == 78 and scored["probability"].between(0, 1).all()


@pytest.mark.realdata
@pytest.mark.slow
def test_physionet2012_config_pools_a_and_b_and_tests_on_other_stays(shared_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HEALTHFUSION_SHARED_DATA", str(shared_dataset("physionet2012").parent))
    metrics = _quick("physionet2012.yaml", tmp_path / "run")
    assert metrics["test_set"] is True
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"stay_id": str})
    domains = pd.read_csv(tmp_path / "run" / "domains.csv", dtype={"stay_id": str})
    test = preds[preds["split"] == "test"]
    assert set(domains.loc[domains["stay_id"].isin(test["stay_id"]), "source"]) == {"set-a.tar.gz", "set-b.tar.gz"}
    assert set(metrics["challenge2012"]) >= {"ensemble", "hybrid"}
    assert metrics["challenge2012"]["ensemble"]["n"] == len(test)
    assert os.path.isfile(tmp_path / "run" / "challenge2012.csv")


@pytest.mark.slow
def test_breastmnist_config_evaluates_on_the_files_test_split_when_it_has_one(tmp_path, monkeypatch):
    """The full MedMNIST download holds a `test` split: the shipped config then reports on those images (the
    shared copy, without one, trains and validates only: the real-data test above)."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in (("train", 60), ("val", 20), ("test", 24)):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 80, (n, 28, 28)) + np.where(labels == 0, 120, 0)[:, None, None]
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = images.astype(np.uint8), labels[:, None]
    (tmp_path / "data" / "medmnist").mkdir(parents=True)
    np.savez(tmp_path / "data" / "medmnist" / "breastmnist.npz", **arrays)
    monkeypatch.setenv("HEALTHFUSION_SHARED_DATA", str(tmp_path / "data"))
    metrics = _quick("breastmnist.yaml", tmp_path / "run")
    assert metrics["test_set"] is True and metrics["split"] == "test"
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert (preds["split"] == "test").sum() == 24 and (preds["split"] == "val").sum() == 20
    shipped = load_run_config(CONFIGS / "breastmnist.yaml").model.image
    model = tmp_path / "run" / "model"
    saved = json.loads(((model / "hybrid-seed0") if (model / "hybrid-seed0").is_dir() else model)
                       .joinpath("config.json").read_text())
    assert saved["image"]["tta"] == shipped.tta  # the config's test-time augmentation is in the saved model
