"""``model.image_block`` of a run config sets the CNN's blocks (plain, double, residual) through ``hybrid_config``."""

import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.models.encoders.cnn import ResidualBlock
from healthfusion.models.hybrid import HybridModel
from healthfusion.workflows.common import make_featurizer
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.modeling import build_run_hybrid, hybrid_config


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
    config = load_run_config(write_config(tmp_path, image_block="residual", hidden=8))
    model, _ = build_run_hybrid(image_featurizer, config.model, config.training)
    assert any(isinstance(m, ResidualBlock) for m in model.encoders["image"].modules())
    with pytest.raises(ConfigError, match="image_block"):
        load_run_config(write_config(tmp_path, image_block="resnet"))
    with pytest.raises(ValueError, match="image_block must be one of 'plain', 'double', 'residual', got 'resnet'"):
        hybrid_config(image_featurizer, image_block="resnet")
