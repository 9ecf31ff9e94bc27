import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from healthfusion.features.dataset import ArrayDataset
from healthfusion.training import Callback, Trainer, TrainerConfig
from healthfusion.training.config import resolve_device
from healthfusion.training.sampling import balanced_order


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_learns_a_planted_signal(tiny_net, planted):
    data = planted(n=500, seed=0)
    train, val, test = data[np.arange(300)], data[np.arange(300, 400)], data[np.arange(400, 500)]
    torch.manual_seed(0)
    model = tiny_net(5, hidden=16)
    trainer = Trainer(TrainerConfig(max_epochs=30, batch_size=32, lr=1e-2, patience=5, device="cpu"))
    history = trainer.fit(model, train, val)
    p = trainer.predict(model, test)
    assert p.shape == (100,) and np.all((p >= 0) & (p <= 1))
    assert roc_auc_score(test["target"], p) > 0.8
    assert history.monitor == "val_auroc"
    assert history.best_epoch is not None
    assert len(history.train_loss) == len(history.val_metric) == len(history.epoch_seconds)
    assert history.train_loss[-1] < history.train_loss[0]


def test_same_seed_gives_identical_weights(tiny_net, planted):
    data = planted(n=120)
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        model = tiny_net(5, dropout=0.3)
        Trainer(TrainerConfig(max_epochs=3, batch_size=16, seed=7, device="cpu")).fit(model, data, data[:40])
        results.append(_weights(model))
    assert _same(*results)
    torch.manual_seed(1)
    model = tiny_net(5, dropout=0.3)
    Trainer(TrainerConfig(max_epochs=3, batch_size=16, seed=8, device="cpu")).fit(model, data, data[:40])
    assert not _same(results[0], _weights(model))


