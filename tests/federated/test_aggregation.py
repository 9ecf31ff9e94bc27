"""Aggregation rules against hand-computed values on tiny inputs."""

import numpy as np
import pytest

from healthfusion.federated.aggregation import (
    AggregationError,
    ServerOptState,
    coordinate_median,
    fedavg,
    get_aggregator,
    server_step,
    trimmed_mean,
)


def test_fedavg_weights_by_sample_count():
    a = [np.array([1.0, 2.0]), np.array([[0.0]])]
    b = [np.array([3.0, 6.0]), np.array([[4.0]])]
    out = fedavg([a, b], weights=[1, 3])
    np.testing.assert_allclose(out[0], [2.5, 5.0])  # (1*1 + 3*3)/4, (2 + 18)/4
    np.testing.assert_allclose(out[1], [[3.0]])
    np.testing.assert_allclose(fedavg([a, b])[0], [2.0, 4.0])  # equal weights


def test_median_and_trimmed_mean_resist_one_outlier():
    sites = [[np.array([1.0, -1.0])], [np.array([2.0, 0.0])], [np.array([3.0, 1.0])], [np.array([100.0, 50.0])]]
    np.testing.assert_allclose(coordinate_median(sites)[0], [2.5, 0.5])  # even count: mean of the middle two
    np.testing.assert_allclose(coordinate_median(sites[:3])[0], [2.0, 0.0])
    np.testing.assert_allclose(trimmed_mean(sites, beta=0.25)[0], [2.5, 0.5])  # drop 1 low + 1 high of 4
    np.testing.assert_allclose(trimmed_mean(sites, beta=0.0)[0], [26.5, 12.5])  # plain mean


def test_server_optimisers_first_and_second_step():
    cur, avg = [np.array([0.0])], [np.array([1.0])]
    new, st = server_step("adagrad", cur, avg, lr=0.1, beta1=0.9, tau=1e-3)
    np.testing.assert_allclose(new[0], [0.1 * 0.1 / (1.0 + 1e-3)])  # m=0.1, v=1
    assert st.step == 1
    new2, st2 = server_step("adagrad", new, [np.array([1.0])], st, lr=0.1, beta1=0.9, tau=1e-3)
    d = 1.0 - new[0][0]
    m, v = 0.9 * 0.1 + 0.1 * d, 1.0 + d**2
    np.testing.assert_allclose(new2[0], [new[0][0] + 0.1 * m / (np.sqrt(v) + 1e-3)])
    assert st.v[0][0] == 1.0  # the previous state is not modified
    adam, _ = server_step("adam", cur, avg, lr=0.1, beta2=0.99, tau=1e-3)
    np.testing.assert_allclose(adam[0], [0.1 * 0.1 / (0.1 + 1e-3)])  # v = 0.01
    yogi, yst = server_step("yogi", cur, avg, lr=0.1, beta2=0.99, tau=1e-3)
    np.testing.assert_allclose(yogi[0], adam[0])  # from v=0 yogi's first step equals adam's
    # yogi's second moment grows additively when v > delta^2: v - 0.01 * d^2 * sign(v - d^2)
    _, yst2 = server_step("yogi", cur, [np.array([0.05])], ServerOptState(m=[np.zeros(1)], v=[np.ones(1)]),
                          beta2=0.99)
    np.testing.assert_allclose(yst2.v[0], [1.0 - 0.01 * 0.0025])
    assert yst.step == 1


def test_bad_inputs_are_named():
    with pytest.raises(AggregationError, match="No site updates"):
        fedavg([])
    with pytest.raises(AggregationError, match="array 0 has shape"):
        fedavg([[np.zeros(2)], [np.zeros(3)]])
    with pytest.raises(AggregationError, match="one weight per site"):
        fedavg([[np.zeros(2)], [np.zeros(2)]], weights=[1])
    with pytest.raises(AggregationError, match="not all 0"):
        fedavg([[np.zeros(2)]], weights=[0])
    with pytest.raises(AggregationError, match="leaves no value|beta"):
        trimmed_mean([[np.zeros(1)]], beta=0.6)
    with pytest.raises(AggregationError, match="Did you mean 'median'"):
        get_aggregator("medain")
    with pytest.raises(AggregationError, match="Did you mean 'adam'"):
        server_step("adma", [np.zeros(1)], [np.zeros(1)])
