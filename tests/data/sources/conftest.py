"""Shared fixtures of the source-reader tests: where the real open datasets live."""

import os
from pathlib import Path

import pytest


def shared_data_root() -> Path:
    """``$HEALTHFUSION_SHARED_DATA``, else ``<repo>/../shared/data``."""
    override = os.environ.get("HEALTHFUSION_SHARED_DATA")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; the test is skipped when it is absent, and fails instead under ``CI=true``."""
    root = shared_data_root()
    if not root.is_dir():
        message = (f"shared data folder {root} not found; set HEALTHFUSION_SHARED_DATA to the folder holding "
                   "physionet2012/, medmnist/, mtsamples/, uci_diabetes130/, uci_heart_disease/")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root.resolve()


@pytest.fixture(scope="session")
def shared_dataset(shared_data):
    """``shared_dataset("physionet2012")`` -> that folder of the shared data (skip or, under CI, fail if absent)."""

    def get(name: str) -> Path:
        folder = shared_data / name
        if not folder.is_dir():
            message = f"dataset folder {folder} not found in the shared data"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        return folder

    return get