class _RecordIndices(torch.nn.Module):
    """Wraps a model and records the ``index`` of every training sample it sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []

    def forward(self, batch):
        if self.training:
            self.seen.append(batch["index"].numpy().copy())
        return self.inner(batch)


def test_oversampling_yields_balanced_epochs(tiny_net):
    rng = np.random.default_rng(0)
    y = np.array([1.0] * 10 + [0.0] * 50)
    data = ArrayDataset({"static": rng.normal(size=(60, 3)).astype(np.float32), "target": y})
    model = _RecordIndices(tiny_net(3))
    config = TrainerConfig(max_epochs=2, batch_size=16, imbalance="oversample", device="cpu")
    Trainer(config).fit(model, data)
    seen = np.concatenate(model.seen)
    assert seen.size == 2 * 100  # two epochs of 50 + 50
    for epoch in (seen[:100], seen[100:]):
        assert np.sum(y[epoch] == 1) == np.sum(y[epoch] == 0) == 50
        assert set(np.flatnonzero(y == 1)) <= set(epoch)  # every minority sample appears


def test_balanced_order_multiclass_keeps_missing_once():
    labels = np.array([0, 0, 0, 0, 1, 2, 2, -1])
    order = balanced_order(labels, np.random.default_rng(0))
    counts = np.bincount(labels[order] + 1)
    assert counts.tolist() == [1, 4, 4, 4]
    assert np.array_equal(order, balanced_order(labels, np.random.default_rng(0)))


def test_without_oversampling_each_epoch_is_a_permutation(tiny_net, planted):
    data = planted(n=50)
    model = _RecordIndices(tiny_net(5))
    Trainer(TrainerConfig(max_epochs=2, batch_size=8, device="cpu")).fit(model, data)
    seen = np.concatenate(model.seen)
    assert sorted(seen[:50]) == list(range(50)) and sorted(seen[50:]) == list(range(50))
    assert not np.array_equal(seen[:50], seen[50:])


@pytest.mark.parametrize(
    ("kind", "n_out", "target", "metric"),
    [
        ("multiclass", 3, lambda rng, n: rng.integers(-1, 3, n), "val_accuracy"),
        ("multilabel", 2, lambda rng, n: (rng.random((n, 2)) < 0.5).astype(np.float32), "val_macro_auroc"),
        ("regression", None, lambda rng, n: rng.normal(size=n).astype(np.float32), "val_neg_mse"),
    ],
)
def test_other_head_kinds_train_and_predict(tiny_net, kind, n_out, target, metric):
    rng = np.random.default_rng(0)
    n = 64
    data = ArrayDataset({"static": rng.normal(size=(n, 4)).astype(np.float32), "target": target(rng, n)})
    model = tiny_net(4, n_out=n_out)
    trainer = Trainer(TrainerConfig(max_epochs=2, batch_size=16, device="cpu"))
    history = trainer.fit(model, data, data[:32], head_kind=kind)
    assert history.monitor == metric and np.isfinite(history.val_metric).all()
    assert set(trainer.metrics) == {"train_loss", "val_loss", metric}
    out = trainer.predict(model, data.without("target"))
    assert out.shape == ((n,) if n_out is None else (n, n_out))
    if kind == "multiclass":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_class_weight_and_grad_clip_run(tiny_net, planted):
    data = planted(n=80)
    config = TrainerConfig(max_epochs=2, imbalance="class_weight", grad_clip=1.0, num_threads=1, device="cpu")
    history = Trainer(config).fit(tiny_net(5), data)
    assert len(history) == 2 and history.val_loss == [None, None] and history.best_epoch is None


def test_predict_restores_mode_and_keeps_no_graph(tiny_net, planted):
    model = tiny_net(5, dropout=0.5)
    model.train()
    trainer = Trainer(TrainerConfig(device="cpu"))
    a = trainer.predict(model, planted(n=20), head_kind="binary")
    b = trainer.predict(model, planted(n=20), head_kind="binary")
    assert model.training
    np.testing.assert_array_equal(a, b)  # eval mode: dropout off
    assert a.dtype == np.float32


def test_bad_inputs_raise_with_hints(tiny_net, planted):
    data = planted(n=20)
    trainer = Trainer(TrainerConfig(max_epochs=1, device="cpu"))
    with pytest.raises(ValueError, match="no 'target'"):
        trainer.fit(tiny_net(5), data.without("target"))
    with pytest.raises(ValueError, match="unexpected value"):
        trainer.fit(tiny_net(5), data.with_arrays(target=np.full(20, 2.0)))
    with pytest.raises(ValueError, match="oversample"):
        Trainer(TrainerConfig(imbalance="oversample")).fit(tiny_net(5), data, head_kind="regression")
    with pytest.raises(ValueError, match="monitor"):
        Trainer(TrainerConfig(monitor="val_accuracy")).fit(tiny_net(5), data, data, head_kind="binary")
    with pytest.raises(ValueError, match="head_kind"):
        Trainer().predict(tiny_net(5), data)
    with pytest.raises(TypeError, match="ArrayDataset"):
        trainer.fit(tiny_net(5), {"static": data["static"]})
    with pytest.raises(ValueError, match="class id 3"):
        trainer.fit(tiny_net(5, n_out=2), data.with_arrays(target=np.arange(20) % 4), head_kind="multiclass")

    class NoDict(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(5))

        def forward(self, batch):
            return batch["static"] @ self.w

    with pytest.raises(TypeError, match="'logits'"):
        trainer.fit(NoDict(), data)


def test_config_forbids_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="lr_rate"):
        TrainerConfig(lr_rate=0.1)
    with pytest.raises(ValueError):
        TrainerConfig(batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cpu_is_the_default_and_cuda_request_explains(tiny_net, planted, caplog):
    assert resolve_device(TrainerConfig().device).type == "cpu"
    with pytest.raises(ValueError, match="device='auto'"):
        resolve_device("cuda")
    with caplog.at_level("WARNING", logger="healthfusion.training.trainer"):
        Trainer(TrainerConfig(max_epochs=1, mixed_precision=True)).fit(tiny_net(5), planted(n=20))
    assert "no effect" in caplog.text


class _Interrupt(Callback):
    def on_batch_end(self, trainer, batch_index):
        if trainer.epoch == 1:
            raise KeyboardInterrupt


class _Seen(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("start")

    def on_fit_end(self, trainer):
        self.calls.append("end")

    def on_exception(self, trainer, exception):
        self.calls.append(type(exception).__name__)


def test_exceptions_reach_callbacks_and_propagate(tiny_net, planted):
    seen = _Seen()
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainerConfig(max_epochs=3, device="cpu"), callbacks=[seen, _Interrupt()]).fit(
            tiny_net(5), planted(40)
        )
    assert seen.calls == ["start", "KeyboardInterrupt"]


def test_model_never_sees_the_target(planted):
    class Strict(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 1)

        def forward(self, batch):
            assert "target" not in batch and "index" in batch
            return {"logits": self.lin(batch["static"])[:, 0]}

    data = planted(n=30)
    trainer = Trainer(TrainerConfig(max_epochs=1, device="cpu"))
    trainer.fit(Strict(), data, data)
    trainer.predict(Strict(), data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_fit_and_predict(tiny_net, planted):
    data = planted(n=200)
    model = tiny_net(5)
    config = TrainerConfig(max_epochs=3, device="cuda", mixed_precision=True, grad_clip=1.0)
    trainer = Trainer(config)
    history = trainer.fit(model, data, data[:50])
    assert next(model.parameters()).is_cuda and np.isfinite(history.train_loss).all()
    p = trainer.predict(model, data)
    assert p.shape == (200,) and p.dtype == np.float32


def test_torch_threads_sets_and_restores_even_on_error():
    from healthfusion.training.config import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
