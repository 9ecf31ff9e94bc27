"""Saved weights get the user's umask like every other output file (safetensors alone makes them 0600)."""

import os
import stat

from healthfusion.models import HybridModel


def test_saved_weights_follow_the_umask(tmp_path, make_config):
    old = os.umask(0o022)
    try:
        HybridModel(make_config("concat")).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m" / "model.safetensors").st_mode) == 0o644
