"""Test-wide set-up: quiet OpenMP threads before torch loads, and a tiny hand-made multimodal cohort."""

import os

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
