"""pretrain job -> registry checkpoint -> `healthfusion train` with the pretrained encoder, by name and by path."""

import pytest
import torch
import yaml

from healthfusion.data import synthetic
from healthfusion.models import load_network
from healthfusion.models.registry import list_encoders, load_encoder, load_pretrained_encoder
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.pretrain import load_pretrain_config, run_pretraining
from healthfusion.workflows.train import run_training


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    synthetic.write(root / "cohort", n_stays=120, seed=3)
    (root / "held_out.txt").write_text("\n".join(f"s{i}" for i in range(5)) + "\n")
    cfg = {"name": "syn-lstm", "root": "registry", "data": {"cohort": "cohort"}, "modality": "ts",
           "exclude_stays": "held_out.txt", "features": {"hours": 24, "step": 2},
           "encoder": {"hidden": 8}, "training": {"max_epochs": 2, "batch_size": 32}}
    (root / "pre.yaml").write_text(yaml.safe_dump(cfg))
    result = run_pretraining(load_pretrain_config(root / "pre.yaml"))
    return root, result


def test_pretraining_saves_a_described_checkpoint(pretrained):
    root, result = pretrained
    assert result["path"] == root / "registry" / "syn-lstm"
    rows = list_encoders(root / "registry")
    assert [r["name"] for r in rows] == ["syn-lstm"] and rows[0]["modality"] == "ts"
    _, card, prep = load_pretrained_encoder("syn-lstm", root / "registry")
    assert card.objective == "masked_value" and card.data["labels_used"] is False
    assert card.data["n_excluded"] == len({f"s{i}" for i in range(5)} & set(synthetic_ids(root)))
    assert card.preprocessing["hours"] == 24 and card.preprocessing["variables"]
    assert prep["modalities"] == ["ts"]
    assert (result["path"] / "pretraining_history.json").is_file()


def synthetic_ids(root):
    from healthfusion.data.cohort import Cohort

    return Cohort.load(root / "cohort").stay_ids.tolist()


def test_train_with_a_linear_probe_keeps_the_encoder(pretrained, monkeypatch):
    root, result = pretrained
    monkeypatch.setenv("HEALTHFUSION_MODELS", str(root / "registry"))
    cfg = {"name": "ft", "out": str(root / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["ts", "static"], "hours": 48, "step": 1},
           "model": {"hidden": 8, "pretrained": {"ts": "syn-lstm"}},
           "training": {"max_epochs": 2, "batch_size": 32, "finetune": {"strategy": "linear_probe"}},
           "baselines": [], "evaluation": {"n_boot": 20}}
    (root / "ft.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(root / "ft.yaml"))
    model, prep = load_network(run / "model")
    encoder = load_encoder("syn-lstm")
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.encoders["ts"].state_dict()[name], value), name
    # the pretrained preprocessing (24 h window in 2 h steps) replaced the run's own (48 h, 1 h)
    assert prep["transformers"]["ts"]["params"]["hours"] == 24
    # the static encoder, trained from scratch, was not frozen
    assert model.encoders["static"].layers[0].weight.shape[0] == 8


def test_unknown_pretrained_name_is_a_clear_error(pretrained, monkeypatch):
    root, _ = pretrained
    monkeypatch.setenv("HEALTHFUSION_MODELS", str(root / "registry"))
    cfg = {"out": "bad-run", "data": {"cohort": "cohort", "label": "mortality"},
           "model": {"pretrained": {"ts": "nope"}}, "training": {"max_epochs": 1}, "baselines": []}
    (root / "bad.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="syn-lstm"):
        run_training(load_run_config(root / "bad.yaml"))


def test_pretrain_config_errors(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"data": {"cohort": "c"}}))
    with pytest.raises(ConfigError, match="name"):
        load_pretrain_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "x", "data": {"cohort": "c"}, "modality": "audio"}))
    with pytest.raises(ConfigError, match="modality"):
        load_pretrain_config(tmp_path / "b.yaml")


def test_pretrain_resume_needs_checkpoints_and_continues_from_them(pretrained, tmp_path):
    from typer.testing import CliRunner

    from healthfusion.cli.main import app

    root, first = pretrained
    cfg = yaml.safe_load((root / "pre.yaml").read_text())
    cfg.update({"out": str(tmp_path / "enc"), "name": None, "data": {"cohort": str(root / "cohort")},
                "exclude_stays": str(root / "held_out.txt"), "root": None})
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["pretrain", "--config", str(tmp_path / "pre.yaml"), "--resume"])
    assert result.exit_code == 2 and "checkpoints:" in result.output
    config = load_pretrain_config(tmp_path / "pre.yaml").model_copy(update={"checkpoints": tmp_path / "ck"})
    again = run_pretraining(config)
    assert (tmp_path / "ck").is_dir() and again["history"].train_loss == first["history"].train_loss
    resumed = run_pretraining(config.model_copy(update={"overwrite": True}), resume=True)  # restores the end
    assert resumed["history"].train_loss == first["history"].train_loss
    assert resumed["history"].best_epoch == first["history"].best_epoch


