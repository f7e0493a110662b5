"""The official fixture folder is where the tests look, and holds what they need."""

from __future__ import annotations

import json

import pytest
from official_fixtures import official_root  # noqa: F401 (fixture)

pytestmark = pytest.mark.official


def test_every_domain_has_checkpoints_config_and_tensors(official_root):
    index = json.loads((official_root / "index.json").read_text())
    assert index
    for domain in ("image", "occupancy", "nerf", "video"):
        for name in ("model-last.pt", "ldm-last.pt", "config.json", "fixture.safetensors"):
            assert (official_root / domain / name).is_file(), f"{domain}/{name} missing"
