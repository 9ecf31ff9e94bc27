"""Test-wide set-up: quiet OpenMP threads before torch loads, and a tiny hand-made multimodal cohort."""

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from healthfusion.data.cohort import Cohort  # noqa: E402
from healthfusion.data.schema import CohortMeta, LabelSpec  # noqa: E402


def make_tiny_cohort(n: int = 12, seed: int = 0) -> Cohort:
    """A small cohort with every table; stay ``s{i}`` belongs to patient ``p{i // 2}``; prediction time 24 h."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(n)]
    stays = pd.DataFrame({
        "stay_id": ids, "patient_id": [f"p{i // 2}" for i in range(n)], "prediction_time": 24.0,
        "site": ["A", "B"] * (n // 2), "care_unit": "MICU", "sex": ["F", "M", "M"] * (n // 3),
    })
    static = pd.DataFrame({"stay_id": ids, "age": rng.integers(20, 90, n).astype(float),
                           "admission": rng.choice(["elective", "emergency"], n)})
    static.loc[0, "age"] = np.nan
    rows = []
    for i, s in enumerate(ids):
        for t in np.sort(rng.uniform(0, 30, 12)):
            rows.append((s, t, "HR", 70 + 5 * i + rng.normal()))
        rows.append((s, 5.0, "Lactate", 1.0 + i / 10))
    events = pd.DataFrame(rows, columns=["stay_id", "time", "variable", "value"])
    codes = pd.DataFrame({"stay_id": ids, "time": 0.0, "system": "icd10", "code": ["I10", "E11"] * (n // 2)})
    notes = pd.DataFrame({"stay_id": ids[: n // 2], "time": 2.0, "text": "Patient confused, on pressors."})
    images = pd.DataFrame({"stay_id": ids[1:], "image_id": [f"im{i}" for i in range(1, n)], "time": 1.0,
                           "part": 0, "offset": np.arange(n - 1)})
    arrays = rng.integers(0, 255, (n - 1, 1, 16, 16)).astype(np.uint8)
    labels = pd.DataFrame({"stay_id": ids, "death": [0, 1] * (n // 2),
                           "phenotype": ["sepsis", "cardiac", "other"] * (n // 3),
                           "los": rng.uniform(1, 10, n)})
    meta = CohortMeta(name="tiny", labels=[LabelSpec("death", "binary"),
                                           LabelSpec("phenotype", "multiclass", ("cardiac", "other", "sepsis")),
                                           LabelSpec("los", "regression")])
    return Cohort(stays, static=static, events=events, codes=codes, notes=notes, images=images, labels=labels,
                  image_arrays=arrays, meta=meta)


@pytest.fixture
def tiny_cohort() -> Cohort:
    return make_tiny_cohort()


def shared_data_root() -> Path:
    """``$HEALTHFUSION_SHARED_DATA``, else ``<repo>/../shared/data``."""
    override = os.environ.get("HEALTHFUSION_SHARED_DATA")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[1]
    return repo.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; the test is skipped when it is absent, and fails instead under ``CI=true``."""
    root = shared_data_root()
    if not root.is_dir():
        message = (f"shared data folder {root} not found; set HEALTHFUSION_SHARED_DATA to the folder holding "
                   "physionet2012/, medmnist/, mtsamples/, uci_diabetes130/, uci_heart_disease/")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root.resolve()


@pytest.fixture(scope="session")
def shared_dataset(shared_data):
    """``shared_dataset("physionet2012")`` -> that folder of the shared data (skip or, under CI, fail if absent)."""

    def get(name: str) -> Path:
        folder = shared_data / name
        if not folder.is_dir():
            message = f"dataset folder {folder} not found in the shared data"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        return folder

    return get
