import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

from healthfusion.training import NeuralRiskClassifier, TrainerConfig

from .conftest import TinyNet


def make_model(ds, hidden=8):
    return TinyNet(ds["static"].shape[1], hidden=hidden)


FAST = {"max_epochs": 15, "batch_size": 32, "lr": 1e-2, "patience": 4, "device": "cpu"}


def test_clone_and_cross_val_score_on_array_dataset(planted):
    data = planted(n=240)
    y = data["target"].astype(int)
    clf = NeuralRiskClassifier(make_model, model_config={"hidden": 8}, trainer_config=FAST)
    copy = clone(clf)
    assert copy.get_params()["trainer_config"] == FAST and copy.model_factory is make_model
    scores = cross_val_score(
        clf, data, y, cv=StratifiedKFold(3, shuffle=True, random_state=0), scoring="roc_auc"
    )
    assert scores.shape == (3,) and scores.mean() > 0.8
    assert not hasattr(clf, "model_")  # cross_val_score fits clones


def test_fit_predict_proba_and_string_labels(planted):
    data = planted(n=150)
    y = np.where(data["target"] == 1, "died", "survived")
    sizes = []

    def factory(ds):
        sizes.append(len(ds))
        return make_model(ds)

    clf = NeuralRiskClassifier(factory, trainer_config=FAST, val_fraction=0.2).fit(data.without("target"), y)
    assert list(clf.classes_) == ["died", "survived"]
    assert sizes == [120]  # built on the training part only
    proba = clf.predict_proba(data)
    assert proba.shape == (150, 2) and np.allclose(proba.sum(axis=1), 1)
    assert set(clf.predict(data)) <= {"died", "survived"}
    assert clf.history_.monitor == "val_auroc"


def test_constructor_stores_and_fit_validates(planted):
    data = planted(n=40)
    bad = NeuralRiskClassifier(make_model, val_fraction=1.5)  # no error yet
    assert bad.val_fraction == 1.5
    with pytest.raises(ValueError, match=r"val_fraction must be a float in \[0, 1\)"):
        bad.fit(data)
    with pytest.raises(ValueError, match="model_factory"):
        NeuralRiskClassifier().fit(data)
    with pytest.raises(TypeError, match="ArrayDataset"):
        NeuralRiskClassifier(make_model).fit(data["static"], data["target"])
    with pytest.raises(ValueError, match="exactly 2 classes"):
        NeuralRiskClassifier(make_model).fit(data, np.arange(40) % 3)
    with pytest.raises(ValueError, match="lr_rate"):
        NeuralRiskClassifier(make_model, trainer_config={"lr_rate": 1}).fit(data)
    with pytest.raises(NotFittedError):
        NeuralRiskClassifier(make_model).predict_proba(data)


def test_nested_set_params_copy_the_dicts():
    base = {"lr": 1e-3}
    clf = NeuralRiskClassifier(make_model, trainer_config=base)
    clf.set_params(trainer_config__lr=0.1, model_config__hidden=4, val_fraction=0.0)
    assert clf.trainer_config == {"lr": 0.1} and base == {"lr": 1e-3}
    assert clf.model_config == {"hidden": 4} and clf.val_fraction == 0.0
    clf2 = NeuralRiskClassifier(make_model, trainer_config=TrainerConfig(max_epochs=3))
    clf2.set_params(trainer_config__seed=5)
    assert clf2.trainer_config["seed"] == 5 and clf2.trainer_config["max_epochs"] == 3


def test_grid_search_cv_accepts_nested_params(planted):
    data = planted(n=90)
    clf = NeuralRiskClassifier(make_model, trainer_config={**FAST, "max_epochs": 2}, val_fraction=0.0)
    search = GridSearchCV(clf, {"trainer_config__lr": [1e-2, 1e-3]}, cv=2, scoring="roc_auc")
    search.fit(data, data["target"])
    assert search.best_params_["trainer_config__lr"] in (1e-2, 1e-3)
