"""``model.image`` of a run config sets the CNN (blocks, channels, width) apart from the fusion width ``model.hidden``;
the older ``model.image_block`` still works, with a deprecation warning; image-only runs skip the baselines."""

import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.models.encoders.cnn import ResidualBlock
from healthfusion.models.hybrid import HybridModel
from healthfusion.workflows.common import make_featurizer
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.modeling import build_run_hybrid, hybrid_config
from healthfusion.workflows.train import run_training


def write_config(root, **model):
    cfg = {"name": "tiny-image", "out": str(root / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["image", "static"]}, "model": model}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root / "run.yaml"


@pytest.fixture(scope="module")
def image_featurizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-block")
    cohort = synthetic.build(root / "c", n_stays=40, seed=2)
    features = load_run_config(write_config(root)).features
    return make_featurizer(features, "mortality").fit(cohort, cohort.stay_ids.tolist())


@pytest.mark.parametrize(("block", "convs", "residual"), [("plain", 1, False), ("double", 2, False),
                                                          ("residual", 2, True)])
def test_image_block_sets_the_cnn_blocks(image_featurizer, block, convs, residual):
    image = hybrid_config(image_featurizer, hidden=8, image_block=block).image
    assert (image.convs_per_block, image.residual) == (convs, residual)
    cnn = HybridModel(hybrid_config(image_featurizer, hidden=8, image_block=block)).encoders["image"]
    assert any(isinstance(m, ResidualBlock) for m in cnn.modules()) == residual


def test_image_block_reaches_the_run_and_bad_names_are_errors(tmp_path, image_featurizer):
    config = load_run_config(write_config(tmp_path, image={"block": "residual"}, hidden=8))
    model, _ = build_run_hybrid(image_featurizer, config.model, config.training)
    assert any(isinstance(m, ResidualBlock) for m in model.encoders["image"].modules())
    with pytest.raises(ConfigError, match="image.block"):
        load_run_config(write_config(tmp_path, image={"block": "resnet"}))
    with pytest.raises(ValueError, match="image_block must be one of 'plain', 'double', 'residual', got 'resnet'"):
        hybrid_config(image_featurizer, image_block="resnet")


def test_old_image_block_key_still_works_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match="model.image_block is deprecated"):
        config = load_run_config(write_config(tmp_path, image_block="double", hidden=8))
    assert config.model.image.block == "double" and config.model.image_block is None
    with pytest.raises(ConfigError, match="image_block"):
        load_run_config(write_config(tmp_path, image_block="resnet"))


def test_image_encoder_width_and_channels_are_apart_from_hidden(tmp_path, image_featurizer):
    config = load_run_config(write_config(tmp_path, hidden=8, image={"channels": [4, 8], "width": 24}))
    model, _ = build_run_hybrid(image_featurizer, config.model, config.training)
    cnn = model.config.image
    assert (cnn.channels, cnn.out_dim) == ((4, 8), 24)
    assert model.config.fusion_dim == 8  # the fusion width is still model.hidden
    default = hybrid_config(image_featurizer, hidden=8).image
    assert (default.channels, default.out_dim) == ((16, 32, 64), 8)  # without model.image: as before
    with pytest.raises(ConfigError, match="channels"):
        load_run_config(write_config(tmp_path, image={"channels": []}))


def test_an_image_only_run_skips_the_baselines_in_one_line(tmp_path, caplog):
    import json
    import logging

    synthetic.write(tmp_path / "cohort", n_stays=60, seed=3)
    cfg = {"name": "images", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["image"]}, "model": {"hidden": 8, "image": {"channels": [4, 8]}},
           "training": {"max_epochs": 1, "batch_size": 16}, "evaluation": {"n_boot": 10, "audit": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_run_config(tmp_path / "run.yaml")
    assert config.baselines == ["logistic_regression"]  # the default, not emptied by hand
    with caplog.at_level(logging.INFO, logger="healthfusion.workflows.common"):
        run = run_training(config)
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "logistic_regression" in skipped[0].getMessage()
    assert set(json.loads((run / "metrics.json").read_text())["comparison"]) == {"hybrid"}
    cfg["ensemble"] = {"seeds": 2}  # gradient_boosting cannot join an image-only ensemble: named at load time
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="ensemble.members: \\[hybrid\\]"):
        load_run_config(tmp_path / "run.yaml")


def test_image_tta_reaches_the_saved_model_and_every_scorer(tmp_path):
    import pandas as pd

    from healthfusion.api import load_model
    from healthfusion.data.cohort import Cohort

    synthetic.write(tmp_path / "cohort", n_stays=60, seed=3)
    cfg = {"name": "images", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["image"]}, "model": {"hidden": 8, "image": {"channels": [4, 8], "tta": "flip"}},
           "training": {"max_epochs": 1, "batch_size": 16}, "evaluation": {"n_boot": 10, "audit": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(tmp_path / "run.yaml"))
    saved = HybridModel.from_pretrained(run / "model")
    assert saved.config.image.tta == "flip"
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    test = preds[preds["split"] == "test"].set_index("stay_id")["hybrid"]
    scored = load_model(run / "model").predict(Cohort.load(tmp_path / "cohort")).set_index("stay_id")
    assert (scored.loc[test.index, "probability"] - test).abs().max() < 1e-6  # predict applies the same TTA
    with pytest.raises(ConfigError, match="tta"):
        load_run_config(write_config(tmp_path, image={"tta": "mirror"}))
