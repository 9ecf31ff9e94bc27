"""Tables written to a file or a pipe are not cut at 80 columns."""

import io

import pandas as pd

from healthfusion.cli.common import PIPE_WIDTH, make_console
from healthfusion.cli.render import print_frame


def test_a_console_that_is_not_a_terminal_is_wide(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    console = make_console()
    assert console.width == PIPE_WIDTH
    frame = pd.DataFrame({f"a rather long column name {i}": [f"value {i} (0.123-0.456)"] for i in range(5)})
    with console.capture() as captured:
        print_frame(console, frame)
    text = captured.get()
    assert all(f"a rather long column name {i}" in text and f"value {i} (0.123-0.456)" in text for i in range(5))
    assert "…" not in text and max(len(line) for line in text.splitlines()) > 80


def test_columns_still_sets_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert make_console().width == 100
