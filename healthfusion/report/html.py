"""Render a run's report as one self-contained HTML file: images embedded as base64 data URIs, inline CSS, no
script and nothing fetched from the network, so it opens offline, attaches to an e-mail and prints cleanly.

The report layer only formats: :mod:`healthfusion.workflows.report` computes and collects the content (a plain
dict, see :func:`render_report`) from a run folder.

Example::

    html = render_report({"title": "demo", "sections": [...], ...})
    write_report(context, "runs/demo/report.html")
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from healthfusion.files import write_text

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def image_data_uri(path: str | Path) -> str:
    """``data:<mime>;base64,...`` of an image file (PNG, JPEG or SVG).

    Raises
    ------
    ValueError
        If the file does not exist or has another extension.
    """
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"Cannot embed {path}: expected one of {', '.join(_MIME)}.")
    if not path.is_file():
        raise ValueError(f"Cannot embed {path}: the file does not exist.")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _fmt(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return value


def table_html(frame: pd.DataFrame, digits: int = 3, index: bool = False, max_rows: int = 60) -> Markup:
    """An escaped HTML table of ``frame`` (floats rounded to ``digits``, NaN as a dash, at most ``max_rows`` rows
    with a note on how many were left out)."""
    shown = frame.head(max_rows)
    body = shown.map(lambda v: _fmt(v, digits)).to_html(index=index, escape=True, border=0, classes="data",
                                                         na_rep="–")
    if len(frame) > max_rows:
        body += f'<p class="note">{len(frame) - max_rows} more rows in the CSV file.</p>'
    return Markup(body)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("healthfusion.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env


def render_report(context: dict) -> str:
    """The HTML text of the report.

    ``context`` holds ``title`` (str), ``subtitle`` (str), ``generated`` (str), ``card`` (list of (label, value)
    pairs for the model card), optionally ``notice`` (a warning shown first in the card, e.g. synthetic data) and
    ``card_blocks`` (table blocks under the card, e.g. the TRIPOD+AI items), and ``sections``: a list of dicts with ``id``, ``title`` and ``blocks``; a block is
    ``{"kind": "text"|"list"|"table"|"figure"|"figures", ...}`` with ``text``, ``items``, ``html`` (from
    :func:`table_html`), ``src`` (from :func:`image_data_uri`) / ``figures`` (list of ``{src, caption}``) and an
    optional ``caption``.
    """
    return _environment().get_template("report.html.j2").render(**context)


def write_report(context: dict, path: str | Path) -> Path:
    """Render ``context`` and write it to ``path`` atomically (parent folders created); return the path."""
    return write_text(path, render_report(context))
