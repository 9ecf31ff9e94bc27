"""Training-time image augmentation (``TrainerConfig.image_augmentation``) and the cosine learning-rate schedule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.image import ImageAugmentation, augment
from healthfusion.training import Callback, Checkpoint, Trainer, TrainerConfig


class _ImageNet(nn.Module):
    """Linear model on the flattened image; records the images it sees in training and in eval mode."""

    def __init__(self, side: int = 8):
        super().__init__()
        self.linear = nn.Linear(side * side, 1)
        self.train_seen: list[tuple[np.ndarray, np.ndarray]] = []
        self.eval_seen: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, batch):
        seen = self.train_seen if self.training else self.eval_seen
        seen.append((batch["index"].numpy().copy(), batch["image"].detach().numpy().copy()))
        return {"logits": self.linear(batch["image"].flatten(1))[:, 0]}


def _images(n: int = 48, side: int = 8, seed: int = 0, present: np.ndarray | None = None) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    arrays = {
        "image": rng.normal(size=(n, 1, side, side)).astype(np.float32),
        "target": (np.arange(n) % 2).astype(np.float32),
    }
    if present is not None:
        arrays["image_present"] = present
    return ArrayDataset(arrays)


def _config(**kw):
    base = {"max_epochs": 2, "batch_size": 16, "patience": None, "device": "cpu", "seed": 5}
    return TrainerConfig(**{**base, **kw})


def _by_index(seen):
    index = np.concatenate([i for i, _ in seen])
    images = np.concatenate([x for _, x in seen])
    return index, images


# ------------------------------------------------------------------------------------------------- augment()
def test_augment_is_deterministic_given_the_generator_and_leaves_its_input_alone():
    x = torch.randn(10, 2, 12, 12)
    before = x.clone()
    config = ImageAugmentation(vflip=True, max_shift=3, max_rotation=15, max_zoom=0.1, intensity=0.2)
    a = augment(x, torch.Generator().manual_seed(0), config)
    b = augment(x, torch.Generator().manual_seed(0), config)
    c = augment(x, torch.Generator().manual_seed(1), config)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


def test_augment_with_nothing_enabled_is_the_identity():
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), ImageAugmentation(hflip=False, max_shift=0)), x)


def test_default_augment_flips_and_shifts_by_whole_pixels():
    x = torch.randn(32, 1, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0))
    flips = 0
    for i in range(len(x)):
        candidates = []
        for img, flipped in ((x[i], False), (x[i].flip(-1), True)):
            padded = F.pad(img, (2, 2, 2, 2))
            for dy in range(5):
                for dx in range(5):
                    if torch.allclose(out[i], padded[:, dy : dy + 8, dx : dx + 8], atol=1e-5):
                        candidates.append(flipped)
        assert candidates, f"image {i} is not a flipped/shifted copy of its input"
        flips += candidates[0]
    assert 0 < flips < len(x)  # both outcomes occur


def test_augment_rejects_a_batch_that_is_not_4d_float():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] float"):
        augment(torch.zeros(3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="float"):
        augment(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.Generator())


def test_augmentation_config_is_validated():
    with pytest.raises(ValidationError):
        ImageAugmentation(max_shift=-1)
    with pytest.raises(ValidationError):
        ImageAugmentation(rotation=10)  # unknown key
    assert TrainerConfig(image_augmentation={"max_rotation": 10}).image_augmentation == ImageAugmentation(
        max_rotation=10
    )


# ---------------------------------------------------------------------------------------------- in the trainer
def test_augmentation_changes_training_batches_only():
    train, val, test = _images(), _images(n=20, seed=1), _images(n=12, seed=2)
    torch.manual_seed(0)
    model = _ImageNet()
    trainer = Trainer(_config(image_augmentation=ImageAugmentation(max_rotation=10)))
    trainer.fit(model, train, val)
    index, images = _by_index(model.train_seen)
    assert images.shape == (2 * len(train), 1, 8, 8)
    changed = ~np.isclose(images, train["image"][index], atol=1e-6).all(axis=(1, 2, 3))
    assert changed.mean() > 0.9
    index, images = _by_index(model.eval_seen)  # validation after each epoch: untouched
    assert np.array_equal(images, val["image"][index])

    model.eval_seen.clear()
    trainer.predict(model, test)
    index, images = _by_index(model.eval_seen)
    assert np.array_equal(images, test["image"][index])
    assert np.array_equal(train["image"], _images()["image"])  # the dataset itself is not modified


def test_without_augmentation_training_batches_are_the_stored_images():
    train = _images()
    model = _ImageNet()
    Trainer(_config()).fit(model, train)
    index, images = _by_index(model.train_seen)
    assert np.array_equal(images, train["image"][index])


def test_augmentation_is_deterministic_by_seed():
    train = _images()
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = _ImageNet()
        Trainer(_config(seed=seed, image_augmentation={"max_shift": 2, "intensity": 0.1})).fit(model, train)
        index, images = _by_index(model.train_seen)
        runs.append((index, images, model.linear.weight.detach().clone()))
    (i0, x0, w0), (i1, x1, w1), (i2, x2, _) = runs
    assert np.array_equal(i0, i1) and np.array_equal(x0, x1) and torch.equal(w0, w1)
    assert not np.array_equal(x0, x2)


def test_rows_without_an_image_are_not_augmented():
    present = np.arange(48) % 3 != 0
    train = _images(present=present)
    train = train.with_arrays(image=np.where(present[:, None, None, None], train["image"], 0).astype(np.float32))
    model = _ImageNet()
    Trainer(_config(image_augmentation={"intensity": 0.5})).fit(model, train)
    index, images = _by_index(model.train_seen)
    absent = ~present[index]
    assert np.array_equal(images[absent], np.zeros_like(images[absent]))
    assert not np.allclose(images[~absent], train["image"][index][~absent])


def test_augmentation_without_an_image_array_is_an_error():
    data = ArrayDataset({"static": np.zeros((8, 2), np.float32), "target": np.arange(8) % 2 * 1.0})
    with pytest.raises(ValueError, match="no 'image' array"):
        Trainer(_config(image_augmentation={})).fit(nn.Linear(2, 1), data)


def test_resume_with_augmentation_matches_uninterrupted_run(tmp_path):
    train, val = _images(), _images(n=20, seed=1)
    config = _config(max_epochs=4, image_augmentation={"max_shift": 2, "max_rotation": 10}, lr_schedule="cosine")
    torch.manual_seed(0)
    model = _ImageNet()
    Trainer(config, callbacks=[Checkpoint(tmp_path, every_n_epochs=1)]).fit(model, train, val)
    torch.manual_seed(1)
    resumed = _ImageNet()
    Trainer(config).resume_from(tmp_path / "epoch_0001.pt").fit(resumed, train, val)
    assert torch.equal(model.linear.weight, resumed.linear.weight)
    assert torch.equal(model.linear.bias, resumed.linear.bias)


# ---------------------------------------------------------------------------------------------- lr schedule
class _RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_epoch_start(self, trainer):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule(schedule):
    record = _RecordLR()
    Trainer(_config(max_epochs=4, lr=0.1, lr_schedule=schedule), callbacks=[record]).fit(_ImageNet(), _images())
    if schedule == "constant":
        assert record.lrs == [0.1] * 4
    else:
        expected = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
        assert record.lrs == pytest.approx(expected)
