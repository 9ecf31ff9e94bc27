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

