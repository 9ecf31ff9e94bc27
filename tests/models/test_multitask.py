"""MultitaskModel: shapes per head kind, task attention invariants, missing modalities, save/load, bad configs."""

import pytest
import torch
from pydantic import ValidationError

from healthfusion.models.base import load_network
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.models.multitask import (
    ClusteringHead,
    MultitaskModel,
    MultitaskModelConfig,
    TaskAttention,
    TaskSpec,
)
from tests.models.conftest import SIZES, tiny_batch

TASKS = (
    TaskSpec(name="death", kind="binary"),
    TaskSpec(name="unit", kind="multiclass", n_outputs=4),
    TaskSpec(name="dx", kind="multilabel", n_outputs=3, modalities=("static",)),
    TaskSpec(name="los", kind="regression", target_shift=5.0, target_scale=2.0),
    TaskSpec(name="pheno", kind="clustering", n_outputs=3),
)


def tiny_config(**overrides) -> MultitaskModelConfig:
    fields = dict(
        ts=LSTMEncoderConfig(n_variables=SIZES["V"], hidden_size=8, attention_dim=8),
        static=MLPEncoderConfig(in_dim=SIZES["F"], hidden_sizes=(8,)),
        tasks=TASKS, fusion_dim=8, task_dim=8,
    )
    fields.update(overrides)
    return MultitaskModelConfig(**fields)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MultitaskModel(tiny_config()).eval()


def test_each_head_kind_has_its_shape(model):
    b = SIZES["B"]
    out = model(tiny_batch())
    shapes = {name: tuple(z.shape) for name, z in out["logits"].items()}
    assert shapes == {"death": (b,), "unit": (b, 4), "dx": (b, 3), "los": (b,), "pheno": (b, 3)}
    assert out["representations"].shape == (b, 5, 8)
    assert out["task_attention"].shape == (b, 5, 5)
    assert out["self_weight"].shape == (b, 5)
    preds = model.predictions(out["logits"])
    assert torch.allclose(preds["unit"].sum(1), torch.ones(b), atol=1e-5)
    assert torch.allclose(preds["pheno"].sum(1), torch.ones(b), atol=1e-5)
    assert ((preds["dx"] >= 0) & (preds["dx"] <= 1)).all()
    assert torch.allclose(preds["los"], out["logits"]["los"] * 2.0 + 5.0)


def test_attention_rows_sum_to_one_and_skip_self(model):
    out = model(tiny_batch())
    att, beta = out["task_attention"], out["self_weight"]
    assert torch.allclose(att.sum(2), torch.ones(att.shape[:2]), atol=1e-5)
    assert torch.all(torch.diagonal(att, dim1=1, dim2=2) == 0)
    assert ((beta > 0) & (beta < 1)).all()


def test_removed_task_gets_no_attention_and_changes_others(model):
    batch = tiny_batch()
    removed = torch.tensor([True, False, False, False, False])
    out = model(batch, removed=removed)
    assert torch.all(out["task_attention"][:, :, 0] == 0)
    full = model(batch)
    assert not torch.allclose(out["logits"]["los"], full["logits"]["los"])


def test_without_task_attention_each_task_uses_only_itself():
    torch.manual_seed(0)
    model = MultitaskModel(tiny_config(task_attention=False)).eval()
    out = model(tiny_batch())
    assert torch.all(out["self_weight"] == 1) and torch.all(out["task_attention"] == 0)
    assert model.attention is None


def test_task_with_absent_modalities_is_flagged(model):
    b = SIZES["B"]
    flags = [True] * b
    flags[2] = False
    out = model(tiny_batch(static=flags))
    present = out["task_present"]
    assert present[:, 0].all()  # death reads ts and static
    assert present[:, 2].tolist() == flags  # dx reads static only
    assert torch.isfinite(out["logits"]["dx"]).all()
    # an absent task is never attended to
    assert torch.all(out["task_attention"][2, :, 2] == 0)


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded, _ = load_network(tmp_path / "m")
    assert isinstance(loaded, MultitaskModel)
    batch = tiny_batch()
    for name, z in model(batch)["logits"].items():
        assert torch.allclose(loaded(batch)["logits"][name], z)


