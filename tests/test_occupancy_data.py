"""ONet-layout loader and the synthetic shape generator."""

import numpy as np
import pytest
import torch

from ddmi.data.shapes import ShapesDataset, find_models, read_points_npz, read_pointcloud_npz, split_item
from ddmi.data.synthetic_shapes import synth_shapes
from ddmi.data.synthetic_shapes import (CATEGORIES, _box, _cyl, occupancy, random_shape,
                                        render_synthetic_shape, sample_surface)
from ddmi.errors import DataError


def _onet_folder(root, n=1003, dtype=np.float16, seed=0):
    """One model written exactly as the ONet release does (float16, np.packbits)."""
    rng = np.random.default_rng(seed)
    folder = root / "02691156" / "m0"
    folder.mkdir(parents=True)
    pts = (rng.random((n, 3)) - 0.5).astype(dtype)
    occ = rng.random(n) < 0.3
    np.savez(folder / "points.npz", points=pts, occupancies=np.packbits(occ),
             loc=np.zeros(3), scale=np.float64(1.0))
    surf = (rng.random((500, 3)) - 0.5).astype(dtype)
    np.savez(folder / "pointcloud.npz", points=surf, normals=np.ones_like(surf))
    (root / "02691156" / "train.lst").write_text("m0\n")
    return folder, pts, occ, surf


def test_reads_onet_format_with_bitpacked_occupancies(tmp_path):
    folder, pts, occ, surf = _onet_folder(tmp_path)            # 1003 points: packbits pads the last byte
    p, o = read_points_npz(folder / "points.npz")
    assert p.dtype == np.float32 and np.array_equal(p, pts.astype(np.float32))
    assert o.dtype == bool and np.array_equal(o, occ)
    assert np.array_equal(read_pointcloud_npz(folder / "pointcloud.npz"), surf.astype(np.float32))


def test_dataset_items_follow_the_spec_sampling(tmp_path):
    folder, pts, occ, surf = _onet_folder(tmp_path)
    ds = ShapesDataset(tmp_path, num_points=3000, num_queries=2048, point_noise=0.005)
    item = ds[0]
    assert item.shape == (5048, 4) and item.dtype == torch.float32
    inputs, queries, labels = split_item(item[None], 3000)
    # queries are (jittered) points of points.npz carrying their own occupancy
    d = torch.cdist(queries[0].double(), torch.from_numpy(pts.astype(np.float64)))
    nearest = d.argmin(1)
    assert d.min(1).values.max() < 1e-3
    assert torch.equal(labels[0].bool(), torch.from_numpy(occ)[nearest])
    # inputs are surface points plus ~N(0, 0.005) noise
    dist = torch.cdist(inputs[0].double(), torch.from_numpy(surf.astype(np.float64))).min(1).values
    assert 0.002 < dist.mean() < 0.02
    assert (item[:3000, 3] == 0).all()
    # fixed draw per index; a different training position draws differently; both reproducible
    assert torch.equal(ds[0], ds[0]) and torch.equal(ds[(0, 7)], ds[(0, 7)])
    assert not torch.equal(ds[(0, 7)], ds[(0, 8)])


@pytest.mark.parametrize("breakage, message", [
    ("missing_key", "missing array(s) 'occupancies'"),
    ("corrupt", "unreadable .npz"),
    ("bad_shape", "'points' must have shape (N, 3)"),
    ("bad_count", "'occupancies' has"),
    ("missing_file", "file not found"),
])
def test_broken_files_give_an_error_naming_the_file(tmp_path, breakage, message):
    folder, pts, occ, _ = _onet_folder(tmp_path)
    path = folder / "points.npz"
    if breakage == "missing_key":
        np.savez(path, points=pts)
    elif breakage == "corrupt":
        path.write_bytes(path.read_bytes()[:100])
    elif breakage == "bad_shape":
        np.savez(path, points=pts[:, :2], occupancies=np.packbits(occ))
    elif breakage == "bad_count":
        np.savez(path, points=pts, occupancies=np.packbits(occ)[:-3])
    else:
        path.unlink()
    ds = ShapesDataset(tmp_path)
    with pytest.raises(DataError) as err:
        ds[0]
    assert str(path) in str(err.value) and message in str(err.value)


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_models(tmp_path / "nope")
    _onet_folder(tmp_path)
    with pytest.raises(DataError, match="no test shapes"):
        find_models(tmp_path, "test")
    with pytest.raises(DataError, match="not found"):
        find_models(tmp_path, classes=["03001627"])


