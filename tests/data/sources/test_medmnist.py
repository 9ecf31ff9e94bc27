"""MedMNIST reader: hand-made .npz files and the shared BreastMNIST copy when present."""

import numpy as np
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.sources.medmnist import build


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def binary_npz(tmp_path):
    rng = np.random.default_rng(0)
    return write_npz(
        tmp_path / "breastmnist.npz",
        train_images=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), train_labels=np.array([[0], [1], [1], [0], [1], [1]]),
        val_images=rng.integers(0, 255, (3, 8, 8), dtype=np.uint8), val_labels=np.array([1, 0, 1]),
    )


def test_binary_file_with_n_by_1_and_flat_labels(binary_npz, tmp_path):
    cohort = build(binary_npz)
    assert len(cohort) == 9 and cohort.stays["split"].value_counts().to_dict() == {"train": 6, "val": 3}
    assert cohort.meta.label("label").kind == "binary"
    assert cohort.label("label").tolist() == [0, 1, 1, 0, 1, 1, 1, 0, 1]
    assert (cohort.stays["prediction_time"] == 0).all() and (cohort.images["time"] == 0).all()
    pixels = cohort.image_array(cohort.images)
    assert pixels.shape == (9, 1, 8, 8) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[6, 0], np.load(binary_npz)["val_images"][0])
    cohort.accounting.check()
    assert cohort.accounting.tables["val_images"].used == 3
    loaded = Cohort.load(cohort.save(tmp_path / "c"))
    np.testing.assert_array_equal(loaded.image_array(loaded.images), pixels)


def test_positive_class_and_split(binary_npz):
    cohort = build(binary_npz, split="val", positive_class=0)
    assert list(cohort.stay_ids) == ["val-000000", "val-000001", "val-000002"]
    assert cohort.label("label").tolist() == [0, 1, 0]
    assert "malignant" in cohort.meta.label("label").description


def test_multiclass_multilabel_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    path = write_npz(tmp_path / "organs.npz", train_images=rng.integers(0, 255, (4, 5, 5, 3), dtype=np.uint8),
                     train_labels=np.array([[0], [2], [1], [2]]), test_images=np.zeros((1, 5, 5, 3), np.uint8),
                     test_labels=np.array([[3]]))
    cohort = build(path, split="train")
    spec = cohort.meta.label("label")
    assert spec.kind == "multiclass" and spec.classes == ("0", "1", "2", "3")  # classes from every split
    assert cohort.image_array(cohort.images).shape == (4, 3, 5, 5)
    multi = write_npz(tmp_path / "chest.npz", train_images=np.zeros((2, 4, 4), np.uint8),
                      train_labels=np.array([[1, 0, 1], [0, 0, 0]]))
    cohort = build(multi)
    assert cohort.meta.label("label").kind == "multilabel"
    assert [list(v) for v in cohort.label("label")] == [["0", "2"], []]


@pytest.mark.parametrize(
    "arrays, options, message",
    [
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.array([0, 1, 1])}, {},
         "train_images has 2 images but train_labels has 3"),
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.array([0, -1])}, {},
         r"train_labels row 1 is \[-1\]; expected non-negative integer"),
        ({"train_images": np.zeros((2, 4, 4))}, {}, "has train_images but no train_labels"),
        ({"train_images": np.zeros((2, 4, 4, 4, 4)), "train_labels": np.array([0, 1])}, {}, "3-D MedMNIST volumes"),
        ({"x": np.zeros(3)}, {}, r"has no '<split>_images' arrays \(it has \['x'\]\)"),
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.array([0, 1])}, {"split": "test"},
         "has no 'test' split; it has: train"),
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.array([0, 1])}, {"split": "dev"},
         "split must be one of"),
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.array([0, 1])}, {"positive_class": 2},
         "positive_class must be 0 or 1"),
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.array([0, 1])}, {"task": "malignant"},
         "only label is 'label'"),
    ],
)
def test_malformed_files_raise(tmp_path, arrays, options, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SourceError, match=message):
        build(path, **options)


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        build(tmp_path / "nope.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SourceError, match=r"broken\.npz is not a readable \.npz"):
        build(tmp_path / "broken.npz")


@pytest.mark.realdata
def test_breastmnist_train_and_val(shared_dataset):
    path = shared_dataset("medmnist") / "breastmnist.npz"
    cohort = get_source("medmnist")(path, positive_class=0)  # 1 = malignant
    assert len(cohort) == 624
    assert cohort.stays["split"].value_counts().to_dict() == {"train": 546, "val": 78}
    assert cohort.label("label").sum() == 168 and cohort.label("label").mean() == pytest.approx(0.269, abs=1e-3)
    assert cohort.image_array(cohort.images.head(2)).shape == (2, 1, 28, 28)
    cohort.accounting.check()
    with pytest.raises(SourceError, match="no 'test' split; it has: train, val"):
        build(path, split="test")
