"""``--cluster`` values and the errors of a cluster run that need no Ray start."""

import pytest
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.scale.cluster import ClusterSpec, parse_cluster


@pytest.mark.parametrize("text, spec", [
    ("local:2", ClusterSpec("local", workers=2)),
    ("auto", ClusterSpec("auto")),
    ("10.0.0.5:6379", ClusterSpec("address", address="10.0.0.5:6379")),
    ("ray://head:10001", ClusterSpec("address", address="ray://head:10001")),
])
def test_parse_cluster(text, spec):
    assert parse_cluster(text) == spec
    assert str(parse_cluster(text)) == text


def test_local_is_one_worker_per_cpu():
    assert parse_cluster("local").workers >= 1


@pytest.mark.parametrize("text", ["local:0", "local:two", "yarn", "head"])
def test_bad_cluster_values_name_the_forms(text):
    with pytest.raises(ValueError, match="local:N|whole number"):
        parse_cluster(text)


def test_cli_rejects_a_bad_cluster_and_an_unpartitioned_source(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["cohort", "build", "--source", "mimic4", "--path", str(tmp_path), "--out",
                              str(tmp_path / "c"), "--cluster", "local:0"])
    assert bad.exit_code == 2 and "whole number" in bad.output
    other = runner.invoke(app, ["cohort", "build", "--source", "physionet2012", "--path", str(tmp_path), "--out",
                                str(tmp_path / "c"), "--cluster", "local:2"])
    assert other.exit_code == 2 and "cannot be built on a cluster" in other.output and "mimic4" in other.output


def test_without_ray_the_cluster_names_the_scale_extra(monkeypatch):
    import sys

    from healthfusion.optional import MissingExtraError
    from healthfusion.scale.ray import RayCluster

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"healthfusion\[scale\]"):
        with RayCluster("local:2"):
            pass
