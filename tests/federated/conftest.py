"""Fixtures of the federated tests (see helpers.py)."""

import pytest
import torch

from .helpers import TinyLogistic, make_site


@pytest.fixture
def tiny_sites():
    return [make_site("a", 60, 0.0, 1), make_site("b", 40, 0.5, 2), make_site("c", 30, -0.5, 3)]


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyLogistic()
