"""Fixtures of the official-equivalence tests (``pytest -m official``).

The official fixtures (checkpoints in the official layout, seeded inputs, the official outputs)
are read from the folder named by ``DDMI_OFFICIAL_FIXTURES`` (default
``../shared/reference/official-fixtures`` next to the repository). Every test here is marked
``official`` (``pytestmark = pytest.mark.official`` in each module, which also imports the ``official_root``
fixture from here); without the folder they are skipped with the reason. Nothing here may depend on the
particular sizes of one fixture set: read them from ``config.json`` and the tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO.parent / "shared" / "reference" / "official-fixtures"


def fixtures_root() -> Path:
    return Path(os.environ.get("DDMI_OFFICIAL_FIXTURES", DEFAULT))


@pytest.fixture(scope="session")
def official_root() -> Path:
    root = fixtures_root()
    if not (root / "index.json").is_file():
        pytest.skip(f"no official fixtures at {root} (set DDMI_OFFICIAL_FIXTURES to the folder)")
    return root


def domain_fixture(root: Path, domain: str):
    """``(folder, config.json as a dict, fixture tensors)`` of one domain's fixture set."""
    from safetensors.torch import load_file
    folder = root / domain
    if not (folder / "fixture.safetensors").is_file():
        pytest.skip(f"no {domain} fixtures in {root}")
    return folder, json.loads((folder / "config.json").read_text()), load_file(folder / "fixture.safetensors")


def assert_close(actual, expected, name: str, rtol: float = 1e-5):
    """Relative error of ``actual`` against the official ``expected`` within ``rtol`` (measured
    against the largest magnitude of ``expected``, as fixtures README section 1 advises)."""
    import torch
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != official {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:g}"
