import pandas as pd
from rich.console import Console

from healthfusion.cli.render import print_frame


def _printed(**kwargs) -> str:
    console = Console(record=True, width=200)
    frame = pd.DataFrame({"strategy": ["pooled"], "auroc": [0.81234], "extra": ["hidden"]})
    print_frame(console, frame, **kwargs)
    return console.export_text()


def test_print_frame_shows_every_column_by_default():
    text = _printed()
    assert "strategy" in text and "extra" in text and "0.812" in text


def test_print_frame_keeps_the_listed_columns_the_frame_has_in_that_order():
    text = _printed(columns=("auroc", "missing", "strategy"))
    assert "extra" not in text and "missing" not in text
    assert text.index("auroc") < text.index("strategy")
