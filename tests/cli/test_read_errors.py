"""Unreadable raw files end, for every reader, in one line naming the file (and line) and exit status 2."""

import gzip

import pandas as pd
import pytest
from typer.testing import CliRunner

from healthfusion.cli.main import app

runner = CliRunner()


def _truncated_gz(path, text: str):
    full = gzip.compress(text.encode())
    path.write_bytes(full[: len(full) // 2])
    return path


def _mtsamples(root):
    rows = "".join(f"{i},Surgery,text of sample {i} " + "x" * 40 + "\n" for i in range(3000))
    _truncated_gz(root / "mtsamples_2018crawl.csv.gz", "sample_id,medical_specialty,transcription\n" + rows)
    return "mtsamples", root, r"mtsamples_2018crawl\.csv\.gz is truncated or corrupt"


def _diabetes(root):
    rows = "".join(f"{i},{i},Caucasian\n" for i in range(3000))
    _truncated_gz(root / "diabetic_data.csv.gz", "encounter_id,patient_nbr,race\n" + rows)
    return "diabetes130", root, r"diabetic_data\.csv\.gz is truncated or corrupt"


def _notes(root):
    (root / "notes.csv").write_bytes(b"id,time,text\na,1,ok\nb,2,caf\xe9\n")
    return "notes", root / "notes.csv", r"notes\.csv, line 3: not UTF-8 text \(byte 0xe9\)"


def _heart(root):
    (root / "processed.cleveland.data").write_bytes(b"63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n6\xe93,1\n")
    return "heart_disease", root, r"processed\.cleveland\.data, line 2: not UTF-8 text"


def _physionet(root):
    folder = root / "set-a"
    folder.mkdir()
    (folder / "132539.txt").write_bytes(b"Time,Parameter,Value\n00:00,RecordID,132539\n00:00,Ag\xe9,54\n")
    return "physionet2012", folder, r"132539\.txt, line 3: not UTF-8 text"


def _physionet_outcomes(root):
    source, folder, _ = _physionet(root)
    (folder / "132539.txt").write_text("Time,Parameter,Value\n00:00,RecordID,132539\n")
    (root / "Outcomes-a.txt").write_bytes(b"RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                                          b"132539,1\xff,1,1,1,0\n")
    return source, folder, r"Outcomes-a\.txt, line 2: not UTF-8 text"


@pytest.mark.parametrize("make", [_mtsamples, _diabetes, _notes, _heart, _physionet, _physionet_outcomes])
def test_unreadable_input_is_one_line_naming_the_file(tmp_path, make):
    source, path, message = make(tmp_path)
    result = runner.invoke(app, ["cohort", "build", "--source", source, "--path", str(path),
                                 "--out", str(tmp_path / "out"), "--option", "prediction_time=24"]
                           if source == "notes" else
                           ["cohort", "build", "--source", source, "--path", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert pd.Series([result.output]).str.contains(message).all(), result.output


def test_a_file_that_may_not_be_read_is_one_line(tmp_path, monkeypatch):
    # (tests may run as root, for whom chmod 000 changes nothing: the reader's open fails as it would for a user)
    source, path, _ = _notes(tmp_path)

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(pd, "read_csv", denied)
    result = runner.invoke(app, ["cohort", "build", "--source", source, "--path", str(path),
                                 "--out", str(tmp_path / "out"), "--option", "prediction_time=24"])
    assert result.exit_code == 2, result.output
    assert "notes.csv cannot be read: permission denied" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("exc, message", [
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), "truncated or corrupt"),
    (PermissionError(13, "Permission denied", "/data/x.csv"), "/data/x.csv: Permission denied"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"), "not UTF-8 text"),
])
def test_a_read_error_no_reader_caught_still_exits_2_not_aborted(tmp_path, monkeypatch, exc, message):
    import healthfusion.workflows.cohorts as cohorts

    def failing(**kwargs):
        raise exc

    monkeypatch.setattr(cohorts, "build_cohort", failing)
    result = runner.invoke(app, ["cohort", "build", "--source", "synthetic", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Aborted" not in result.output and "Traceback" not in result.output


def test_version():
    from healthfusion import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"healthfusion {__version__}"


def test_a_misspelt_source_option_is_one_line_with_a_suggestion(tmp_path):
    import yaml

    notes = tmp_path / "n.csv"
    notes.write_text("id,time,text,y\na,1,x,0\nb,1,z,1\n")
    built = runner.invoke(app, ["cohort", "build", "--source", "notes", "--path", str(notes),
                                "--out", str(tmp_path / "c"), "--option", "prediction_tme=3"])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "data": {
        "source": "notes", "path": str(notes), "label": "y", "options": {"prediction_tme": 3}}}))
    trained = runner.invoke(app, ["train", "--config", str(config)])
    bad_pair = runner.invoke(app, ["cohort", "build", "--source", "notes", "--path", str(notes),
                                   "--out", str(tmp_path / "c"), "--option", "prediction_time"])
    for result in (built, trained):
        assert result.exit_code == 2, result.output
        assert "Source 'notes' has no option 'prediction_tme'" in result.output
        assert "Did you mean 'prediction_time'?" in result.output
    assert bad_pair.exit_code == 2 and "--option expects KEY=VALUE" in bad_pair.output
