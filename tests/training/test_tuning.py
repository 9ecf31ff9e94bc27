import pytest

from healthfusion.training import NeuralRiskClassifier, cross_validate_params

from .conftest import TinyNet

FAST = {"max_epochs": 6, "batch_size": 32, "lr": 1e-2, "device": "cpu"}


def make_model(ds, hidden=8):
    return TinyNet(ds["static"].shape[1], hidden=hidden)


def test_cross_validate_params_returns_best_and_table(planted):
    data = planted(n=120)
    clf = NeuralRiskClassifier(make_model, trainer_config=FAST, val_fraction=0.0)
    best, table = cross_validate_params(
        clf, data, None, {"trainer_config__lr": [3e-2, 1e-5], "model_config__hidden": [8]}, cv=3, seed=0
    )
    assert best == {"model_config__hidden": 8, "trainer_config__lr": 3e-2}  # lr 1e-5 barely moves in 6 epochs
    assert len(table) == 2
    assert {"param_trainer_config__lr", "mean_score", "std_score", "split2_score", "rank"} <= set(
        table.columns
    )
    assert table.loc[table["rank"] == 1, "param_trainer_config__lr"].item() == 3e-2


def test_cross_validate_params_rejects_bad_grids(planted):
    clf = NeuralRiskClassifier(make_model)
    with pytest.raises(ValueError, match="non-empty dict"):
        cross_validate_params(clf, planted(n=20), None, {})
    with pytest.raises(ValueError, match="list of candidate values"):
        cross_validate_params(clf, planted(n=20), None, {"val_fraction": 0.1})
    with pytest.raises(ValueError, match="cv must be"):
        cross_validate_params(clf, planted(n=20), None, {"val_fraction": [0.1]}, cv=1)