def test_clustering_head_is_student_t_soft_assignment():
    head = ClusteringHead(2, 2, alpha=1.0)
    with torch.no_grad():
        head.centroids.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    q = head(torch.tensor([[0.0, 0.0]])).exp()
    k = torch.tensor([1.0, 1.0 / (1.0 + 25.0)])
    assert torch.allclose(q[0], k / k.sum(), atol=1e-6)


def test_single_task_attention_is_identity():
    att = TaskAttention(1, 4)
    reps = torch.randn(3, 1, 4)
    h, a, beta = att(reps, torch.ones(3, 1, dtype=torch.bool))
    assert torch.equal(h, reps) and torch.all(a == 0) and torch.all(beta == 1)


@pytest.mark.parametrize("overrides, match", [
    ({"tasks": (TaskSpec(name="a", kind="binary"), TaskSpec(name="a", kind="regression"))}, "unique"),
    ({"tasks": (TaskSpec(name="a", kind="binary", modalities=("image",)),)}, "does not configure"),
    ({"tasks": ()}, "at least 1"),
    ({"ts": None, "static": None}, "at least one modality"),
])
def test_bad_configs_are_rejected(overrides, match):
    with pytest.raises(ValidationError, match=match):
        tiny_config(**overrides)


@pytest.mark.parametrize("kind, n", [("clustering", 1), ("multiclass", 1), ("binary", 2)])
def test_bad_task_outputs_are_rejected(kind, n):
    with pytest.raises(ValidationError):
        TaskSpec(name="t", kind=kind, n_outputs=n)


def test_gate_init_sets_the_starting_self_weight():
    torch.manual_seed(0)
    beta = MultitaskModel(tiny_config(gate_init=3.0))(tiny_batch())["self_weight"]
    assert torch.allclose(beta, torch.full_like(beta, torch.sigmoid(torch.tensor(3.0)).item()))


@pytest.mark.parametrize("flows", [True, False])
def test_cluster_gradient_controls_whether_clustering_reshapes_the_encoders(flows):
    torch.manual_seed(0)
    model = MultitaskModel(tiny_config(cluster_gradient=flows))
    model(tiny_batch())["logits"]["pheno"].logsumexp(1).sum().backward()
    grad = model.backbone.encoders["static"].layers[0].weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == flows
    assert model.towers["pheno"][0].weight.grad.abs().sum() > 0


def test_tasks_read_any_subset_of_the_five_modalities():
    from tests.models.conftest import tiny_hybrid_config

    enc = tiny_hybrid_config()
    tasks = (TaskSpec(name="notes", kind="binary", modalities=("text",)),
             TaskSpec(name="scan", kind="multilabel", n_outputs=2, modalities=("image",)),
             TaskSpec(name="all", kind="regression"))
    torch.manual_seed(0)
    model = MultitaskModel(MultitaskModelConfig(ts=enc.ts, static=enc.static, codes=enc.codes, text=enc.text,
                                                image=enc.image, tasks=tasks, task_dim=8, fusion="attention"))
    b = SIZES["B"]
    image = [True, False] * (b // 2)
    out = model.eval()(tiny_batch(image=image))
    assert out["task_present"][:, 1].tolist() == image
    assert out["task_present"][:, [0, 2]].all()
    before = model(tiny_batch(image=image))["logits"]["notes"]
    changed = tiny_batch(image=image)
    changed["image"] = changed["image"] + 1.0  # an input the notes task does not read ...
    after_notes = model(changed)["logits"]["notes"]
    # ... reaches it only through the task attention (from the tasks that read images)
    no_attention = MultitaskModel(model.config.model_copy(update={"task_attention": False})).eval()
    assert torch.equal(no_attention(tiny_batch(image=image))["logits"]["notes"], no_attention(changed)["logits"]["notes"])
    assert not torch.allclose(before, after_notes)
