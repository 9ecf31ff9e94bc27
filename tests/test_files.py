"""Atomic output files with the user's umask; saved weights are no more private than any other output."""

import os
import stat

import pandas as pd
import pytest

from healthfusion.files import atomic_path, write_csv, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_replace_the_file_whole_and_leave_no_temporary(tmp_path, umask_022):
    path = write_text(tmp_path / "a" / "metrics.json", '{"auroc": 0.8}')
    assert path.read_text() == '{"auroc": 0.8}' and _mode(path) == 0o644
    write_csv(pd.DataFrame({"x": [1, 2]}), tmp_path / "a" / "t.csv", index=False)
    assert pd.read_csv(tmp_path / "a" / "t.csv")["x"].tolist() == [1, 2]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.json", "t.csv"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = write_text(tmp_path / "config.yaml", "name: first\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("name: half")
        raise RuntimeError("disk full")
    assert path.read_text() == "name: first\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]



def test_display_path_shows_no_absolute_path_of_the_machine(tmp_path, monkeypatch):
    from healthfusion.files import display_path

    run = tmp_path / "runs" / "demo"
    assert display_path(run / "model" / "config.json", base=run) == "model/config.json"
    assert display_path(tmp_path / "data" / "set-a.tar.gz", base=run) == ".../set-a.tar.gz"
    assert display_path("../shared/data/set-a.tar.gz") == "../shared/data/set-a.tar.gz"  # as the user wrote it
    monkeypatch.chdir(tmp_path)
    assert display_path(run / "report.html") == "runs/demo/report.html"


def test_logs_and_console_name_files_without_the_machines_absolute_paths(tmp_path, caplog):
    """The data and output folders of a run are outside the working directory here: logs and console lines name
    the files (relative, or by name) and never the absolute path."""
    import logging

    import numpy as np
    from typer.testing import CliRunner

    from healthfusion.cli.main import app
    from healthfusion.evaluation.plots import plot_roc

    caplog.set_level(logging.INFO)
    raw = tmp_path / "raw"
    (raw / "icu").mkdir(parents=True)
    (raw / "icu" / "icustays.csv").write_text("stay_id,intime\n1,2150-01-01 06:00:00\n")
    runner = CliRunner()
    converted = runner.invoke(app, ["cohort", "convert", "--path", str(raw), "--out", str(tmp_path / "pq")])
    built = runner.invoke(app, ["cohort", "build", "--source", "synthetic", "--option", "n_stays=60",
                                "--out", str(tmp_path / "cohort")])
    assert converted.exit_code == 0 and built.exit_code == 0, converted.output + built.output
    plot_roc({"m": (np.array([0, 1, 0, 1]), np.array([0.1, 0.8, 0.3, 0.6]))}, tmp_path / "roc.png")
    messages = [r.getMessage() for r in caplog.records]
    assert any("icustays.csv" in m for m in messages) and any("roc.png" in m for m in messages)
    for text in [*messages, converted.output, built.output]:
        assert str(tmp_path) not in text.replace("\n", ""), text
