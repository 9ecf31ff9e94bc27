"""``tuning:`` cross-validation without optimism: a held-out fold never chooses an epoch, it is only scored."""

import numpy as np
import pandas as pd
import yaml

import healthfusion.workflows.train as tr
from healthfusion.data import synthetic
from healthfusion.data.cohort import Cohort
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.metrics import auroc
from healthfusion.workflows.common import fit_hybrid, make_featurizer
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
    tuned, table = tr.tune_hybrid(config, cohort, ids)
    spec = tuned.model
    assert len(fits) == 2 * 2 and len(table) == 2 and spec.hidden in (4, 6)
    for fit in fits:
        assert fit["scored"], "every fit scores its held-out fold"
        assert not fit["scored"] & fit["val"], "a held-out stay chose the epoch (early stopping)"
        assert not fit["scored"] & fit["train"] and not fit["train"] & fit["val"] and fit["val"]
        assert fit["scored"] | fit["train"] | fit["val"] <= set(ids)
    # the same inner split for every candidate, so candidates are compared on the same data
    assert fits[0]["val"] == fits[2]["val"] and fits[1]["val"] == fits[3]["val"]


def _hand_written_grid(config, cohort, train_ids):
    """The grid search ``tuning: {grid: ...}`` ran before the Optuna grid sampler replaced it (the reference)."""
    tuning, split = config.tuning, config.data.split
    stays = cohort.stays.set_index("stay_id").loc[train_ids].reset_index()
    label = cohort.label(config.data.label)
    folds = split_patients(stays, fractions={f"fold{k}": 1.0 / tuning.folds for k in range(tuning.folds)},
                           seed=split.seed, stratify=label)
    inner_val = split.val / (split.train + split.val)
    rows = []
    for hidden in tuning.grid["hidden"]:
        spec, scores = config.model.model_copy(update={"hidden": hidden}), []
        for k in range(tuning.folds):
            fit_ids = folds.index[folds != f"fold{k}"].tolist()
            parts = split_patients(stays.set_index("stay_id").loc[fit_ids].reset_index(),
                                   fractions={"train": 1.0 - inner_val, "val": inner_val}, seed=split.seed + 1 + k,
                                   stratify=label)
            feat = make_featurizer(config.features, config.data.label).fit(cohort, fit_ids)
            fit, stop, held = (feat.transform(cohort, ids) for ids in (
                parts.index[parts == "train"].tolist(), parts.index[parts == "val"].tolist(),
                folds.index[folds == f"fold{k}"].tolist()))
            fit, stop, held = fit[fit.usable_rows()], stop[stop.usable_rows()], held[held.usable_rows()]
            model, trainer, _ = fit_hybrid(feat, spec, fit, stop, config.training)
            scores.append(auroc(held["target"], trainer.predict(model, held)))
        rows.append({"hidden": hidden, "cv_auroc": float(np.mean(scores))})
    return pd.DataFrame(rows)


def test_the_older_grid_form_gives_the_hand_written_grid_results(tmp_path):
    synthetic.write(tmp_path / "cohort", n_stays=120, seed=4)
    cfg = {"name": "grid", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["static"]}, "model": {"hidden": 4},
           "training": {"max_epochs": 2, "batch_size": 32}, "tuning": {"folds": 2, "grid": {"hidden": [6, 3, 4]}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_run_config(tmp_path / "run.yaml")
    cohort = Cohort.load(tmp_path / "cohort")
    ids = [str(s) for s in cohort.stay_ids][:100]
    tuned, table = tr.tune_hybrid(config, cohort, ids)
    reference = _hand_written_grid(config, cohort, ids)
    got = table.set_index("hidden")["cv_auroc"].loc[reference["hidden"]].to_numpy()
    assert np.allclose(got, reference["cv_auroc"].to_numpy(), atol=1e-9)
    assert tuned.model.hidden == reference.loc[reference["cv_auroc"].idxmax(), "hidden"]
