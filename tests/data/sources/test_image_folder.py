"""Image-folder reader: PNG/JPEG (and DICOM when pydicom is installed) with a labels CSV, all made here."""

import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.sources.image_folder import build, label_from_column


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "sub" / "b.jpg")
    Image.fromarray(np.full((10, 10), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    Image.fromarray((np.arange(100).reshape(10, 10) * 600).astype(np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "labels.csv").write_text(
        "filename,label,patient_id\na.png,1,p1\nsub/b.jpg,0,p1\nwhite.png,1,\ndeep.png,,p3\na.png,1,p1\n"
    )
    return tmp_path


def test_reads_resizes_and_labels(folder):
    cohort = build(folder, size=(16, 12))
    assert list(cohort.stay_ids) == ["a.png", "sub/b.jpg", "white.png", "deep.png"]
    assert cohort.stays["patient_id"].tolist() == ["p1", "p1", "white.png", "p3"]
    spec = cohort.meta.label("label")
    assert spec.kind == "binary"
    labels = cohort.label("label")
    assert labels.iloc[:3].tolist() == [1, 0, 1] and np.isnan(labels.iloc[3])
    pixels = cohort.image_array(cohort.images)
    assert pixels.shape == (4, 1, 16, 12) and pixels.dtype == np.uint8
    assert (pixels[2] == 255).all()
    assert pixels[3].min() == 0 and pixels[3].max() > 240  # 16-bit scaled per image
    acc = cohort.accounting
    acc.check()
    assert acc.tables["labels.csv"].dropped == {"duplicate row": 1} and acc.tables["labels.csv"].used == 4


def test_rgb_and_registry(folder):
    cohort = get_source("image_folder")(folder, size=8, channels=3)
    assert cohort.image_array(cohort.images).shape == (4, 3, 8, 8)


def test_multiclass_with_classes_and_other_columns(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "y.png")
    (tmp_path / "meta.csv").write_text("image,finding\nx.png,effusion\ny.png,normal\n")
    cohort = build(tmp_path, labels="meta.csv", label_column="finding", size=4)
    assert cohort.meta.label("label").classes == ("effusion", "normal")
    cohort = build(tmp_path, labels=tmp_path / "meta.csv", label_column="finding", size=4,
                   classes=["normal", "effusion", "mass"])
    assert cohort.meta.label("label").classes == ("normal", "effusion", "mass")


@pytest.mark.parametrize(
    "csv, message",
    [
        ("name,label\na.png,1\n", r"labels\.csv lacks the image column"),
        ("filename,y\na.png,1\n", r"labels\.csv lacks the label column 'label'"),
        ("filename,label\na.png,1\nmissing.png,0\n", r"labels\.csv, line 3: image file .*missing\.png does not exist"),
        ("filename,label\na.png,1\na.png,0\n", r"labels\.csv, line 3: image 'a\.png' is listed again"),
        ("filename,label\na.png,1\n,0\n", r"labels\.csv, line 3: the image path is empty"),
        ("filename,label\nbroken.png,1\n", r"Image file .*broken\.png could not be read"),
        ("", r"labels\.csv is empty"),
    ],
)
def test_malformed_input_names_file_and_row(folder, csv, message):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "labels.csv").write_text(csv)
    with pytest.raises(SourceError, match=message):
        build(folder)


def test_unknown_label_value_raises(folder):
    with pytest.raises(SourceError, match=r"labels\.csv, line 2: label '1' is not one of the classes \['0', 'x'\]"):
        build(folder, classes=["0", "x"])


def test_bad_options_and_missing_folder(folder, tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        build(tmp_path / "nope")
    with pytest.raises(SourceError, match="channels must be 1"):
        build(folder, channels=2)
    with pytest.raises(SourceError, match="size must be"):
        build(folder, size="big")
    with pytest.raises(SourceError, match="only label is 'label'"):
        build(folder, task="death")


def test_label_kinds_inferred():
    def where(i):
        return f"row {i}"

    values, spec = label_from_column(pd.Series([1.5, 2.0, None]), "y", where)
    assert spec.kind == "regression" and values.iloc[0] == 1.5
    values, spec = label_from_column(pd.Series(["2", "10", "1.0"]), "y", where)
    assert spec.kind == "multiclass" and spec.classes == ("1", "2", "10")
    with pytest.raises(SourceError, match="every y is empty"):
        label_from_column(pd.Series(["", None]), "y", where)


# ---------------------------------------------------------------------------------------------- DICOM
def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2"):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_dicom_images_are_scaled_and_inverted(tmp_path):
    ramp = (np.arange(64).reshape(8, 8) * 60).astype(np.uint16)
    write_dicom(tmp_path / "a.dcm", ramp)
    write_dicom(tmp_path / "b_no_suffix", ramp, photometric="MONOCHROME1")
    (tmp_path / "labels.csv").write_text("filename,label\na.dcm,0\nb_no_suffix,1\n")
    cohort = build(tmp_path, size=8)
    pixels = cohort.image_array(cohort.images)
    assert pixels[0, 0, 0, 0] == 0 and pixels[0, 0, -1, -1] == 255
    np.testing.assert_array_equal(pixels[1], 255 - pixels[0])


def test_dicom_without_pydicom_gives_install_hint(tmp_path, monkeypatch):
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "labels.csv").write_text("filename,label\nscan.dcm,1\n")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(SourceError, match=r'scan\.dcm is DICOM\. Reading DICOM needs pydicom: pip install "healthfusion\[dicom\]"'):
        build(tmp_path)


def test_corrupt_dicom_names_file(tmp_path):
    pytest.importorskip("pydicom")
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "labels.csv").write_text("filename,label\nscan.dcm,1\n")
    with pytest.raises(SourceError, match=r"DICOM file .*scan\.dcm could not be read"):
        build(tmp_path)
