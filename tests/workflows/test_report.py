"""The report of a demo run: every section filled from the run's outputs, unknown run-folder outputs shown, and the
page rendered by a real headless Chromium without console errors."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.report.html import image_data_uri
from healthfusion.workflows.demo import run_demo
from healthfusion.workflows.model_card import shown_path
from healthfusion.workflows.report import build_report
from healthfusion.workflows.report_sections import pseudonymise

SECTIONS = ("model-card", "data", "metrics", "curves", "baselines", "calibration", "subgroups", "explanations",
            "impact", "limitations")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = run_demo(out=out, n_stays=240, seed=2, max_epochs=2)
    return result


def test_demo_writes_a_report_with_every_section(demo_run):
    run, report = demo_run["run_dir"], demo_run["report"]
    html = report.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    audit = json.loads((run / "audit" / "audit.json").read_text())
    assert audit["n_test"] == json.loads((run / "metrics.json").read_text())["n"]
    importance = pd.read_csv(run / "explanations" / "global_importance.csv")
    assert importance["feature"].iloc[0] in html  # the top variable is shown
    assert "Assumptions" in html and "equalized_odds_difference" in html and "what-if" in html
    assert (run / "explanations" / "saliency.png").is_file() and (run / "explanations" / "attention.png").is_file()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_unknown_outputs_get_their_own_sections(demo_run, tmp_path):
    run = demo_run["run_dir"]
    (run / "transfer").mkdir(exist_ok=True)
    pd.DataFrame({"target_site": ["B"], "auroc": [0.7]}).to_csv(run / "transfer" / "transfer_metrics.csv", index=False)
    pd.DataFrame({"task": ["mortality"], "auroc": [0.8]}).to_csv(run / "multitask_tasks.csv", index=False)
    pd.DataFrame({"k": [1], "stay_id": ["S98765432"]}).to_csv(run / "something_else.csv", index=False)
    out = build_report(run, tmp_path / "r.html")
    html = out.read_text()
    assert "S98765432" not in html  # identifiers in any table are numbered
    for sid, text in (("transfer", "transfer/transfer_metrics.csv"), ("multitask", "multitask_tasks.csv"),
                      ("other", "something_else.csv")):
        assert f'id="{sid}"' in html and text in html


def test_cli_report_and_bad_folder(demo_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(demo_run["run_dir"]), "--out", str(tmp_path / "cli.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.html").stat().st_size > 10_000
    bad = runner.invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "predictions.csv" in bad.output


def _chromium(args, tmp_path):
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is required under CI=true; `make test` installs it (apt-get install chromium).")
        pytest.skip("Chromium is not installed (`make test` installs it with apt-get install chromium).")
    return CHROMIUM


def test_browser_renders_report_without_console_errors(browser, demo_run, tmp_path):
    # the check itself must see errors: a page with a failing script reports them
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><script>console.error("planted"); missingFunction();</script></body></html>')
    assert any("planted" in line for line in _console_lines(_chromium(["--dump-dom", broken.as_uri()], tmp_path).stderr))

    report = demo_run["report"]
    run = _chromium(["--dump-dom", report.resolve().as_uri()], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_lines(run.stderr) == []
    dom = run.stdout
    for section in SECTIONS:
        assert re.search(rf'<section id="{section}">\s*<h2>', dom), section
    shot = tmp_path / "report.png"
    _chromium(["--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={shot}", report.resolve().as_uri()],
              tmp_path)
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_report_from_predictions_only(tmp_path):
    """A bare run folder (predictions only, validation without deaths, no domains) still reports, and says what
    is missing instead of failing."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = (rng.uniform(size=120) < 0.3).astype(float)
    frame = pd.DataFrame({"stay_id": [f"s{i}" for i in range(160)], "split": ["val"] * 40 + ["test"] * 120,
                          "y_true": np.r_[np.zeros(40), y],
                          "hybrid": np.clip(np.r_[rng.uniform(0, 0.5, 40), 0.3 * y + rng.uniform(0, 0.6, 120)], 0, 1)})
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    html = build_report(tmp_path).read_text()
    for section in ("model-card", "data", "calibration", "subgroups", "explanations", "impact", "limitations"):
        assert f'id="{section}"' in html
    assert "No domains.csv" in html and "healthfusion explain" in html and "one outcome only" in html


def test_limitations_use_the_calibration_table_given():
    from healthfusion.workflows.report_sections import limitations

    info = {"metrics": {"n": 50, "prevalence": 0.2}, "config": {}}
    calibration = pd.DataFrame({"model": ["hybrid", "hybrid"], "metric": ["slope", "ece"], "value": [1.5, 0.05]})
    items = limitations(info, {"model": "hybrid"}, calibration)
    assert any("slope 1.50" in i and "too moderate" in i for i in items)
    assert any("50 stays and 10 events" in i for i in items)
    assert not any("slope" in i for i in limitations(info, {"model": "hybrid"}, None))


