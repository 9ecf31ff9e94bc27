"""``tuning:`` cross-validation without optimism: a held-out fold never chooses an epoch, it is only scored."""

import yaml

import healthfusion.workflows.train as tr
from healthfusion.data import synthetic
from healthfusion.data.cohort import Cohort
from healthfusion.workflows.config import load_run_config


def test_held_out_folds_are_scored_but_never_early_stop(tmp_path, monkeypatch):
    synthetic.write(tmp_path / "cohort", n_stays=160, seed=3)
    cfg = {"name": "cv", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["static"]}, "model": {"hidden": 4},
           "training": {"max_epochs": 2, "batch_size": 32}, "tuning": {"folds": 2, "grid": {"hidden": [4, 6]}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_run_config(tmp_path / "run.yaml")
    cohort = Cohort.load(tmp_path / "cohort")
    ids = [str(s) for s in cohort.stay_ids][:120]
    fits, original = [], tr.fit_hybrid

    def spy(feat, spec, train, val, training, *args, **kwargs):
        model, trainer, history = original(feat, spec, train, val, training, *args, **kwargs)
        fit = {"train": set(train.meta["stay_ids"]), "val": set(val.meta["stay_ids"]), "scored": set()}
        predict = trainer.predict

        def scored(model, data, *a, **k):
            fit["scored"] |= set(data.meta["stay_ids"])
            return predict(model, data, *a, **k)

        trainer.predict = scored
        fits.append(fit)
        return model, trainer, history

    monkeypatch.setattr(tr, "fit_hybrid", spy)
    spec, table = tr.tune_hybrid(config, cohort, ids)
    assert len(fits) == 2 * 2 and len(table) == 2 and spec.hidden in (4, 6)
    for fit in fits:
        assert fit["scored"], "every fit scores its held-out fold"
        assert not fit["scored"] & fit["val"], "a held-out stay chose the epoch (early stopping)"
        assert not fit["scored"] & fit["train"] and not fit["train"] & fit["val"] and fit["val"]
        assert fit["scored"] | fit["train"] | fit["val"] <= set(ids)
    # the same inner split for every candidate, so candidates are compared on the same data
    assert fits[0]["val"] == fits[2]["val"] and fits[1]["val"] == fits[3]["val"]
