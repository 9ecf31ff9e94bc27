"""Multitask loss (per head kind, masking, uncertainty weighting, DEC) and seeded training on the one trainer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.encoders import MLPEncoderConfig
from healthfusion.models.multitask import MultitaskModel, MultitaskModelConfig, TaskSpec
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.callbacks import Checkpoint
from healthfusion.training.losses.multitask import (
    MultitaskLoss,
    MultitaskObjective,
    MultitaskObjectiveConfig,
    dec_loss,
)
from healthfusion.training.multitask import predict_multitask, target_key
from healthfusion.workflows.multitask import MULTITASK_PRESET

TASKS = (
    TaskSpec(name="bin", kind="binary"),
    TaskSpec(name="mc", kind="multiclass", n_outputs=3),
    TaskSpec(name="ml", kind="multilabel", n_outputs=2),
    TaskSpec(name="reg", kind="regression", target_shift=1.0, target_scale=2.0),
    TaskSpec(name="clu", kind="clustering", n_outputs=3),
)


def planted(n: int = 240, seed: int = 0) -> ArrayDataset:
    """Five static features; every supervised target depends on the first two."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    z = x[:, 0] - x[:, 1]
    arrays = {
        "static": x,
        target_key("bin"): (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(np.float32),
        target_key("mc"): np.digitize(z, [-0.5, 0.5]).astype(np.int64),
        target_key("ml"): np.stack([z > 0, x[:, 0] > 0], 1).astype(np.float32),
        target_key("reg"): (3 * z + 1 + rng.normal(scale=0.3, size=n)).astype(np.float32),
    }
    return ArrayDataset(arrays)


def fit_multitask(model, train, val, patience=5, callbacks=(), weighting="uncertainty", cluster_warmup_epochs=2,
                  criterion="sum", **training):
    """The multitask workflow's fit: the multitask objective on the one trainer, with its early stopping."""
    term = MultitaskObjective(MultitaskObjectiveConfig(weighting=weighting, criterion=criterion,
                                                       cluster_warmup_epochs=cluster_warmup_epochs))
    config = TrainerConfig(**{**MULTITASK_PRESET, **training, "patience": patience})
    trainer = Trainer(config, [term.early_stopping(patience, model.config.tasks), *callbacks], loss=term)
    return trainer.fit(model, train, val)


def tiny_model(seed: int = 0, tasks=TASKS, attention: bool = True) -> MultitaskModel:
    torch.manual_seed(seed)
    config = MultitaskModelConfig(static=MLPEncoderConfig(in_dim=5, hidden_sizes=(8,)), tasks=tasks, fusion_dim=8,
                                  task_dim=8, dropout=0.0, task_attention=attention)
    return MultitaskModel(config)


def test_each_task_loss_matches_its_reference():
    model = tiny_model()
    batch = planted(16).batch()
    out = model(batch)
    loss = MultitaskLoss(TASKS, weighting="fixed")
    z = out["logits"]
    assert torch.isclose(loss.task_loss(TASKS[0], z["bin"], batch, out["task_present"][:, 0])[0],
                         F.binary_cross_entropy_with_logits(z["bin"], batch[target_key("bin")]))
    assert torch.isclose(loss.task_loss(TASKS[1], z["mc"], batch, out["task_present"][:, 1])[0],
                         F.cross_entropy(z["mc"], batch[target_key("mc")]))
    assert torch.isclose(loss.task_loss(TASKS[2], z["ml"], batch, out["task_present"][:, 2])[0],
                         F.binary_cross_entropy_with_logits(z["ml"], batch[target_key("ml")]))
    standardised = (batch[target_key("reg")] - 1.0) / 2.0
    assert torch.isclose(loss.task_loss(TASKS[3], z["reg"], batch, out["task_present"][:, 3])[0],
                         F.mse_loss(z["reg"], standardised))
    total, parts = loss(out, batch)
    assert torch.isclose(total, sum(parts.values()))


def test_dec_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    log_q = torch.log_softmax(torch.randn(7, 3), dim=1)
    q = log_q.exp()
    p = q**2 / q.sum(0)
    p = p / p.sum(1, keepdim=True)
    kl = (p * (p.log() - log_q)).sum(1).mean()
    mean_q = q.mean(0)
    spread = (mean_q * (mean_q.log() + np.log(3))).sum()
    assert torch.isclose(dec_loss(log_q, balance=0.5), kl + 0.5 * spread, atol=1e-6)
    assert dec_loss(log_q[:0]).item() == 0.0


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
@pytest.mark.parametrize("masked", ["bin", "mc", "ml", "reg"])
def test_masking_a_tasks_labels_removes_its_gradient(weighting, masked):
    """All labels of one task missing: its head gets no gradient and the shared encoder's gradient equals the one
    of a model trained without that task's loss."""
    data = planted(32)
    batch = data.batch()
    target = batch[target_key(masked)]
    batch[target_key(masked)] = torch.full_like(target, -1) if not target.is_floating_point() else \
        torch.full_like(target, float("nan"))
    model = tiny_model()
    loss_fn = MultitaskLoss(TASKS, weighting=weighting)
    total, _ = loss_fn(model(batch), batch, use_clustering=False)
    total.backward()
    head_grad = model.heads[masked].linear.weight.grad
    assert head_grad is None or torch.all(head_grad == 0)
    if loss_fn.log_vars is not None:
        assert loss_fn.log_vars.grad[[t.name for t in TASKS].index(masked)] == 0
    shared = model.backbone.encoders["static"].layers[0].weight.grad.clone()

    reference = tiny_model()
    rest = MultitaskLoss(TASKS, weighting=weighting)
    full_batch = data.batch()
    out = reference(full_batch)
    total = None
    for i, task in enumerate(TASKS):
        if task.kind == "clustering" or task.name == masked:
            continue
        term, _ = rest.task_loss(task, out["logits"][task.name], full_batch, out["task_present"][:, i])
        if rest.log_vars is not None:
            term = torch.exp(-rest.log_vars[i]) * term + rest.log_vars[i]
        total = term if total is None else total + term
    total.backward()
    assert torch.allclose(shared, reference.backbone.encoders["static"].layers[0].weight.grad, atol=1e-6)


def test_rows_without_the_tasks_modalities_are_masked():
    tasks = (TaskSpec(name="bin", kind="binary"),)
    model = tiny_model(tasks=tasks)
    batch = planted(8).batch()
    batch["static_present"] = torch.tensor([True] * 4 + [False] * 4)
    out = model(batch)
    loss, n = MultitaskLoss(tasks).task_loss(tasks[0], out["logits"]["bin"], batch, out["task_present"][:, 0])
    assert n.item() == 4


def test_unknown_weight_names_are_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        MultitaskLoss(TASKS, weights={"nope": 2.0})


def test_training_learns_and_is_reproducible_by_seed():
    train, val, test = planted(240, 0), planted(80, 1), planted(120, 2)
    config = {"max_epochs": 8, "batch_size": 32, "lr": 0.01, "patience": 3, "cluster_warmup_epochs": 1, "seed": 3}
    runs = []
    for _ in range(2):
        model = tiny_model(seed=3)
        history = fit_multitask(model, train, val, **config)
        runs.append(predict_multitask(model, test))
    a, b = runs
    for name in a["predictions"]:
        np.testing.assert_array_equal(a["predictions"][name], b["predictions"][name])
    np.testing.assert_array_equal(a["task_attention"], b["task_attention"])
    assert 0 <= history.best_epoch < 8
    losses = history.val_loss
    assert min(losses) < losses[0]
    assert set(history.metrics) >= {"val_loss:bin", "val_loss:clu", "weight:bin"}
    pred = a["predictions"]["reg"]
    assert np.corrcoef(pred, test[target_key("reg")])[0, 1] > 0.5  # learned on the original scale
    assert a["predictions"]["clu"].shape == (120, 3)


def test_training_needs_targets():
    data = planted(40).without(target_key("mc"))
    with pytest.raises(ValueError, match="target:mc"):
        fit_multitask(tiny_model(), data, data, max_epochs=1)


def test_predict_rejects_unknown_removed_task():
    with pytest.raises(KeyError, match="nope"):
        predict_multitask(tiny_model(), planted(10), removed=["nope"])


def test_uncertainty_weighting_leaves_clustering_at_its_fixed_weight():
    loss = MultitaskLoss(TASKS, weights={"clu": 0.5}, weighting="uncertainty")
    with torch.no_grad():
        loss.log_vars.fill_(-1.0)
    weights = loss.task_weights()
    assert weights["clu"] == 0.5 and weights["bin"] == pytest.approx(np.e)


def test_relative_monitor_weighs_tasks_alike():
    train, val = planted(120, 0), planted(60, 1)
    history = fit_multitask(tiny_model(), train, val, max_epochs=3, batch_size=32, patience=3, criterion="relative",
                            cluster_warmup_epochs=1)
    assert history.val_loss[0] == pytest.approx(1.0)
    supervised = [t.name for t in TASKS if t.kind != "clustering"]
    per_task = {t: history.metrics[f"val_loss:{t}"] for t in supervised}
    expected = np.mean([per_task[t][-1] / per_task[t][0] for t in supervised])
    assert history.val_loss[-1] == pytest.approx(expected)


def test_no_stop_before_the_clustering_window_and_resume(tmp_path):
    train, val = planted(120, 0), planted(60, 1)
    kw = {"max_epochs": 4, "batch_size": 32, "patience": 1, "lr": 1e-12, "cluster_warmup_epochs": 2}
    history = fit_multitask(tiny_model(), train, val, **kw)  # lr ~0: no improvement beyond min_delta after epoch 0
    assert len(history) >= 3  # no stop before warm-up + patience
    full = tiny_model()
    kw["lr"] = 0.01
    fit_multitask(full, train, val, callbacks=[Checkpoint(tmp_path)], **kw)
    resumed = tiny_model(seed=5)
    term = MultitaskObjective(MultitaskObjectiveConfig(cluster_warmup_epochs=2))
    config = TrainerConfig(**{**MULTITASK_PRESET, **{k: v for k, v in kw.items() if k != "cluster_warmup_epochs"}})
    trainer = Trainer(config, [term.early_stopping(1, TASKS)], loss=term).resume_from(tmp_path / "epoch_0002.pt")
    trainer.fit(resumed, train, val)
    for (name, pa), pb in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
