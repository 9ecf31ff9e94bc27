"""docs/quickstart.md runs as written (a doctest, in a temporary folder), and ``import healthfusion`` stays light."""

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


def test_quickstart_runs_as_a_doctest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(str(QUICKSTART), module_relative=False, optionflags=doctest.ELLIPSIS,
                              raise_on_error=False, verbose=False)
    assert result.attempted >= 10
    assert result.failed == 0
    assert (tmp_path / "work" / "run" / "model" / "model.json").is_file()


def test_import_healthfusion_is_light_until_the_api_is_used():
    code = ("import sys, healthfusion; light = 'torch' not in sys.modules; healthfusion.train; "
            "print(light, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_load_cohort_errors_name_the_fix(tmp_path):
    import healthfusion as hf

    with pytest.raises(TypeError, match="give source="):
        hf.load_cohort(tmp_path, n_stays=3)
    with pytest.raises(ValueError, match="synthetic"):
        hf.load_cohort(tmp_path, source="synthetik")
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        hf.trian  # noqa: B018
