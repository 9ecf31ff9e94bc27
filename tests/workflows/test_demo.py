import json

import pytest

from healthfusion.models import load_network
from healthfusion.workflows.demo import run_demo


def test_demo_runs_end_to_end_on_a_tiny_cohort(tmp_path):
    result = run_demo(out=tmp_path / "run", n_stays=300, seed=1, max_epochs=2)
    run = result["run_dir"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["comparison"]) == {"hybrid", "logistic_regression"}
    for row in metrics["comparison"].values():
        assert 0.0 <= row["auroc"] <= 1.0 and row["n"] == metrics["n"]
    assert json.loads((run / "model" / "config.json").read_text())["image"] is not None
    assert (run / "roc.png").stat().st_size > 1000 and (run / "pr.png").stat().st_size > 1000
    model, state = load_network(run / "model")
    assert state is not None and state["label"]["name"] == "mortality"
    assert set(result["table"]["metric"]) >= {"auroc", "accuracy", "precision", "recall", "f1"}


def test_demo_rejects_a_cohort_too_small_to_split(tmp_path):
    with pytest.raises(ValueError, match="at least 50 stays"):
        run_demo(out=tmp_path / "run", n_stays=10)