def test_section_drops_missing_figures(tmp_path):
    from healthfusion.workflows.report_sections import figure_block, section, text_block

    s = section("x", "X", [text_block("t"), figure_block(tmp_path / "missing.png", "c")])
    assert [b["kind"] for b in s["blocks"]] == ["text"]


def test_shared_outputs_hide_small_cells(demo_run):
    """Subgroup CSV, what-if JSON and the report show "<10" for counts under 10 and for every statistic of a group
    with fewer than 10 stays or events."""
    run, html = demo_run["run_dir"], demo_run["report"].read_text()
    table = pd.read_csv(run / "audit" / "subgroups.csv", dtype=str, keep_default_na=False)
    small = table[table["small_group"] == "True"]
    assert len(small) and (small["auroc"] == "<10").all() and (small["n_positive"] == "<10").all()
    assert (small["observed_rate"] == "<10").all() and (small["calibration_gap_ci_high"] == "<10").all()
    for col in ("n", "n_positive"):
        shown = pd.to_numeric(table[col], errors="coerce").dropna()
        assert (shown >= 10).all(), col
    what_if = json.loads((run / "audit" / "what_if.json").read_text())
    for key in ("n", "events", "flagged", "events_flagged"):
        assert what_if[key] == "<10" or what_if[key] >= 10, key
    assert not re.search(r"\(n=[0-9]\)", html) and "&lt;10" in html


def test_report_shows_no_stay_ids_or_absolute_paths_by_default(demo_run, tmp_path):
    run, html = demo_run["run_dir"], demo_run["report"].read_text()
    explained = pd.read_csv(run / "explanations" / "top_features.csv", dtype={"stay_id": str})["stay_id"].unique()
    assert len(explained) and not any(s in html for s in explained)
    assert "Top contributors per stay" in html and "numbered in this report" in html
    for text in (html, (run / "config.yaml").read_text()):
        assert str(run.resolve()) not in text and str(run.parent.resolve()) not in text
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["cohort"] == "cohort"
    internal = build_report(run, tmp_path / "internal.html", identifiers=True).read_text()
    assert sum(s in internal for s in explained[:6]) == min(6, len(explained))
    assert "internal use" in internal


def test_model_card_lists_the_tripod_ai_items_and_says_the_demo_is_synthetic(demo_run):
    html = demo_run["report"].read_text()
    card = html[html.index('id="model-card"'):html.index("</section>", html.index('id="model-card"'))]
    assert "TRIPOD+AI" in card and "SYNTHETIC" in card and "(synthetic data)" in html
    for item in ("Source of data", "Participants", "Outcome: definition and timing", "Predictors: definition and timing",
                 "Sample size", "Missing data", "Analysis", "Performance with confidence intervals", "Calibration",
                 "Fairness", "Limitations", "Intended use"):
        row = re.search(rf"<td>{re.escape(item)}[^<]*</td>\s*<td>([^<]+)</td>", card)
        assert row is not None and row.group(1) in ("present", "not applicable"), item
    assert card.count("<td>not applicable</td>") >= 1  # model updating, at least
    reliability = image_data_uri(demo_run["run_dir"] / "audit" / "reliability.png")
    assert html.count(reliability) == 1  # once, in the calibration section


def test_identifier_columns_are_numbered_per_report():
    frame = pd.DataFrame({"stay_id": ["S9", "S9", "S3"], "patient_id": ["P1", "P1", "P2"], "x": [1, 2, 3]})
    out = pseudonymise(frame)
    assert out["stay"].tolist() == ["1", "1", "2"] and out["patient"].tolist() == ["1", "1", "2"]
    assert "S9" not in out.to_csv() and "P1" not in out.to_csv() and out["x"].tolist() == [1, 2, 3]
    assert pseudonymise(frame, identifiers=True) is frame


def test_counts_in_the_what_if_table_are_integers(demo_run):
    html = demo_run["report"].read_text()
    for label in ("stays evaluated", "events", "stays flagged"):
        cell = re.search(rf"<td>{label}</td>\s*<td>([^<]+)</td>", html)
        assert cell is not None and re.fullmatch(r"\d+|&lt;10", cell.group(1)), (label, cell and cell.group(1))


def test_card_paths_name_no_folder_of_the_machine():
    assert shown_path("cohort") == "cohort" and shown_path("../../../data/physionet/set-a.tar.gz") == "set-a.tar.gz"
    assert shown_path("/home/someone/data/cohort") == "cohort" and shown_path(None) == "?"