def test_multitask_model_starts_from_the_pretrained_encoder(pretrained, monkeypatch):
    """model.pretrained of a multitask config: the shared ts encoder starts with the pretrained weights and the
    features use the encoder's own preprocessing."""
    from healthfusion.workflows.multitask import MultitaskConfig, _task_specs, build_model, prepare

    root, _ = pretrained
    monkeypatch.setenv("HEALTHFUSION_MODELS", str(root / "registry"))
    config = MultitaskConfig.model_validate({
        "data": {"cohort": str(root / "cohort")},
        "features": {"modalities": ["ts", "static"]},
        "tasks": [{"name": "death", "kind": "binary", "source": {"label": "mortality"}},
                  {"name": "pheno", "kind": "clustering", "n_clusters": 2}],
        "model": {"hidden": 4, "task_dim": 4, "pretrained": {"ts": "syn-lstm"}},
    })
    prep = prepare(config)
    assert prep["featurizer"].transformers_["ts"].hours == 24  # the pretrained window, not the run's 48 h
    specs = _task_specs(config, prep["labels"], prep["classes"], prep["train_rows"])
    model = build_model(config, prep["featurizer"], specs, seed=0, loaded=prep["loaded"])
    encoder = load_encoder("syn-lstm")
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.backbone.encoders["ts"].state_dict()[name], value), name


def test_transfer_models_start_from_the_pretrained_encoder(pretrained, monkeypatch, tmp_path):
    """model.pretrained_ts of a transfer config: every model trained from scratch starts its ts encoder from the
    pretrained weights (architecture and preprocessing included)."""
    import healthfusion.workflows.transfer as tw

    root, _ = pretrained
    monkeypatch.setenv("HEALTHFUSION_MODELS", str(root / "registry"))
    encoder = load_encoder("syn-lstm")
    starts = []
    original = tw.protocol.train_model

    def spy(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.ts_encoder.state_dict().items()})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(tw.protocol, "train_model", spy)
    config = tw.TransferConfig.model_validate({
        "name": "pre", "out": str(tmp_path / "run"), "strategies": ["source_only", "pooled"],
        "data": {"sources": [{"cohort": str(root / "cohort")}], "label": "mortality"},
        "domain": {"column": "site", "target": ["C"]}, "shift": False,
        "protocol": {"sizes": [10], "seeds": [0], "headline_size": 10, "n_boot": 10},
        "model": {"static_hidden": 3, "embedding_dim": 2, "pretrained_ts": "syn-lstm"},
        "training": {"max_epochs": 1, "batch_size": 64}, "shap": {"enabled": False},
    })
    too_many = config.model_copy(update={"protocol": config.protocol.model_copy(update={"sizes": [500]})})
    with pytest.raises(ValueError, match="No target size"):
        tw.run_transfer(too_many)
    starts.clear()
    run_dir = tw.run_transfer(config, overwrite=True)  # the failed sweep's folder is not silently reused
    assert len(starts) == 2
    for start in starts:
        for name, value in encoder.state_dict().items():
            assert torch.equal(start[name], value), name
    saved, prep = load_network(run_dir / "models" / "source_only" / "seed0")
    assert saved.config.ts == encoder.config
    assert prep["featurizer"]["transformers"]["ts"]["params"]["hours"] == 24


def test_pretrain_refuses_a_non_empty_folder_before_reading_data_and_overwrite_clears_it(pretrained, tmp_path):
    """An encoder folder with files is refused before the data is read (not after training); --overwrite clears
    it, so an earlier encoder's files never stay beside the new one."""
    from typer.testing import CliRunner

    from healthfusion.cli.main import app
    from healthfusion.workflows.runfolder import RunFolderError

    root, _ = pretrained
    out = tmp_path / "enc"
    out.mkdir()
    (out / "pretraining_history.json").write_text("{}")  # an earlier encoder's
    (out / "notes.txt").write_text("old")
    cfg = yaml.safe_load((root / "pre.yaml").read_text())
    cfg.update({"out": str(out), "name": None, "data": {"cohort": str(tmp_path / "missing")},
                "exclude_stays": None, "root": None, "training": {"max_epochs": 1, "batch_size": 32}})
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RunFolderError, match=r"is not empty \(notes.txt, pretraining_history.json\)"):
        run_pretraining(load_pretrain_config(tmp_path / "pre.yaml"))
    cfg["data"] = {"cohort": str(root / "cohort")}
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["pretrain", "--config", str(tmp_path / "pre.yaml"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "notes.txt").exists() and (out / "pretraining_history.json").read_text() != "{}"
    assert load_encoder(out) is not None
