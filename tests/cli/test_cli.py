from typer.testing import CliRunner

from healthfusion.cli.main import app

runner = CliRunner()


def test_help_lists_commands_with_descriptions():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "cohort"):
        assert command in result.output


def test_cohort_build_and_describe_synthetic(tmp_path):
    out = tmp_path / "cohort"
    result = runner.invoke(app, ["cohort", "build", "--source", "synthetic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Row accounting" in result.output
    described = runner.invoke(app, ["cohort", "describe", str(out)])
    assert described.exit_code == 0, described.output
    assert "mortality" in described.output and "site" in described.output


def test_unknown_source_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["cohort", "build", "--source", "physionet", "--path", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "Unknown source 'physionet'" in result.output and "physionet2012" in result.output


def test_missing_cohort_folder_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["cohort", "describe", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
