"""Notes readers: a generic notes table and MTSamples (hand-made files, and the shared crawl when present)."""

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.sources.notes import build, build_mtsamples

NOTES = "id,time,text,patient,outcome\na,1,chest pain,p1,yes\na,2.5,better,p1,\nb,0.5,,p2,no\nb,1,stable,p2,no\na,1,chest pain,p1,yes\n"


def test_generic_notes_table(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text(NOTES)
    cohort = get_source("notes")(path, patient_column="patient", label_column="outcome", task="outcome",
                                 prediction_time=3.0)
    assert list(cohort.stay_ids) == ["a", "b"]
    assert cohort.stays["patient_id"].tolist() == ["p1", "p2"]
    assert cohort.stays["prediction_time"].tolist() == [3.0, 3.0]
    assert cohort.notes["text"].tolist() == ["chest pain", "better", "stable"]
    assert cohort.meta.label("outcome").classes == ("no", "yes")
    assert cohort.label("outcome").tolist() == ["yes", "no"]
    acc = cohort.accounting
    acc.check()
    assert acc.tables["notes.csv"].dropped == {"empty text": 1, "duplicate row": 1}
    fixed = build(path, prediction_time=2.0)
    assert (fixed.stays["prediction_time"] == 2.0).all() and fixed.labels is None
    assert len(fixed.observable("notes")) == 2


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("id,time,text\na,1,x\n", {"prediction_time": None}, "give the prediction time as exactly one of"),
        ("id,time,text,t\na,1,x,1\n", {"prediction_time_column": "t"}, "got both"),
        ("id,time,text,t\na,1,x,1\na,2,y,2\n", {"prediction_time": None, "prediction_time_column": "t"},
         "stay 'a' has more than one t value"),
        ("id,time,text,t\na,1,x,\n", {"prediction_time": None, "prediction_time_column": "t"},
         "stay 'a' has no t value"),
        ("id,time,text,t\na,1,x,soon\n", {"prediction_time": None, "prediction_time_column": "t"},
         r"notes\.csv, line 2: t 'soon' is not a number"),
        ("id,time\na,1\n", {}, r"lacks column\(s\) \['text'\]"),
        ("id,time,text\na,1,x\nb,soon,y\n", {}, r"notes\.csv, line 3: time 'soon' is not a number"),
        ("id,time,text\na,1,x\n,2,y\n", {}, r"notes\.csv, line 3: 'id' is empty"),
        ("id,time,text,y\na,1,x,0\na,2,z,1\n", {"label_column": "y"}, "stay 'a' has more than one label"),
        ("id,time,text,y\na,1,x,0\nb,2,z,2\n", {"label_column": "y", "classes": ["0", "1"]},
         r"notes\.csv, line 3: y '2' is not one of the classes"),
        ("id,time,text\na,1,x\n", {"task": "death"}, "Task 'death' is not a label"),
        ("", {}, r"notes\.csv is empty"),
    ],
)
def test_malformed_notes_raise(tmp_path, text, options, message):
    path = tmp_path / "notes.csv"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        build(path, **{"prediction_time": 24.0, **options})


def test_a_planted_outcome_note_is_not_an_input(tmp_path):
    """A discharge note stating the outcome, written after the prediction time, must not reach the features."""
    from healthfusion.features.text import TextTransformer

    rows = [("a", 1, "chest pain on arrival", "t"), ("b", 2, "stable overnight", "t")]
    clean = tmp_path / "clean.csv"
    planted = tmp_path / "planted.csv"
    header = "id,time,text,cut\n"
    clean.write_text(header + "".join(f"{i},{t},{x},6\n" for i, t, x, _ in rows))
    planted.write_text(clean.read_text() + "a,30,DISCHARGE SUMMARY: patient expired,6\n")
    with pytest.raises(SourceError, match="no default"):
        build(planted)  # no silent last-note default any more
    for options in ({"prediction_time": 6.0}, {"prediction_time_column": "cut"}):
        before, after = build(clean, **options), build(planted, **options)
        assert after.stays["prediction_time"].tolist() == [6.0, 6.0]
        assert len(after.notes) == 3 and len(after.observable("notes")) == 2  # kept, counted, but not visible
        text = TextTransformer(n_buckets=64).fit(after, ["a", "b"])
        assert np.array_equal(text.transform(before, ["a", "b"]), text.transform(after, ["a", "b"]))


