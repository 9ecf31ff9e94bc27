"""An external test cohort that shares patients with the training cohort is flagged with the count."""

import logging

from healthfusion.data.cohort import Cohort
from healthfusion.data.splits import shared_patients
from healthfusion.data.synthetic import generate
from healthfusion.workflows.config import RunConfig
from healthfusion.workflows.train import prepare_run


def _config(tmp_path, main, test):
    return RunConfig.model_validate({
        "out": str(tmp_path / "run"),
        "data": {"cohort": str(main), "label": "mortality", "test": {"cohort": str(test)},
                 "split": {"train": 0.7, "val": 0.3, "test": 0.0, "seed": 0}},
    })


def test_shared_patients_of_an_external_test_cohort_are_counted(tmp_path, caplog):
    main = generate(60, seed=0)
    main.save(tmp_path / "main")
    # the external cohort: 5 stays of patients in the main cohort, the others renamed to new patients
    ext = generate(20, seed=1)
    stays = ext.stays.copy()
    reused = main.stays["patient_id"].drop_duplicates().iloc[:5].tolist()
    stays["patient_id"] = [reused[i] if i < 5 else f"new{i}" for i in range(len(stays))]
    Cohort(stays, static=ext.static, events=ext.events, labels=ext.labels, meta=ext.meta).save(tmp_path / "ext")
    fresh = stays.assign(patient_id=[f"new{i}" for i in range(len(stays))])
    Cohort(fresh, static=ext.static, events=ext.events, labels=ext.labels, meta=ext.meta).save(tmp_path / "fresh")

    dev = main.stays
    assert shared_patients(dev, stays).tolist() == sorted(reused)
    assert len(shared_patients(dev, fresh)) == 0

    with caplog.at_level(logging.WARNING):
        prepare_run(_config(tmp_path, tmp_path / "main", tmp_path / "ext"))
    assert "5 patient(s) of the external test cohort (5 test stay(s)) also have stays in the training" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare_run(_config(tmp_path, tmp_path / "main", tmp_path / "fresh"))
    assert "external test cohort" not in caplog.text
