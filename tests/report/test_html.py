"""The HTML renderer: escaped tables, embedded images, no external references."""

import re

import pandas as pd
import pytest
from matplotlib.figure import Figure

from healthfusion.report.html import image_data_uri, render_report, table_html


@pytest.fixture
def png(tmp_path):
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    path = tmp_path / "f.png"
    fig.savefig(path)
    return path


def test_render_is_self_contained_and_escaped(png):
    frame = pd.DataFrame({"group": ["<script>alert(1)</script>"], "auroc": [0.81234], "gap": [float("nan")]})
    context = {"title": "T & <b>", "subtitle": "s", "generated": "g", "card": [("Intended use", "review <flags>")],
               "sections": [{"id": "metrics", "title": "Metrics", "blocks": [
                   {"kind": "table", "html": table_html(frame)},
                   {"kind": "figure", "src": image_data_uri(png), "caption": "c"},
                   {"kind": "list", "items": ["a", "b"]}]}]}
    html = render_report(context)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "T &amp; &lt;b&gt;" in html and "review &lt;flags&gt;" in html
    assert "0.812" in html and "–" in html
    assert 'id="metrics"' in html and 'id="model-card"' in html
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:)?//', html)
    assert "@media print" in html


def test_table_truncates_with_note():
    html = table_html(pd.DataFrame({"x": range(100)}), max_rows=10)
    assert html.count("<tr") == 11 and "90 more rows" in html


def test_image_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_data_uri(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="Cannot embed"):
        image_data_uri(tmp_path / "table.csv")