MTSAMPLES = pd.DataFrame({
    "sample_id": [1, 1, 2, 2, 2, 3, 4, 5, 6],
    "medical_specialty": ["Surgery", "Urology", "Radiology", "Neurology", "Consult - History and Phy.", "Urology",
                          "Surgery", "Neurology", "Neurology"],
    "transcription": ["t1", "t1", "t2", "t2", "t2", "t3", "t1", "t5", "t6"],
    "sample_name": "n", "description": "d",
})


def test_mtsamples_one_stay_per_sample(tmp_path):
    path = tmp_path / "mtsamples_test.csv"
    MTSAMPLES.to_csv(path, index=False)
    cohort = get_source("mtsamples")(tmp_path)  # the folder works too
    assert list(cohort.stay_ids) == ["1", "2", "3", "4", "5", "6"]
    # 1: Urology over generic Surgery; 2: Radiology (1 sample) is rarer than Neurology (3); 4: only Surgery
    assert cohort.label("specialty").tolist() == ["Urology", "Radiology", "Urology", "Surgery", "Neurology",
                                                  "Neurology"]
    assert list(cohort.label("specialties").iloc[1]) == ["Consult - History and Phy.", "Neurology", "Radiology"]
    assert cohort.stays["patient_id"].tolist() == ["1", "2", "3", "1", "5", "6"]  # same text -> same patient
    t = cohort.accounting.tables["mtsamples_test.csv"]
    assert (t.read, t.used, t.dropped) == (9, 6, {"duplicate sample (listed under another specialty)": 3})


def test_mtsamples_min_class_size_folds_into_other(tmp_path):
    path = tmp_path / "m.csv"
    MTSAMPLES.to_csv(path, index=False)
    cohort = build_mtsamples(path, min_class_size=2)
    # Radiology and Surgery got one sample each: sample 2 falls back to Neurology, sample 4 has nothing else
    assert cohort.label("specialty").tolist() == ["Urology", "Neurology", "Urology", "Other", "Neurology",
                                                  "Neurology"]
    assert cohort.meta.label("specialty").classes == ("Neurology", "Other", "Urology")
    assert "'Other' holds 1 samples" in cohort.meta.label("specialty").description


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.drop(columns="transcription"), r"lacks column\(s\) \['transcription'\]"),
        (lambda d: d.assign(sample_id=["1", "1", "x", "2", "2", "3", "4", "5", "6"]), r"line 4: sample_id 'x' is not a whole"),
        (lambda d: d.assign(transcription=["t1", "other", "t2", "t2", "t2", "t3", "t1", "t5", "t6"]),
         r"sample 1 has different texts on lines \[2, 3\]"),
        (lambda d: d.assign(medical_specialty=["Surgery", "", "R", "N", "C", "U", "S", "N", "N"]),
         r"line 3: medical_specialty is empty"),
    ],
)
def test_malformed_mtsamples_raise(tmp_path, change, message):
    path = tmp_path / "m.csv"
    change(MTSAMPLES).to_csv(path, index=False)
    with pytest.raises(SourceError, match=message):
        build_mtsamples(path)


def test_mtsamples_bad_options(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        build_mtsamples(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match="holds no mtsamples"):
        build_mtsamples(tmp_path)
    with pytest.raises(SourceError, match="min_class_size must be a positive integer"):
        build_mtsamples(tmp_path, min_class_size=0)


@pytest.mark.realdata
def test_mtsamples_crawl(shared_dataset):
    cohort = get_source("mtsamples")(shared_dataset("mtsamples") / "mtsamples_2018crawl.csv.gz", min_class_size=20)
    assert len(cohort) == 2377
    t = cohort.accounting.tables["mtsamples_2018crawl.csv.gz"]
    assert (t.read, t.used) == (5111, 2377)
    assert t.dropped == {"duplicate sample (listed under another specialty)": 5111 - 2377}
    cohort.accounting.check()
    assert len(cohort.meta.label("specialties").classes) == 40
    counts = cohort.label("specialty").value_counts()
    assert counts.drop("Other").min() >= 20 and set(counts.index) == set(cohort.meta.label("specialty").classes)
    assert cohort.stays["patient_id"].nunique() == 2376  # one pair of samples shares its text
    assert cohort.notes["text"].str.len().min() >= 325
