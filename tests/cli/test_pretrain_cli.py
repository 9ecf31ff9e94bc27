from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.models.encoders import MLPEncoder, MLPEncoderConfig
from healthfusion.models.registry import save_encoder


def test_models_list_and_describe(tmp_path):
    save_encoder(MLPEncoder(MLPEncoderConfig(in_dim=3)), "tab", card={"objective": "masked_feature"}, root=tmp_path)
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--root", str(tmp_path)])
    assert listed.exit_code == 0 and "tab" in listed.output and "masked_feature" in listed.output
    described = runner.invoke(app, ["models", "describe", "tab", "--root", str(tmp_path)])
    assert described.exit_code == 0 and '"in_dim": 3' in described.output
    missing = runner.invoke(app, ["models", "describe", "nope", "--root", str(tmp_path)])
    assert missing.exit_code != 0 and "tab" in missing.output


def test_pretrain_reports_a_bad_config(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code != 0 and "does not exist" in result.output
