import pandas as pd
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


def test_cohort_convert_writes_parquet_with_the_same_layout(tmp_path):
    raw = tmp_path / "raw"
    (raw / "icu").mkdir(parents=True)
    (raw / "icu" / "icustays.csv").write_text("stay_id,intime\n1,2150-01-01 06:00:00\n")
    result = runner.invoke(app, ["cohort", "convert", "--path", str(raw), "--out", str(tmp_path / "pq")])
    assert result.exit_code == 0, result.output
    assert "Wrote 1 Parquet tables" in result.output
    assert (tmp_path / "pq" / "icu" / "icustays.parquet").is_file()


def test_cohort_convert_keeps_codes_as_text_and_names_a_bad_value(tmp_path):
    raw = tmp_path / "raw" / "hosp"
    raw.mkdir(parents=True)
    (raw / "drgcodes.csv").write_text("subject_id,hadm_id,drg_type,drg_code,description,drg_severity,drg_mortality\n"
                                      "1,10,APR,003,ECMO,4,4\n")
    result = runner.invoke(app, ["cohort", "convert", "--path", str(raw.parent), "--out", str(tmp_path / "pq")])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(tmp_path / "pq" / "hosp" / "drgcodes.parquet")["drg_code"].tolist() == ["003"]
    (raw / "drgcodes.csv").write_text("subject_id,hadm_id,drg_type,drg_code,description,drg_severity,drg_mortality\n"
                                      "1,10,APR,003,ECMO,high,4\n")
    result = runner.invoke(app, ["cohort", "convert", "--path", str(raw.parent), "--out", str(tmp_path / "pq")])
    assert result.exit_code == 2
    assert "drgcodes.csv, column 'drg_severity', line 2: 'high' is not an integer" in " ".join(result.output.split())


def test_cohort_convert_without_csv_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["cohort", "convert", "--path", str(tmp_path), "--out", str(tmp_path / "pq")])
    assert result.exit_code == 2 and "No CSV table" in result.output
