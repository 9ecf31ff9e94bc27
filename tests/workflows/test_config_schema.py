"""healthfusion config schema / check: every field of every config kind is described; files are checked."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.workflows.config import ConfigError
from healthfusion.workflows.config_schema import CONFIG_KINDS, check_config, config_schema, undescribed_fields

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


@pytest.mark.parametrize("kind", list(CONFIG_KINDS))
def test_every_field_has_a_description(kind):
    assert undescribed_fields(kind) == []
    schema = config_schema(kind)
    assert schema["additionalProperties"] is False  # unknown keys are errors, and the schema says so


@pytest.mark.parametrize("name, kind", [("physionet2012.yaml", "train"), ("transfer-physionet2012-ccu.yaml", "transfer"),
                                        ("multitask-physionet2012.yaml", "multitask")])
def test_shipped_configs_check_as_their_kind(name, kind):
    found, config = check_config(CONFIGS / name)
    assert found == kind and type(config).__name__ == config_schema(kind)["title"]


def test_cli_schema_and_check(tmp_path):
    result = runner.invoke(app, ["config", "schema", "train"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["$defs"]["TrainerConfig"]["properties"]["lr"]["description"].startswith("Adam learning rate")
    assert "description" in schema["properties"]["data"]
    bad_kind = runner.invoke(app, ["config", "schema", "trian"])
    assert bad_kind.exit_code == 2 and "Did you mean 'train'" in bad_kind.output

    good = runner.invoke(app, ["config", "check", str(CONFIGS / "physionet2012.yaml")])
    assert good.exit_code == 0 and "valid train config" in good.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: synthetic, path: x, label: death}\ntraining: {lrr: 0.1}\n")
    checked = runner.invoke(app, ["config", "check", str(bad)])
    assert checked.exit_code == 2 and "training.lrr" in checked.output and "bad.yaml" in checked.output
    with pytest.raises(ConfigError, match="does not exist"):
        check_config(tmp_path / "missing.yaml")
    forced = runner.invoke(app, ["config", "check", str(bad), "--kind", "pretrain"])
    assert forced.exit_code == 2 and "training.lrr" in forced.output
