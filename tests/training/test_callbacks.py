import io

import pytest
import torch
from rich.console import Console

from healthfusion.training import (
    Callback,
    Checkpoint,
    EarlyStopping,
    ProgressCallback,
    Trainer,
    TrainerConfig,
)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Script(Callback):
    """Overwrites the monitored metric with scripted values (runs before EarlyStopping)."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, trainer):
        trainer.metrics["val_auroc"] = self.values[trainer.epoch]


class _Snapshots(Callback):
    def __init__(self):
        self.weights = []

    def on_epoch_end(self, trainer):
        self.weights.append(_weights(trainer.model))


def test_early_stopping_sets_flag_and_restores_best_weights(tiny_net, planted):
    script = _Script([0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.95])
    snaps = _Snapshots()
    stopper = EarlyStopping(monitor="val_auroc", mode="max", patience=3)
    model = tiny_net(5)
    trainer = Trainer(TrainerConfig(max_epochs=7, device="cpu"), callbacks=[script, snaps, stopper])
    history = trainer.fit(model, planted(n=60), planted(n=30, seed=1))
    assert len(history) == 5  # best at epoch 1, three epochs without improvement -> stop after epoch 4
    assert trainer.should_stop and history.stopped_early
    assert stopper.best_epoch == history.best_epoch == 1 and stopper.stopped_epoch == 4
    final = _weights(model)
    assert all(torch.equal(final[k], snaps.weights[1][k]) for k in final)
    assert not all(torch.equal(final[k], snaps.weights[4][k]) for k in final)


def test_early_stopping_treats_nan_as_no_improvement_and_supports_min_mode(tiny_net, planted):
    stopper = EarlyStopping(monitor="val_auroc", patience=2)
    trainer = Trainer(
        TrainerConfig(max_epochs=5, device="cpu"), callbacks=[_Script([0.6] + [float("nan")] * 4), stopper]
    )
    history = trainer.fit(tiny_net(5), planted(n=40), planted(n=20, seed=1))
    assert len(history) == 3 and stopper.best_epoch == 0
    loss_stopper = EarlyStopping(monitor="val_loss", mode="min", patience=50)
    Trainer(TrainerConfig(max_epochs=3, lr=1e-2, device="cpu"), callbacks=[loss_stopper]).fit(
        tiny_net(5), planted(n=80), planted(n=40, seed=1)
    )
    assert loss_stopper.best_score is not None and loss_stopper.stopped_epoch is None


def test_early_stopping_needs_a_logged_metric(tiny_net, planted):
    trainer = Trainer(
        TrainerConfig(max_epochs=2, device="cpu"), callbacks=[EarlyStopping(monitor="val_auroc")]
    )
    with pytest.raises(ValueError, match="Pass validation data"):
        trainer.fit(tiny_net(5), planted(n=20))


def _config(**kw):
    return TrainerConfig(max_epochs=5, batch_size=16, patience=2, seed=3, device="cpu", **kw)


@pytest.mark.parametrize("imbalance", ["none", "oversample"])
def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_net, planted, tmp_path, imbalance):
    train, val = planted(n=96), planted(n=48, seed=1)
    torch.manual_seed(0)
    model = tiny_net(5, dropout=0.2)
    full = Trainer(_config(imbalance=imbalance), callbacks=[Checkpoint(tmp_path, every_n_epochs=1)])
    history = full.fit(model, train, val)
    assert (tmp_path / "epoch_0001.pt").is_file()

    torch.manual_seed(123)  # a differently initialised model: everything must come from the checkpoint
    resumed_model = tiny_net(5, dropout=0.2)
    resumed = Trainer(
        _config(imbalance=imbalance), callbacks=[Checkpoint(tmp_path / "again", every_n_epochs=1)]
    )
    resumed_history = resumed.resume_from(tmp_path / "epoch_0001.pt").fit(resumed_model, train, val)

    final, again = _weights(model), _weights(resumed_model)
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert resumed_history.train_loss == history.train_loss
    assert resumed_history.best_epoch == history.best_epoch
    assert resumed.start_epoch == 2


def test_checkpoint_loads_with_weights_only_and_contains_everything(tiny_net, planted, tmp_path):
    checkpoint = Checkpoint(tmp_path / "ckpt", every_n_epochs=2)
    Trainer(_config(), callbacks=[checkpoint]).fit(tiny_net(5), planted(n=40), planted(n=20, seed=1))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files[0] == "epoch_0001.pt" and all(not f.endswith(".tmp") for f in files)
    state = torch.load(checkpoint.last_path, weights_only=True)
    assert {"model", "optimizer", "trainer", "callbacks", "scaler"} <= set(state)
    assert set(state["callbacks"]) == {"EarlyStopping", "Checkpoint"}
    assert isinstance(state["trainer"]["numpy_rng"], dict)


def test_resume_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a healthfusion training checkpoint"):
        Trainer().resume_from(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        Trainer().resume_from(tmp_path / "missing.pt")


def test_progress_callback_renders_quietly(tiny_net, planted):
    buffer = io.StringIO()
    progress = ProgressCallback(console=Console(file=buffer, width=120))
    Trainer(TrainerConfig(max_epochs=2, device="cpu"), callbacks=[progress]).fit(
        tiny_net(5), planted(n=40), planted(n=20, seed=1)
    )
    text = buffer.getvalue()
    assert "epoch" in text and "train_loss=" in text and "val_auroc=" in text
    assert progress._progress is None  # stopped


def test_base_callback_hooks_are_no_ops():
    cb = Callback()
    for hook in ("on_fit_start", "on_epoch_start", "on_epoch_end", "on_fit_end"):
        assert getattr(cb, hook)(None) is None
    assert cb.state_dict() == {}

