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
        prepare_run(_config(tmp_path, tmp_path / "main", tmp_path / "fresh"), overwrite=True)
    assert "external test cohort" not in caplog.text


def test_development_patients_are_recorded_as_digests_and_counted(tmp_path):
    from healthfusion.data.splits import (
        DEVELOPMENT_PATIENTS_FILE,
        count_development_patients,
        write_development_patients,
    )

    path = write_development_patients(tmp_path, ["p1", "p2", "p2", 1003])
    assert path.name == DEVELOPMENT_PATIENTS_FILE and "p1" not in path.read_text()  # no identifier in clear
    assert count_development_patients(tmp_path, ["p2", "p2", "1003", "x"]) == 2
    assert count_development_patients(tmp_path, ["x", "y"]) == 0
    assert count_development_patients(tmp_path / "elsewhere", ["p1"]) is None


def test_predict_warns_about_patients_the_model_was_trained_on(tmp_path, caplog):
    from healthfusion.data.splits import count_development_patients
    from healthfusion.workflows.predict import predict_source
    from healthfusion.workflows.train import run_training

    generate(80, seed=3).save(tmp_path / "main")
    config = RunConfig.model_validate({
        "out": str(tmp_path / "run"), "data": {"cohort": str(tmp_path / "main"), "label": "mortality"},
        "features": {"modalities": ["static"]}, "model": {"hidden": 4},
        "training": {"max_epochs": 1, "batch_size": 32}, "baselines": [], "evaluation": {"n_boot": 5, "audit": False},
    })
    run = run_training(config)
    main = Cohort.load(tmp_path / "main")
    shared = count_development_patients(run, main.stays["patient_id"])
    assert 0 < shared < main.stays["patient_id"].nunique()  # train + val patients, not the test ones
    with caplog.at_level(logging.WARNING):
        predict_source(run / "model", "synthetic", tmp_path / "again", n_stays=80, seed=3)
    assert f"{shared} patient(s) of the synthetic input also had stays the model was trained or tuned on" in caplog.text