def test_synth_shapes_layout_and_determinism(tmp_path):
    a = synth_shapes(tmp_path / "a", num=3, seed=1, split_test=1, num_points=2000, num_surface=1000)
    b = synth_shapes(tmp_path / "b", num=4, seed=1, num_points=2000, num_surface=1000)
    assert (tmp_path / "a" / "metadata.yaml").is_file()
    for cat, syn in CATEGORIES.items():
        assert (tmp_path / "a" / syn / "train.lst").read_text().strip()
    # same seed: byte-identical files, and item i does not depend on num
    rel = lambda p, root: p.relative_to(root)  # noqa: E731
    common = {rel(p, tmp_path / "a") for p in a} & {rel(p, tmp_path / "b") for p in b}
    assert len(common) == 6
    for r in common:
        assert (tmp_path / "a" / r).read_bytes() == (tmp_path / "b" / r).read_bytes()
    with pytest.raises(DataError, match="already contains files"):
        synth_shapes(tmp_path / "a", num=1, seed=0)
    synth_shapes(tmp_path / "a", num=1, seed=0, overwrite=True, num_points=100, num_surface=100)
    assert len(find_models(tmp_path / "a")) == 1 and len(ShapesDataset(tmp_path / "a")) == 1


def test_synthetic_occupancy_is_exact_and_surface_is_outer():
    rng = np.random.default_rng(3)
    for cat in CATEGORIES:
        item = render_synthetic_shape(rng, cat, num_points=4000, num_surface=4000)
        parts = item["parts"]
        assert np.array_equal(item["occupancies"], occupancy(parts, item["points"]))
        s, n = item["surface"], item["normals"]
        assert np.abs(s).max() <= 0.5 + 1e-9 and np.allclose(np.linalg.norm(n, axis=1), 1)
        # on the boundary of the union: a step along the normal leaves it, a step against enters
        assert not occupancy(parts, s + 1e-4 * n).any()
        assert occupancy(parts, s - 1e-4 * n).mean() > 0.99
        # the shape's bounding box has its longest side = 1, centred
        assert 0.5 - 1e-9 <= np.abs(s).max()


def test_primitives_inside_tests():
    box, cyl = _box((0, 0, 0), (0.1, 0.2, 0.3)), _cyl((0, 0, 0), 0.1, 0.2, 2)
    p = np.array([[0.09, 0.19, 0.29], [0.11, 0, 0], [0.07, 0.07, 0.19], [0.08, 0.08, 0.0], [0, 0, 0.21]])
    assert box.inside(p).tolist() == [True, False, True, True, True]
    assert cyl.inside(p).tolist() == [False, False, True, False, False]
    # two overlapping boxes: no surface sample inside the other one
    parts = [_box((0, 0, 0), (0.2, 0.2, 0.2)), _box((0.2, 0, 0), (0.2, 0.1, 0.1))]
    s, _ = sample_surface(parts, np.random.default_rng(0), 5000)
    assert not (parts[0].inside(s, 1e-6) | parts[1].inside(s, 1e-6)).any()
    assert len(random_shape(np.random.default_rng(0), "chair")) >= 6


def test_positional_sampler_gives_the_dataset_its_training_position():
    """Shape items draw their points from (seed, index, position): resumable and worker-proof."""
    from ddmi.training.trainer import StepBatchSampler
    kw = dict(seed=0, batch_size=2, grad_accum=2, rank=0, world=1, start_step=1, steps=3)
    plain = list(StepBatchSampler(5, **kw))
    pos = list(StepBatchSampler(5, positional=True, **kw))
    assert [[i for i, _ in b] for b in pos] == plain
    assert [p for b in pos for _, p in b] == list(range(4, 12))
