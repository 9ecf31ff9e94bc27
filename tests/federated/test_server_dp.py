"""DP on the updates at the server: clipping bounds each site's update, the noise has the stated scale, and the
site-level epsilon is Opacus's accountant at sampling rate 1 over the aggregated rounds."""

import numpy as np
import pytest
import torch

from healthfusion.federated.aggregation import AggregationError, clip_update, dp_mean
from healthfusion.federated.server import FederatedConfig, ServerPrivacyConfig, run_rounds
from healthfusion.training import TrainerConfig

from .helpers import TinyLogistic


def test_clip_update_scales_floats_only_and_reports_the_norm():
    update = [np.array([3.0, 4.0]), np.array([0.0]), np.array([7], dtype=np.int64)]
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped[0], [0.6, 0.8])
    assert clipped[2].dtype == np.int64 and clipped[2][0] == 7
    same, _ = clip_update(update, 10.0)
    np.testing.assert_allclose(same[0], [3.0, 4.0])
    with pytest.raises(AggregationError, match="clip_norm must be > 0"):
        clip_update(update, 0.0)


def test_dp_mean_without_noise_is_the_uniform_mean_of_clipped_updates():
    current = [np.zeros(2, dtype=np.float32), np.array([4], dtype=np.int64)]
    a = [np.array([3.0, 4.0], dtype=np.float32), np.array([6], dtype=np.int64)]   # norm 5 -> clipped to 1
    b = [np.array([0.1, 0.0], dtype=np.float32), np.array([8], dtype=np.int64)]   # norm 0.1 -> unchanged
    new, norms = dp_mean(current, [a, b], clip_norm=1.0, noise_multiplier=0.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(new[0], [(0.6 + 0.1) / 2, 0.4], rtol=1e-6)
    assert new[0].dtype == np.float32 and new[1].tolist() == [7]
    assert norms == pytest.approx([5.0, 0.1])
    with pytest.raises(AggregationError, match="noise_multiplier must be >= 0"):
        dp_mean(current, [a], 1.0, -1.0, np.random.default_rng(0))
    with pytest.raises(AggregationError, match="same model architecture"):
        dp_mean(current, [[np.zeros(3, dtype=np.float32), np.array([1])]], 1.0, 0.0, np.random.default_rng(0))


def test_dp_mean_noise_has_standard_deviation_sigma_c_over_n():
    current = [np.zeros(20000)]
    updates = [[np.zeros(20000)] for _ in range(4)]
    new, _ = dp_mean(current, updates, clip_norm=2.0, noise_multiplier=1.5, rng=np.random.default_rng(1))
    assert new[0].std() == pytest.approx(1.5 * 2.0 / 4, rel=0.03) and abs(new[0].mean()) < 0.02


def test_server_dp_rounds_report_opacus_site_level_epsilon(tiny_sites):
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    cfg = FederatedConfig(rounds=3, server_privacy=ServerPrivacyConfig(clip_norm=0.5, noise_multiplier=2.0))
    torch.manual_seed(0)
    result = run_rounds(TinyLogistic(), tiny_sites, cfg, TrainerConfig(max_epochs=1, batch_size=16, lr=0.05,
                                                                         progress=False), evaluate_every=0)
    reference = RDPAccountant()
    for record in result.rounds:
        reference.step(noise_multiplier=2.0, sample_rate=1.0)
        assert record["server_epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
        assert set(record["update_norm"]) == {"a", "b", "c"} and all(v > 0 for v in record["update_norm"].values())
    assert result.rounds[0]["server_epsilon"] < result.rounds[-1]["server_epsilon"]
    with pytest.raises(ValueError, match="server_privacy clips and averages"):
        FederatedConfig(aggregation="median", server_privacy=ServerPrivacyConfig(clip_norm=1.0, noise_multiplier=1.0))
