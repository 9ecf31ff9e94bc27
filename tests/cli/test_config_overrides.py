"""--set, --out and --quick on the --config commands (train, transfer, multitask, pretrain): one shared loader."""

import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.data import synthetic
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.multitask import load_multitask_config
from healthfusion.workflows.pretrain import load_pretrain_config
from healthfusion.workflows.transfer import load_transfer_config

runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A config folder with a tiny synthetic cohort and a train config whose out: is relative to it."""
    root = tmp_path_factory.mktemp("study")
    synthetic.write(root / "configs" / "cohort", n_stays=400, seed=3)
    cfg = {"name": "tiny", "out": "runs/tiny",
           "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["ts", "static"]},
           "model": {"hidden": 8},
           "training": {"max_epochs": 3, "batch_size": 64},
           "baselines": ["logistic_regression"],
           "evaluation": {"n_boot": 30, "audit": False}}
    path = root / "configs" / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_out_is_relative_to_the_config_file_and_out_option_wins(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_run_config(study).out == (study.parent / "runs" / "tiny").resolve()
    assert load_run_config(study, out="elsewhere").out == (tmp_path / "elsewhere").resolve()


def test_overrides_are_yaml_values_at_dotted_keys_and_later_wins(study):
    config = load_run_config(study, ["training.max_epochs=7", "model.fusion=gated", "baselines=[svm]",
                                     "data.split.seed=4", "training.max_epochs=9"])
    assert config.training.max_epochs == 9 and config.model.fusion == "gated"
    assert config.baselines == ["svm"] and config.data.split.seed == 4
    assert config.model.hidden == 8  # the file's other settings stay


@pytest.mark.parametrize(("item", "needle"), [
    ("training.max_epoch=2", "did you mean 'max_epochs'"),
    ("modle.hidden=2", "did you mean 'model'"),
    ("model.hidden=0", "model.hidden"),
    ("model.hidden.width=2", "model.hidden is a value"),
    ("training.max_epochs", "--set expects KEY=VALUE"),
])
def test_bad_overrides_name_the_key(study, item, needle):
    with pytest.raises(ConfigError) as err:
        load_run_config(study, [item])
    assert needle in str(err.value)


def test_train_cli_applies_set_and_out(study, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(study), "--out", str(out), "--set", "training.max_epochs=1",
                                 "--set", "baselines=[]"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["training"]["max_epochs"] == 1 and saved["baselines"] == [] and saved["quick"] is False
    assert not (study.parent / "runs").exists()  # --out replaced the config's out:


def test_train_cli_unknown_key_exits_2_naming_it(study, tmp_path):
    result = runner.invoke(app, ["train", "-c", str(study), "--out", str(tmp_path / "r"),
                                 "--set", "evaluation.nboot=5"])
    assert result.exit_code == 2
    assert "evaluation.nboot" in result.output and "n_boot" in result.output
    assert not (tmp_path / "r").exists()


def test_train_quick_runs_end_to_end_and_is_recorded(study, tmp_path):
    out = tmp_path / "quick"
    result = runner.invoke(app, ["train", "-c", str(study), "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert "Quick smoke run" in result.output and "of 400 stays used" in result.output
    assert "PhysioNet Challenge 2012 scores" in result.output and "95% bootstrap CI over 20 resamples" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["quick"] is True and saved["training"]["max_epochs"] == 2
    assert saved["evaluation"]["n_boot"] == 20 and saved["data"]["max_stays"] == 300
    assert saved["model"]["hidden"] == 8 and saved["ensemble"] is None  # no section the real run lacks
    import pandas as pd
    preds = pd.read_csv(out / "predictions.csv")
    assert 0 < preds["stay_id"].nunique() <= 300 * 0.3 + 1  # val + test of at most 300 stays


def test_quick_set_still_wins_and_reloading_the_run_config_keeps_it(study, tmp_path):
    config = load_run_config(study, ["training.max_epochs=1"], quick=True)
    assert config.quick and config.training.max_epochs == 1 and config.evaluation.n_boot == 20
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_run_config(saved).quick and load_run_config(saved).training.max_epochs == 2


def test_quick_and_out_on_the_other_config_kinds(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "out": "sweep", "data": {"sources": [{"cohort": "c"}], "label": "mortality"},
        "domain": {"column": "site", "target": ["B"]}}))
    transfer = load_transfer_config(tmp_path / "t.yaml", ["protocol.n_boot=7"], quick=True)
    assert transfer.out == (tmp_path / "sweep").resolve() and transfer.quick
    assert transfer.training.max_epochs == 2 and transfer.finetune.max_epochs == 2
    assert transfer.finetune.lr == 3e-4  # the finetune preset, only its epochs cut
    assert transfer.protocol.seeds == [0] and transfer.protocol.n_boot == 7

    (tmp_path / "m.yaml").write_text(yaml.safe_dump({
        "data": {"cohort": "c"}, "tasks": [{"name": "mortality", "kind": "binary", "source": {"label": "mortality"}}]}))
    mt = load_multitask_config(tmp_path / "m.yaml", out=tmp_path / "mt", quick=True)
    assert mt.out == tmp_path / "mt" and mt.data.max_stays == 300 and mt.training.max_epochs == 2
    assert mt.training.patience == 5  # the multitask preset kept

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"name": "enc", "data": {"cohort": "c"}}))
    pre = load_pretrain_config(tmp_path / "p.yaml", out=tmp_path / "enc", quick=True)
    assert pre.target() == tmp_path / "enc" and pre.training.max_epochs == 2
    with pytest.raises(ConfigError, match="did you mean 'mask_rate'"):
        load_pretrain_config(tmp_path / "p.yaml", ["mask_ratio=0.2"])


def _image_free_halves(root):
    """Two cohort folders without images (pooled sources keep no image arrays) holding disjoint stays."""
    from healthfusion.data.cohort import Cohort

    full = Cohort.load(synthetic.write(root / "full", n_stays=240, seed=5))
    ids = [str(s) for s in full.stay_ids]
    for name, part in (("hosp-a", ids[:140]), ("hosp-b", ids[140:])):
        sub = full.subset(part)
        Cohort(sub.stays, meta=sub.meta, static=sub.static, events=sub.events, labels=sub.labels).save(root / name)
    return len(ids)


def test_train_pools_data_sources_with_a_source_column(tmp_path):
    n = _image_free_halves(tmp_path)
    cfg = {"data": {"sources": [{"cohort": "hosp-a"}, {"cohort": "hosp-b"}], "label": "mortality"},
           "features": {"modalities": ["ts", "static"]}, "model": {"hidden": 8},
           "training": {"max_epochs": 1, "batch_size": 64}, "baselines": [], "evaluation": {"n_boot": 10}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    import pandas as pd
    domains = pd.read_csv(tmp_path / "run" / "domains.csv")
    assert set(domains["source"]) == {"hosp-a", "hosp-b"}  # both sources reach the evaluated stays
    acc = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert [s["cohort"] for s in acc["data"]["sources"]] == ["../hosp-a", "../hosp-b"]
    assert "train" in result.output and n > 0
    report = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert report.exit_code == 0, report.output
    assert "pooled: cohort folder" in (tmp_path / "run" / "report.html").read_text()  # the model card says so


def test_data_sources_and_a_single_source_are_exclusive(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"data": {"sources": [{"cohort": "a"}], "cohort": "b", "label": "y"}}))
    with pytest.raises(ConfigError, match="either 'sources'.*move \\['cohort'\\]"):
        load_run_config(tmp_path / "run.yaml")


def test_pooled_sources_with_a_shared_stay_id_fail_naming_it(tmp_path):
    _image_free_halves(tmp_path)
    cfg = {"data": {"sources": [{"cohort": "hosp-a"}, {"cohort": "hosp-a"}], "label": "mortality"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", "-c", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "appears in more than one" in result.output


def test_config_check_takes_the_same_overrides(study):
    ok = runner.invoke(app, ["config", "check", str(study), "--set", "training.max_epochs=4"])
    assert ok.exit_code == 0 and "valid" in ok.output
    bad = runner.invoke(app, ["config", "check", str(study), "--set", "training.max_epochs=-1"])
    assert bad.exit_code == 2 and "training.max_epochs" in bad.output


def test_quick_cuts_a_tuning_search_only_where_the_config_has_one(study, tmp_path):
    assert load_run_config(study, quick=True).tuning is None  # quick switches nothing on
    raw = yaml.safe_load(study.read_text())
    raw["data"]["cohort"] = str(study.parent / "cohort")
    raw["tuning"] = {"grid": {"hidden": [4, 8, 16]}, "folds": 4}
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(raw))
    tuned = load_run_config(tmp_path / "tuned.yaml", quick=True)
    assert tuned.tuning.folds == 2 and tuned.tuning.trials == 2
