"""healthfusion train with a privacy: section: DP-SGD on the hybrid (its LSTM as DPLSTM), epsilon in metrics.json
equal to Opacus's accountant for the same run, a normal model folder that predict loads."""

import json
import math

import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.predict import predict_source
from healthfusion.workflows.train import run_training

pytest.importorskip("opacus")


def test_train_with_privacy_reports_the_accountants_epsilon(tmp_path):
    from opacus.accountants import RDPAccountant

    synthetic.write(tmp_path / "cohort", n_stays=200, seed=3)
    cfg = {
        "name": "dp", "out": str(tmp_path / "run"),
        "data": {"cohort": "cohort", "label": "mortality"},
        "features": {"modalities": ["ts", "static"]},
        "model": {"hidden": 8},
        "training": {"max_epochs": 2, "batch_size": 32, "patience": None},
        "baselines": [],
        "evaluation": {"n_boot": 20, "audit": False},
        "privacy": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(tmp_path / "run.yaml"))
    privacy = json.loads((run / "metrics.json").read_text())["privacy"]
    n_train = round(privacy["sample_rate"] ** -1 * 32) if privacy["sample_rate"] < 1 else None
    assert privacy["steps"] == 2 * math.ceil(n_train / 32)
    reference = RDPAccountant()
    for _ in range(privacy["steps"]):
        reference.step(noise_multiplier=1.0, sample_rate=privacy["sample_rate"])
    assert privacy["epsilon"] == pytest.approx(reference.get_epsilon(privacy["delta"]), rel=1e-12)
    assert privacy["delta"] == pytest.approx(min(1e-5, 1 / n_train))
    scored = predict_source(run / "model", "synthetic", tmp_path / "new")
    assert scored["probability"].notna().sum() > 0

    cfg["ensemble"] = {"seeds": 2}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="remove the 'ensemble' and 'tuning' sections"):
        load_run_config(tmp_path / "bad.yaml")
