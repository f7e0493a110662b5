"""Meshing: marching cubes on fields at any resolution, watertightness, volume, writers, preview."""

import math

import numpy as np
import pytest
import torch

from ddmi.domains.occupancy.meshes import extract_meshes, field_volume, mesh_point_clouds, shape_metrics
from ddmi.fields import Field
from ddmi.render.mesh import (is_watertight, marching_cubes, mesh_volume, preview, read_ply, render_mesh,
                              write_obj, write_ply)

RADIUS = 0.35  # world units (the box is [-0.55, 0.55]^3)


def sphere_field(centre=(0.0, 0.0, 0.0), batch=1) -> Field:
    """An analytic occupancy-logit field: logit = 40 * (R - |p - c|), p = 0.55 u (world frame)."""
    c = torch.tensor(centre)

    def decoder(planes, coords):
        return (40.0 * (RADIUS - (0.55 * coords - c).norm(dim=-1, keepdim=True)))

    return Field([torch.zeros(batch, 1)], decoder, {}, chunk=5000)


@pytest.mark.parametrize("resolution", [48, 77])
def test_sphere_mesh_has_the_right_volume_and_is_watertight(resolution):
    (v, f), = extract_meshes(sphere_field(), resolution, threshold=0.5)
    exact = 4 / 3 * math.pi * RADIUS**3
    assert is_watertight(f)
    # marching cubes on a 48^3 grid: within 1.5 % of the exact volume (outward-oriented: > 0)
    assert mesh_volume(v, f) == pytest.approx(exact, rel=0.015)
    assert np.abs(np.linalg.norm(v, axis=1) - RADIUS).max() < 1.1 / resolution


def test_threshold_moves_the_surface():
    # occupancy 0.2 -> logit ln(0.25): the surface moves out by ln(4)/40 world units
    (v, f), = extract_meshes(sphere_field(), 64, threshold=0.2)
    assert np.linalg.norm(v, axis=1).mean() == pytest.approx(RADIUS + math.log(4) / 40, abs=2e-3)


def test_shape_touching_the_box_is_closed_and_empty_field_gives_empty_mesh():
    (v, f), = extract_meshes(sphere_field(centre=(0.4, 0.0, 0.0)), 32, threshold=0.5)
    assert is_watertight(f) and v[:, 0].max() <= 0.55 + 1e-6
    v, f = marching_cubes(np.full((8, 8, 8), -5.0), 0.0)
    assert v.shape == (0, 3) and f.shape == (0, 3)


def test_field_volume_does_not_depend_on_the_slab_size():
    field = sphere_field(batch=2)
    a = field_volume(field, 20, slab_points=400)     # one x-plane at a time
    b = field_volume(field, 20, slab_points=1 << 20)
    assert a.shape == (2, 20, 20, 20) and np.array_equal(a, b)
    # indexing [b, ix, iy, iz] with cell centres: the sphere's logit peaks at the centre cells
    assert np.unravel_index(a[0].argmax(), a[0].shape) in [(i, j, k) for i in (9, 10) for j in (9, 10) for k in (9, 10)]


def test_ply_and_obj_writers(tmp_path):
    (v, f), = extract_meshes(sphere_field(), 16, threshold=0.5)
    write_ply(tmp_path / "s.ply", v, f)
    v2, f2 = read_ply(tmp_path / "s.ply")
    assert np.array_equal(v2, v) and np.array_equal(f2, f)
    write_obj(tmp_path / "s.obj", v, f)
    lines = (tmp_path / "s.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == len(v)
    faces = np.array([[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")])
    assert np.array_equal(faces - 1, f)


def test_preview_shows_the_shape():
    (v, f), = extract_meshes(sphere_field(), 24, threshold=0.5)
    img = render_mesh(v, f, size=64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    covered = (img < 250).any(-1)
    # the sphere's disc: pi r^2 in pixels (the image spans 2 * 0.55 * sqrt(3) * 1.02 world units)
    # (+ up to ~1 pixel of rim from the 2x2 splats)
    r = RADIUS * 64 / (2 * 0.55 * math.sqrt(3) * 1.02)
    assert math.pi * (r - 0.5) ** 2 < covered.sum() < math.pi * (r + 1.5) ** 2
    assert preview(v, f, size=32).shape[1] > 3 * 32


def test_shape_metrics_on_meshes():
    meshes = [extract_meshes(sphere_field(), 16, threshold=0.5)[0], extract_meshes(sphere_field((0.1, 0, 0)), 16, threshold=0.5)[0]]
    pcs = mesh_point_clouds(meshes, 256)
    assert pcs.shape == (2, 256, 3)
    same = shape_metrics(pcs, pcs.clone())
    assert same["mmd"] == pytest.approx(0.0, abs=1e-6) and same["cov"] == 1.0


def test_shape_metrics_normalise_each_cloud_to_the_unit_sphere():
    """docs/official-code.md §7: clouds are centred and scaled before Chamfer, so a moved and scaled copy of the
    reference set scores like the set itself, and a different shape does not."""
    spheres = [extract_meshes(sphere_field(), 16, threshold=0.5)[0]]
    box_v = np.array([[x, y, z] for x in (-0.3, 0.3) for y in (-0.1, 0.1) for z in (-0.2, 0.2)], np.float32)
    box_f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    ref = mesh_point_clouds(spheres + [(box_v, box_f)], 512, seed=0)
    moved = mesh_point_clouds([(0.5 * v + 0.1, f) for v, f in spheres + [(box_v, box_f)]], 512, seed=1)
    other = mesh_point_clouds(spheres * 2, 512, seed=2)
    good, bad = shape_metrics(moved, ref), shape_metrics(other, ref)
    assert good["cov"] == 1.0 and bad["cov"] == 0.5
    assert good["mmd"] < 0.1 * bad["mmd"]
