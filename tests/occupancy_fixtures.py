"""Shared fixtures of the occupancy tests (imported by those test modules, kept out of
``conftest.py``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def shape_data(tmp_path_factory):
    """6 synthetic shapes (2 per category) + 2 test shapes in the ONet layout, 20k points each."""
    from ddmi.data.synthetic_shapes import synth_shapes
    root = tmp_path_factory.mktemp("shapes") / "synth"
    synth_shapes(root, num=6, seed=0, split_test=2, num_points=20_000, num_surface=20_000)
    return root


@pytest.fixture(scope="session")
def shape_items(shape_data):
    """Packed training items of the shapes-tiny preset: ``(6, 1024 + 2048, 4)``."""
    from ddmi.data.shapes import ShapesDataset
    ds = ShapesDataset(shape_data, num_points=1024, num_queries=2048)
    return torch.stack([ds[i] for i in range(len(ds))])
