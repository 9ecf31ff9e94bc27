"""Top contributing features in /v1/predict: signed, sorted, named in the model's vocabulary, and complete."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from healthfusion.features import batch as B
from healthfusion.models.scoring import OK, load_model
from healthfusion.serve.app import create_app
from healthfusion.serve.explain import feature_names, top_contributions
from healthfusion.serve.patients import Vocabulary, cohort_patients, patients_records


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def patients(model, cohort):
    return cohort_patients(cohort, Vocabulary.of(model), [str(s) for s in cohort.stay_ids[:6]])


def test_predict_answers_each_patients_top_features(model, patients):
    client = TestClient(create_app(model, token=None))
    body = {"patients": [json.loads(p.model_dump_json()) for p in patients], "top_k": 3}
    results = client.post("/v1/predict", json=body).json()["results"]
    variables, static = feature_names(model)
    for r in results:
        assert r["status"] == OK and len(r["top_features"]) == 3
        sizes = [abs(c["attribution"]) for c in r["top_features"]]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0
        assert {c["feature"] for c in r["top_features"]} <= set(variables) | set(static)
    assert len({tuple(c["feature"] for c in r["top_features"]) for r in results}) > 1  # per patient
    empty = client.post("/v1/predict", json={"patients": [{"id": "empty"}], "top_k": 3}).json()["results"][0]
    assert empty["status"] != OK and empty["top_features"] == []  # nothing scored, nothing explained
    body["top_k"] = 0
    assert all(r["top_features"] == [] for r in client.post("/v1/predict", json=body).json()["results"])
    body["top_k"] = 51
    assert client.post("/v1/predict", json=body).status_code == 422
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"feature", "attribution"} <= set(schema["Contribution"]["properties"])


def test_attributions_sum_to_the_logit_difference_from_the_reference(model, patients):
    """Integrated Gradients is complete: all attributions of a patient add up to its logit minus the logit of the
    reference patient (standardised values and static features at zero, the training means)."""
    data = model.featurizer.transform_records(patients_records(patients, Vocabulary.of(model)))
    n_features = sum(len(names) for names in feature_names(model))
    every = top_contributions(model, data, k=n_features, steps=32)
    batch = data.batch()
    reference = {**batch, B.TS_VALUES: torch.zeros_like(batch[B.TS_VALUES]), B.STATIC: torch.zeros_like(batch[B.STATIC])}
    with torch.no_grad():
        difference = (model.network(batch)["logits"] - model.network(reference)["logits"]).reshape(-1).numpy()
    totals = np.array([sum(a for _, a in row) for row in every])
    assert all(len(row) == n_features for row in every)
    np.testing.assert_allclose(totals, difference, atol=2e-3)
    assert np.abs(difference).max() > 0.01  # the check is not vacuous
