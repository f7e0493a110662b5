"""srn-cars format: reading, bad files, the split, training rays matched to the poses, synthetic cars."""

import numpy as np
import pytest
import torch

from ddmi.data.srn import NeRFDataset, find_scenes, read_scene, split_nerf_item, write_scene
from ddmi.data.synthetic_nerf import cast, make_car, render_synthetic_car, synth_nerf
from ddmi.errors import DataError
from ddmi.render.volume import focal_from_fov, look_at


def _scene(path, *, views=4, res=8, points=64, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    images = rng.random((views, res, res, 3)).astype(dtype)
    poses = torch.stack([look_at((3.0 * np.sin(a), 1.0, 3.0 * np.cos(a))) for a in np.linspace(0, 6, views)]).numpy()
    pts = np.concatenate([rng.uniform(-1, 1, (points, 3)), rng.random((points, 3))], 1)
    np.savez(path, images=images, cam_poses=poses, data=pts)
    return images, poses, pts


def test_read_scene_accepts_float16_and_uint8(tmp_path):
    images, poses, pts = _scene(tmp_path / "a.npz")
    s = read_scene(tmp_path / "a.npz")
    assert s["images"].dtype == np.float16 and np.array_equal(s["images"], images)
    assert s["poses"].dtype == np.float32 and np.allclose(s["poses"], poses)
    assert s["points"].shape == (64, 6)
    np.savez(tmp_path / "b.npz", images=(images.astype(np.float32) * 255).astype(np.uint8), cam_poses=poses, data=pts)
    assert read_scene(tmp_path / "b.npz")["images"].max() <= 1.0
    write_scene(tmp_path / "c.npz", images, poses, pts)
    assert np.array_equal(read_scene(tmp_path / "c.npz")["images"], images)


@pytest.mark.parametrize("bad", ["missing", "poses", "points", "range", "corrupt", "nan"])
def test_bad_files_raise_a_data_error_naming_the_file(tmp_path, bad):
    path = tmp_path / f"{bad}.npz"
    images, poses, pts = _scene(path)
    if bad == "missing":
        np.savez(path, images=images, cam_poses=poses)
    elif bad == "poses":
        np.savez(path, images=images, cam_poses=poses[:2], data=pts)
    elif bad == "points":
        np.savez(path, images=images, cam_poses=poses, data=pts[:, :3])
    elif bad == "range":
        np.savez(path, images=images * 3, cam_poses=poses, data=pts)
    elif bad == "corrupt":
        path.write_bytes(path.read_bytes()[:100])
    elif bad == "nan":
        pts[0, 0] = np.nan
        np.savez(path, images=images, cam_poses=poses, data=pts)
    with pytest.raises(DataError, match=bad):
        read_scene(path)


def test_split_uses_the_lists_or_holds_out_the_last_files(tmp_path):
    folder = tmp_path / "cars" / "sampled"
    folder.mkdir(parents=True)
    for i in range(10):
        _scene(folder / f"obj{i:02d}.npz", views=1, res=2, points=4)
    train, val = find_scenes(tmp_path, "train"), find_scenes(tmp_path, "val")
    assert [p.stem for p in val] == ["obj09"] and len(train) == 9 and not set(train) & set(val)
    assert len(find_scenes(tmp_path, "val", val_fraction=0.3)) == 3
    (tmp_path / "cars" / "train.lst").write_text("obj03\nobj01\n")
    (tmp_path / "cars" / "val.lst").write_text("obj05\n")
    assert [p.stem for p in find_scenes(tmp_path, "train")] == ["obj03", "obj01"]
    assert [p.stem for p in find_scenes(tmp_path, "val")] == ["obj05"]
    (tmp_path / "cars" / "val.lst").write_text("nope\n")
    with pytest.raises(DataError, match="nope"):
        find_scenes(tmp_path, "val")
    with pytest.raises(DataError, match="sampled"):
        find_scenes(tmp_path / "cars", "train")


def test_training_rays_match_the_camera_poses(tmp_path):
    """Every ray of an item starts at its camera's centre and, in that camera's frame, points
    through the centre of an integer pixel ((c + 0.5 - W/2)/f, -(r + 0.5 - H/2)/f, -1) whose
    image value is the ray's target colour."""
    folder = tmp_path / "cars" / "sampled"
    folder.mkdir(parents=True)
    images, poses, _ = _scene(folder / "a.npz", views=3, res=8, dtype=np.float32)
    ds = NeRFDataset(tmp_path, files=[folder / "a.npz"], num_points=16, num_rays=100, ray_views=3)
    pts, o, d, rgb = split_nerf_item(ds[(0, 5)][None], 16)
    f = focal_from_fov(8)
    matched = 0
    for oo, dd, cc in zip(o[0].numpy(), d[0].numpy(), rgb[0].numpy()):
        v = int(np.argmin(np.linalg.norm(poses[:, :3, 3] - oo, axis=1)))
        assert np.allclose(poses[v, :3, 3], oo, atol=1e-5)
        cam = poses[v, :3, :3].T @ dd
        assert cam[2] == pytest.approx(-1.0, abs=1e-5)
        col, row = cam[0] * f + 4 - 0.5, -cam[1] * f + 4 - 0.5
        assert abs(col - round(col)) < 1e-3 and abs(row - round(row)) < 1e-3
        assert np.allclose(images[v, int(round(row)), int(round(col))], cc, atol=1e-6)
        matched += 1
    assert matched == 100
    # one fixed draw per index, a different one per training position, reproducible
    assert torch.equal(ds[(0, 5)], ds[(0, 5)]) and not torch.equal(ds[(0, 5)], ds[(0, 6)])
    # views restrict the supervision
    held = NeRFDataset(tmp_path, files=[folder / "a.npz"], num_points=16, num_rays=50, views=[1])
    o = split_nerf_item(held[0][None], 16)[1][0]
    assert np.allclose(o.numpy(), poses[1, :3, 3], atol=1e-5)


def test_synthetic_cars_are_exact_and_deterministic(tmp_path):
    paths = synth_nerf(tmp_path / "d", num=2, seed=3, split_test=1, resolution=16, views=5, num_points=300)
    assert [p.name for p in paths] == ["synth00000.npz", "synth00001.npz", "synth_t00000.npz"]
    assert (tmp_path / "d" / "cars" / "val.lst").read_text() == "synth_t00000\n"
    again = synth_nerf(tmp_path / "e", num=2, seed=3, split_test=1, resolution=16, views=5, num_points=300)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, again))
    with pytest.raises(DataError):
        synth_nerf(tmp_path / "d", num=1, seed=0)
    s = read_scene(paths[0])
    assert s["images"].shape == (5, 16, 16, 3) and s["images"].dtype == np.float16
    assert (s["images"][:, 0, 0] == 1).all()                       # white background in the corners
    assert np.abs(s["points"][:, :3]).max() <= 0.85 + 1e-6        # longest side 1.7
    assert ((s["points"][:, 3:] >= 0) & (s["points"][:, 3:] <= 1)).all()


def test_point_colours_are_the_rendered_radiance():
    """A ray cast at a surface point from outside along its normal sees the point's colour."""
    rng = np.random.default_rng(0)
    item = render_synthetic_car(rng, resolution=8, views=1, num_points=400)
    parts, colours = item["parts"], item["colours"]
    pts = item["points"]
    # rays from above straight down onto points of upward-facing surfaces (roof / bonnet)
    top = pts[pts[:, 1] >= pts[:, 1].max() - 1e-5]
    assert len(top) > 10
    o = top[:, :3] + np.array([0.0, 2.0, 0.0])
    d = np.tile([0.0, -1.0, 0.0], (len(top), 1))
    seen = cast(parts, colours, o, d)
    assert np.abs(seen - top[:, 3:]).max() < 1e-4
    parts2, _ = make_car(np.random.default_rng(1))
    assert len(parts2) == 8
