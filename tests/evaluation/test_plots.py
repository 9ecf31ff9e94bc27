"""healthfusion.evaluation.plots: files are written, non-empty PNGs, without pyplot state."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from healthfusion.evaluation.plots import plot_pr, plot_roc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results():
    rng = np.random.default_rng(0)
    y = (rng.random(150) < 0.3).astype(int)
    y2 = (rng.random(100) < 0.5).astype(int)
    return {
        "lr": (y, np.clip(0.4 * y + 0.6 * rng.random(150), 0, 1)),
        "rf": (y, np.clip(0.2 * y + 0.8 * rng.random(150), 0, 1)),
        "other": (y2, np.clip(0.3 * y2 + 0.7 * rng.random(100), 0, 1)),
    }


@pytest.mark.parametrize("plot", [plot_roc, plot_pr])
def test_writes_non_empty_png(plot, results, tmp_path):
    out = plot(results, tmp_path / "nested" / "fig.png")
    assert out == tmp_path / "nested" / "fig.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


@pytest.mark.parametrize("plot", [plot_roc, plot_pr])
def test_shared_prevalence_and_string_path(plot, results, tmp_path):
    shared = {k: v for k, v in results.items() if k != "other"}
    out = plot(shared, str(tmp_path / "fig.png"))
    assert out.stat().st_size > 0


@pytest.mark.parametrize("plot", [plot_roc, plot_pr])
def test_single_class_model_is_skipped_with_warning(plot, results, tmp_path, caplog):
    results = dict(results, constant=(np.ones(20, dtype=int), np.linspace(0, 1, 20)))
    with caplog.at_level(logging.WARNING, logger="healthfusion.evaluation.plots"):
        out = plot(results, tmp_path / "fig.png")
    assert out.stat().st_size > 0
    assert "'constant'" in caplog.text


@pytest.mark.parametrize("plot", [plot_roc, plot_pr])
def test_bad_input(plot, tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        plot({}, tmp_path / "fig.png")
    with pytest.raises(ValueError, match="Model 'm'"):
        plot({"m": ([0, 1], [0.1, 2.0])}, tmp_path / "fig.png")


def test_no_pyplot_figures_left_open(results, tmp_path):
    plot_roc(results, tmp_path / "a.png")
    plot_pr(results, tmp_path / "b.png")
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
