"""A tiny trained model folder for the serve tests: synthetic cohort, a 36-hour window instead of the reader's 48
and the non-default positive class (mortality = 1 for survival)."""

import pytest
import yaml

from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.train import run_training

HOURS = 36.0
POSITIVE_CLASS = 0  # the label is survival, not death
SOURCE_OPTIONS = {"n_stays": 160, "seed": 7}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    cfg = {
        "name": "serve", "out": str(root / "run"),
        "data": {"source": "synthetic", "path": str(root / "raw"), "label": "mortality",
                 "options": {**SOURCE_OPTIONS, "hours": HOURS, "positive_class": POSITIVE_CLASS}},
        "features": {"modalities": ["ts", "static"], "hours": HOURS},
        "model": {"hidden": 8},
        "training": {"max_epochs": 1, "batch_size": 32},
        "evaluation": {"n_boot": 10, "audit": False},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return run_training(load_run_config(root / "run.yaml")) / "model"


@pytest.fixture(scope="session")
def cohort(model_dir, tmp_path_factory):
    from healthfusion.data.sources import get_source
    from healthfusion.models.scoring import load_model

    model = load_model(model_dir)
    return get_source(model.data_source)(tmp_path_factory.mktemp("again"), **SOURCE_OPTIONS, **model.data_options)
