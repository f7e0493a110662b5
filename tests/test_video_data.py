"""Video data: the frame-folder / video-file loader, synthetic videos, and the video writers."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ddmi.data.synthetic_videos import render_synthetic_video, synth_videos
from ddmi.data.videos import VideoFolderDataset, find_videos, load_clip
from ddmi.errors import DataError
from ddmi.render.video import clip_to_uint8, contact_sheet, write_frames, write_gif


def _frames(folder, n, *, size=(12, 10), ext="png", value=None):
    """``n`` frames whose pixels all equal the frame index * 10 (or ``value``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        v = (k * 10) if value is None else value
        Image.fromarray(np.full((size[1], size[0], 3), v, np.uint8)).save(folder / f"frame{k}.{ext}")


def test_layout_nested_short_and_windows(tmp_path, caplog):
    root = tmp_path / "sky"
    _frames(root / "train" / "a", 12)                       # a video folder
    _frames(root / "train" / "b" / "clip0", 9, ext="jpg")   # PVDM nested clip folders, jpg
    _frames(root / "train" / "b" / "clip1", 3)              # too short: skipped and counted
    _frames(root / "train" / "c", 2)                        # too short
    _frames(root / "val" / "v", 8)
    with caplog.at_level(logging.WARNING):
        ds = VideoFolderDataset(root, frames=8, resolution=6, seed=1)
    assert len(ds) == 2 and ds.skipped_short == 2
    assert "skipped 2 video(s) shorter than 8 frames" in caplog.text
    assert [v[0].name for v in ds.videos] == ["a", "clip0"]
    # natural order (frame2 before frame10) and consecutive windows
    x = ds[(0, 5)]
    assert x.shape == (3, 8, 6, 6) and x.dtype == torch.float32
    levels = ((x[0, :, 0, 0] + 1) * 127.5).round().long()
    start = ds.window_start(0, 5)
    assert levels.tolist() == [10 * (start + k) for k in range(8)]
    starts = {ds.window_start(0, p) for p in range(50)}
    assert starts == set(range(0, 5))                       # 12 frames: windows start at 0..4
    assert torch.equal(ds[(0, 7)], ds[(0, 7)]) and torch.equal(ds[0], ds[0])
    assert len(VideoFolderDataset(root, split="val", frames=8, resolution=6)) == 1
    msgs = []
    VideoFolderDataset(root, frames=8, resolution=6, log=msgs.append)
    assert len(msgs) == 1 and "skipped 2" in msgs[0]
    with pytest.raises(DataError, match="no video with at least 20 frames"):
        VideoFolderDataset(root, frames=20, resolution=6)
    with pytest.raises(DataError, match="no val or test folder"):
        VideoFolderDataset(tmp_path / "sky" / "train", split="val", frames=2, resolution=6)


def test_centre_crop_resize(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for k in range(2):   # 30x10 frames: left and right thirds black, centre white
        a = np.zeros((10, 30, 3), np.uint8)
        a[:, 10:20] = 255
        Image.fromarray(a).save(folder / f"f{k:03d}.png")
    x = load_clip(folder, 2, 4)
    # a crop keeps (almost only) the white centre; squashing the whole frame would average to -1/3
    assert x.shape == (3, 2, 4, 4) and x.mean() > 0.9 and torch.allclose(x, x.flip(-1), atol=1e-5)


def test_corrupt_frame_names_the_file(tmp_path):
    _frames(tmp_path / "train" / "a", 8)
    bad = tmp_path / "train" / "a" / "frame3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = VideoFolderDataset(tmp_path, frames=8, resolution=4)
    with pytest.raises(DataError, match="frame3.png"):
        ds[0]


def test_skip_bad_videos(tmp_path):
    """``skip_bad``: a damaged video is skipped with one warning, replaced by the next readable
    one (the same one every time); without it, the damage is an error naming the file."""
    for name, value in (("a", 0), ("b", 100), ("c", 200)):
        _frames(tmp_path / "train" / name, 8, value=value)
    (tmp_path / "train" / "b" / "frame5.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    (tmp_path / "train" / "d.mp4").write_bytes(b"not a video")     # cannot even be opened
    with pytest.raises(DataError, match="d.mp4"):
        VideoFolderDataset(tmp_path, frames=8, resolution=4)
    warnings = []
    ds = VideoFolderDataset(tmp_path, frames=8, resolution=4, skip_bad=True, log=warnings.append)
    assert len(ds) == 3 and len(warnings) == 1 and "d.mp4" in warnings[0]
    assert torch.equal(ds[(1, 7)], ds[(2, 7)])                      # b -> c
    assert ds[(1, 7)].mean().item() == pytest.approx(200 / 127.5 - 1, abs=1e-6)
    assert torch.equal(ds[1], ds[(2, -1)])
    assert len(warnings) == 2 and "frame5.png" in warnings[1]       # warned once, not per read


def test_video_files(tmp_path):
    pytest.importorskip("av")
    from ddmi.render.video import write_mp4
    clip = torch.linspace(-1, 1, 10)[None, :, None, None].expand(3, 10, 16, 16)
    write_mp4(clip, tmp_path / "train" / "a.mp4", fps=5)
    write_mp4(clip[:, :4], tmp_path / "train" / "short.mp4")
    ds = VideoFolderDataset(tmp_path, frames=6, resolution=8)
    assert len(ds) == 1 and ds.skipped_short == 1
    x = ds[(0, 3)]
    start = ds.window_start(0, 3)
    assert x.shape == (3, 6, 8, 8)
    assert torch.allclose(x.mean((0, 2, 3)), clip[0, start:start + 6, 0, 0], atol=0.05)
    (tmp_path / "train" / "broken.webm").write_bytes(b"not a video")
    with pytest.raises(DataError, match="broken.webm"):
        VideoFolderDataset(tmp_path, frames=6, resolution=8)


def test_writers(tmp_path):
    clip = torch.rand(3, 5, 9, 11) * 2 - 1           # odd sizes
    u8 = clip_to_uint8(clip)
    assert u8.shape == (5, 9, 11, 3) and u8.dtype == np.uint8
    gif = Image.open(write_gif(clip, tmp_path / "a.gif"))
    assert gif.n_frames == 5 and gif.size == (11, 9)
    assert len(write_frames(clip, tmp_path / "frames")) == 5
    sheet = Image.open(contact_sheet(torch.stack([clip, clip]), tmp_path / "s.png"))
    assert sheet.size == (5 * 13 + 2, 2 * (9 + 2 + 2) + 6)     # one block per clip, a 6-pixel gap between
    av = pytest.importorskip("av")
    from ddmi.render.video import write_mp4
    path = write_mp4(clip, tmp_path / "a.mp4")
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (10, 12, 3)      # padded to even sizes
    assert not list(tmp_path.glob(".*tmp*"))


def test_synthetic_videos(tmp_path):
    a = render_synthetic_video(np.random.default_rng(0), 6, 24)
    assert a.shape == (6, 24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_synthetic_video(np.random.default_rng(0), 6, 24))
    assert np.abs(a[0].astype(int) - a[-1]).mean() > 3                 # it moves
    paths = synth_videos(tmp_path / "d", num=3, frames=6, resolution=16, seed=0)
    assert len(paths) == (3 + 1) * 6
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train", "val"]
    ds = VideoFolderDataset(tmp_path / "d", frames=6, resolution=16)
    assert len(ds) == 3 and len(find_videos(tmp_path / "d" / "val")) == 1
    with pytest.raises(DataError, match="already contains files"):
        synth_videos(tmp_path / "d", num=3, frames=6, resolution=16, seed=0)
    b = synth_videos(tmp_path / "e", num=3, frames=6, resolution=16, seed=0, split_val=2)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in b[:len(paths)]]
