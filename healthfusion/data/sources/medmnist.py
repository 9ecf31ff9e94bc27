"""MedMNIST v2 ``.npz`` files (e.g. ``breastmnist.npz``): 2-D images with a class label, one stay per image.

A MedMNIST file holds ``<split>_images`` (``[N, H, W]`` grey or ``[N, H, W, 3]`` colour, uint8) and
``<split>_labels`` (``[N]``, ``[N, 1]`` or, for multi-label sets such as ChestMNIST, ``[N, K]`` of 0/1) for the
splits ``train``, ``val`` and ``test``; copies may lack some splits (the shared BreastMNIST copy has no test split).

What the cohort holds
---------------------
``stays``   ``stay_id`` = ``patient_id`` = ``<split>-<index>`` (MedMNIST gives no patient identifier, so images of
            one patient may land in different splits of ours), ``prediction_time`` 0, and ``split`` (the file's split).
``images``  one image per stay at time 0, stored as a ``[N, C, H, W]`` uint8 array.
``labels``  ``label``: binary when the file has two classes (1 = ``positive_class``), multiclass (classes
            ``"0"``, ``"1"``, ...) when more, multilabel when the labels are ``[N, K]`` with ``K > 1``. Classes are
            counted over every split in the file, so ``split="val"`` gives the same label as ``split="all"``.

Row accounting: table ``"<split>_images"`` per split read; every image is used.

Example::

    cohort = build("data/medmnist/breastmnist.npz", split="all", positive_class=0)   # 1 = malignant
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# class names of MedMNIST sets (from the MedMNIST INFO metadata), used only to describe the label
KNOWN_CLASSES = {
    "breastmnist": {0: "malignant", 1: "normal, benign"},
    "pneumoniamnist": {0: "normal", 1: "pneumonia"},
}


def build(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    split: str = "all",
    positive_class: int = 1,
) -> Cohort:
    """Read a MedMNIST ``.npz`` file into an image cohort.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file, e.g. ``breastmnist.npz``.
    task : str, optional
        ``"label"`` (the only label) or None.
    progress : bool, default False
        Unused (reading is a single step); accepted for the common source signature.
    split : {"all", "train", "val", "test"}, default "all"
        Which split to read; ``"all"`` reads every split present.
    positive_class : int, default 1
        For two-class files, the class whose images get label 1 (e.g. 0 for malignant in BreastMNIST).

    Returns
    -------
    Cohort
        Tables stays, images (with the image array) and labels.

    Raises
    ------
    SourceError
        If the file is missing or not a MedMNIST ``.npz``; ``split`` is not present (the message lists those that
        are); images and labels differ in length; images are not 2-D grey or RGB; a label is negative, not an
        integer, or ``positive_class`` is not a class; ``task`` is not ``"label"``.
    """
    path = Path(path)
    del progress
    if split not in ("all", *SPLITS):
        raise SourceError(f"split must be one of 'all', {', '.join(map(repr, SPLITS))}; got {split!r}.")
    if task not in (None, "label"):
        raise SourceError(f"Task {task!r} is not a label of a MedMNIST cohort; its only label is 'label'.")
    arrays = _load(path)
    present = [s for s in SPLITS if f"{s}_images" in arrays]
    if not present:
        raise SourceError(
            f"{path} has no '<split>_images' arrays (it has {sorted(arrays)}); is it a MedMNIST .npz file?"
        )
    if split != "all" and split not in present:
        raise SourceError(f"{path} has no {split!r} split; it has: {', '.join(present)}. Pass one of those or 'all'.")
    chosen = present if split == "all" else [split]

    labels_by_split = {s: _labels(arrays, s, path) for s in present}
    multilabel = next(iter(labels_by_split.values())).shape[1] > 1
    if multilabel:
        n_classes = next(iter(labels_by_split.values())).shape[1]
        for s, y in labels_by_split.items():
            if y.shape[1] != n_classes or (y > 1).any():
                raise SourceError(
                    f"{path}: {s}_labels has shape {y.shape} and maximum {y.max()}; multi-label files need "
                    f"[N, {n_classes}] arrays of 0/1 in every split."
                )
    else:
        n_classes = int(max(int(y.max(initial=0)) for y in labels_by_split.values())) + 1

    acc = RowAccounting()
    stays, images, label_values, pixels = [], [], [], []
    for s in chosen:
        imgs = _images(arrays[f"{s}_images"], s, path)
        y = labels_by_split[s]
        if len(y) != len(imgs):
            raise SourceError(f"{path}: {s}_images has {len(imgs)} images but {s}_labels has {len(y)} labels.")
        ids = [f"{s}-{i:06d}" for i in range(len(imgs))]
        stays.append(pd.DataFrame({"stay_id": ids, "patient_id": ids, "prediction_time": 0.0, "split": s}))
        images.append(pd.DataFrame({"stay_id": ids, "image_id": ids, "time": 0.0}))
        label_values.append(y)
        pixels.append(imgs)
        acc.read(f"{s}_images", len(imgs))
        acc.use(f"{s}_images", len(imgs))

    y = np.concatenate(label_values)
    dataset = path.name.split(".")[0].lower()
    names = KNOWN_CLASSES.get(dataset, {})
    if multilabel:
        classes = tuple(str(k) for k in range(n_classes))
        values = [[str(k) for k in np.flatnonzero(row)] for row in y]
        spec = LabelSpec("label", "multilabel", classes, description=f"{dataset}: findings present (0/1 per class).")
    elif n_classes <= 2:
        if positive_class not in (0, 1):
            raise SourceError(f"positive_class must be 0 or 1 for the two-class file {path}; got {positive_class!r}.")
        values = (y[:, 0] == positive_class).astype("int64")
        what = names.get(positive_class, f"class {positive_class}")
        spec = LabelSpec("label", "binary", description=f"{dataset}: 1 = {what} (MedMNIST class {positive_class}).")
    else:
        classes = tuple(str(k) for k in range(n_classes))
        values = y[:, 0].astype(str)
        spec = LabelSpec("label", "multiclass", classes, description=f"{dataset}: MedMNIST class index.")
    stays_df = pd.concat(stays, ignore_index=True)
    labels = pd.DataFrame({"stay_id": stays_df["stay_id"], "label": values})
    meta = CohortMeta(
        name=f"medmnist-{dataset}",
        source="medmnist",
        labels=[spec],
        description=f"MedMNIST {dataset} ({', '.join(chosen)}): one stay per image, label at time 0.",
    )
    acc.check()
    image_table = pd.concat(images, ignore_index=True).assign(part=0, offset=np.arange(len(stays_df)))
    log.info("%s: %d images from split(s) %s", path.name, len(stays_df), ", ".join(chosen))
    return Cohort(stays_df, images=image_table, labels=labels, image_arrays=np.concatenate(pixels), meta=meta,
                  accounting=acc)


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise SourceError(f"MedMNIST file {path} does not exist; pass the .npz file (e.g. breastmnist.npz).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"{path} is not a readable .npz file ({exc}); download it again.") from exc


def _labels(arrays: dict[str, np.ndarray], split: str, path: Path) -> np.ndarray:
    """Labels of ``split`` as ``[N, K]`` integers; a missing, negative or fractional label raises."""
    key = f"{split}_labels"
    if key not in arrays:
        raise SourceError(f"{path} has {split}_images but no {key}; every split needs its labels.")
    y = np.asarray(arrays[key])
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or not np.issubdtype(y.dtype, np.number):
        raise SourceError(f"{path}: {key} has shape {y.shape} and dtype {y.dtype}; expected (N,) or (N, K) numbers.")
    bad = (y < 0) | (y != np.round(y)) if y.size else np.zeros(y.shape, dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise SourceError(
            f"{path}: {key} row {row} is {y[row].tolist()}; expected non-negative integer class indices."
        )
    return y.astype("int64")


def _images(x: np.ndarray, split: str, path: Path) -> np.ndarray:
    """``[N, H, W]`` or ``[N, H, W, 3]`` -> ``[N, C, H, W]``."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return np.moveaxis(x, -1, 1)
    raise SourceError(
        f"{path}: {split}_images has shape {x.shape}; expected [N, H, W] (grey) or [N, H, W, 3] (colour). "
        "3-D MedMNIST volumes are not supported."
    )
