"""A folder of images (PNG, JPEG, other formats Pillow reads, and DICOM with ``pydicom``) plus a labels CSV.

The labels CSV has one row per image: the image's file name or path relative to the folder (column ``filename``,
``path``, ``image``, ``file`` or ``image_path``, or the one named by ``image_column``), its ``label`` and, optionally,
``patient_id`` (images of one patient then stay together in patient-level splits).

What the cohort holds
---------------------
``stays``   one per image: ``stay_id`` = the image path as written in the CSV, ``patient_id`` (the CSV's, or the
            stay id), ``prediction_time`` 0.
``images``  one image per stay at time 0, resized to ``size`` and stored as a ``[N, C, H, W]`` uint8 array
            (C = ``channels``). 8-bit images keep their values; 16-bit and DICOM images are scaled per image from
            their minimum to their maximum (DICOM ``MONOCHROME1`` inverted first).
``labels``  ``label``: binary when every label is 0 or 1, regression when the labels are numbers that are not all
            whole, multiclass otherwise (classes sorted, or ``classes`` when given). See :func:`label_from_column`.

Row accounting: table ``"<labels csv name>"``: rows used, or dropped as ``duplicate row`` (the same image and label
twice). An empty label is kept as an unlabelled stay.

Example::

    cohort = build("data/xrays", labels="labels.csv", size=64)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.io import read_table
from healthfusion.files import display_path

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("filename", "path", "image", "file", "image_path")
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_HINT = 'Reading DICOM needs pydicom: pip install "healthfusion[dicom]".'


def build(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    labels: str | Path = "labels.csv",
    size: int | Sequence[int] = 64,
    channels: int = 1,
    image_column: str | None = None,
    label_column: str = "label",
    classes: Sequence[str] | None = None,
) -> Cohort:
    """Read a folder of images and its labels CSV into an image cohort.

    Parameters
    ----------
    path : str or Path
        The image folder; image paths in the CSV are relative to it (absolute paths are used as they are).
    task : str, optional
        ``"label"`` (the only label) or None.
    progress : bool, default False
        Log progress every 1,000 images.
    labels : str or Path, default "labels.csv"
        The labels CSV, relative to ``path`` or absolute.
    size : int or (height, width), default 64
        Every image is resized (bilinear) to this size.
    channels : {1, 3}, default 1
        1 stores grey images, 3 RGB.
    image_column : str, optional
        The CSV column with image paths; by default the first of ``filename``, ``path``, ``image``, ``file``,
        ``image_path`` that exists.
    label_column : str, default "label"
        The CSV column with labels.
    classes : sequence of str, optional
        The allowed label values (a multiclass label); a label outside them raises.

    Returns
    -------
    Cohort
        Tables stays, images (with the image array) and labels.

    Raises
    ------
    SourceError
        If the folder or CSV is missing; the CSV lacks the image or label column; an image listed is missing or
        unreadable (naming the file and CSV line); one image is listed twice with different labels; a label is not
        in ``classes``; ``size``/``channels`` are invalid; a DICOM file is met without pydicom installed.
    """
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"Image folder {root} does not exist; pass the folder that holds the images.")
    height, width = _size(size)
    if channels not in (1, 3):
        raise SourceError(f"channels must be 1 (grey) or 3 (RGB); got {channels!r}.")
    if task not in (None, "label"):
        raise SourceError(f"Task {task!r} is not a label of an image-folder cohort; its only label is 'label'.")
    csv = Path(labels) if Path(labels).is_absolute() else root / labels
    table = read_table(csv, dtypes=str)
    column = image_column or next((c for c in IMAGE_COLUMNS if c in table.columns), None)
    if column is None or column not in table.columns:
        wanted = repr(image_column) if image_column else f"one of {list(IMAGE_COLUMNS)}"
        raise SourceError(f"File {csv} lacks the image column ({wanted}); it has {list(table.columns)}.")
    if label_column not in table.columns:
        raise SourceError(
            f"File {csv} lacks the label column {label_column!r}; it has {list(table.columns)}. "
            "Pass label_column= to name it."
        )
    acc = RowAccounting()
    acc.read(csv.name, len(table))
    table = table.reset_index(drop=True)
    table[column] = table[column].str.strip()
    empty = table[column].isna() | table[column].eq("")
    if empty.any():
        raise SourceError(f"File {csv}, line {int(np.flatnonzero(empty.to_numpy())[0]) + 2}: the image path is empty.")
    dup = table.duplicated([column, label_column])
    acc.drop(csv.name, "duplicate row", int(dup.sum()))
    table = table[~dup]
    conflict = table[column].duplicated()
    if conflict.any():
        i = table.index[int(np.flatnonzero(conflict.to_numpy())[0])]
        raise SourceError(
            f"File {csv}, line {i + 2}: image {table.loc[i, column]!r} is listed again with a different label; "
            "keep one row per image."
        )

    def where(i: int) -> str:
        return f"File {csv}, line {i + 2}"

    values, spec = label_from_column(table[label_column], "label", where, classes)
    reader = _Reader(height, width, channels)
    arrays = np.empty((len(table), channels, height, width), dtype=np.uint8)
    for n, (i, name) in enumerate(table[column].items()):
        if progress and n % 1000 == 0:
            log.info("%s: reading image %d of %d", root.name, n + 1, len(table))
        file = Path(name) if Path(name).is_absolute() else root / name
        if not file.is_file():
            raise SourceError(f"{where(i)}: image file {file} does not exist.")
        arrays[n] = reader(file)
    acc.use(csv.name, len(table))
    acc.check()

    ids = table[column].to_numpy(dtype=object)
    patients = table["patient_id"].fillna(pd.Series(ids, index=table.index)) if "patient_id" in table else ids
    stays = pd.DataFrame({"stay_id": ids, "patient_id": np.asarray(patients, dtype=object), "prediction_time": 0.0})
    images = pd.DataFrame({"stay_id": ids, "image_id": ids, "time": 0.0, "part": 0, "offset": np.arange(len(ids))})
    meta = CohortMeta(
        name=f"images-{root.name}",
        source="image_folder",
        labels=[spec],
        description=f"Images of {root} labelled by {csv.name}, resized to {height}x{width}x{channels}.",
    )
    log.info("%s: %d images", display_path(root), len(ids))
    return Cohort(stays, images=images, labels=pd.DataFrame({"stay_id": ids, "label": values.to_numpy()}),
                  image_arrays=arrays, meta=meta, accounting=acc)


def label_from_column(
    values: pd.Series,
    name: str,
    where: Callable[[int], str],
    classes: Sequence[str] | None = None,
) -> tuple[pd.Series, LabelSpec]:
    """A user's label column -> (label values, :class:`LabelSpec`), the kind inferred from the values.

    Empty values are unknown labels. With ``classes`` the label is multiclass and any other value raises; without,
    values that are all 0/1 make a binary label, numbers that are not all whole a regression label, anything else a
    multiclass label with the sorted distinct values as classes. ``where(i)`` names row ``i`` (of ``values.index``)
    in error messages.

    Raises
    ------
    SourceError
        If a value is not one of ``classes``.
    """
    text = values.astype(object).where(values.notna(), None)
    text = text.map(lambda v: v.strip() if isinstance(v, str) else v)
    text = text.where(text.notna() & (text != ""), None)
    present = text.dropna().astype(str)
    if classes is not None:
        allowed = [str(c) for c in classes]
        bad = ~present.isin(allowed)
        if bad.any():
            i = present.index[int(np.flatnonzero(bad.to_numpy())[0])]
            raise SourceError(
                f"{where(i)}: {name} {present[i]!r} is not one of the classes {allowed}; fix the value or pass "
                "the full list of classes."
            )
        return text, LabelSpec(name, "multiclass", tuple(allowed))
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all():
        if numbers.isin([0, 1]).all():
            return pd.to_numeric(text, errors="coerce"), LabelSpec(name, "binary", description="1 = positive.")
        if not (numbers == np.round(numbers)).all():
            return pd.to_numeric(text, errors="coerce"), LabelSpec(name, "regression")
        # whole numbers are class indices: name them without a trailing ".0"
        text = text.where(text.isna(), pd.to_numeric(text, errors="coerce").map(lambda v: f"{v:g}"))
        present = text.dropna()
    found = tuple(sorted(present.unique(), key=_natural_key))
    if not found:
        raise SourceError(f"{where(values.index[0]) if len(values) else 'The table'}: every {name} is empty.")
    return text, LabelSpec(name, "multiclass", found)


def _natural_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"size must be an int or (height, width); got {size!r}.") from exc
    if height < 1 or width < 1:
        raise SourceError(f"size must be positive; got {size!r}.")
    return height, width


class _Reader:
    """Reads one image file to a ``[C, H, W]`` uint8 array of the target size."""

    def __init__(self, height: int, width: int, channels: int):
        self.height, self.width, self.channels = height, width, channels

    def __call__(self, file: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError  # pillow ships with matplotlib

        try:
            if _is_dicom(file):
                image = Image.fromarray(_dicom_pixels(file))
            else:
                with Image.open(file) as opened:
                    opened.load()
                    image = opened
                if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    image = Image.fromarray(_scale(np.asarray(image)))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise SourceError(f"Image file {file} could not be read ({exc}); is it a complete image file?") from exc
        image = image.convert("L" if self.channels == 1 else "RGB")
        image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        arr = np.asarray(image, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _is_dicom(file: Path) -> bool:
    if file.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(file, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _dicom_pixels(file: Path) -> np.ndarray:
    """A DICOM image's pixels as 2-D (grey) or 3-D (RGB) uint8, scaled from its minimum to its maximum."""
    try:
        import pydicom
    except ImportError as exc:
        raise SourceError(f"Image file {file} is DICOM. {DICOM_HINT}") from exc
    try:
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad files; re-raised with the file named
        raise SourceError(f"DICOM file {file} could not be read ({type(exc).__name__}: {exc}).") from exc
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if pixels.ndim != (3 if samples > 1 else 2):
        raise SourceError(
            f"DICOM file {file} has pixel array shape {pixels.shape}; expected one 2-D frame. "
            "Multi-frame DICOM is not supported; export one frame per file."
        )
    if samples > 1:
        return pixels.astype(np.uint8) if pixels.dtype == np.uint8 else _scale(pixels)
    scaled = _scale(pixels)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled


def _scale(pixels: np.ndarray) -> np.ndarray:
    arr = pixels.astype(np.float64)
    low, high = float(np.min(arr)), float(np.max(arr))
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - low) / (high - low) * 255).astype(np.uint8)
