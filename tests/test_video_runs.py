"""Video end to end: synth -> train vae -> train ldm -> sample (MP4 / GIF / frames / sheet) at
another size and frame count, and reconstruct."""

import numpy as np
import pytest
from PIL import Image

try:
    import av
except ImportError:          # MP4 output needs the video extra; GIF / frames / sheets do not
    av = None

from ddmi.cli import main

# a still smaller video-tiny for CLI plumbing tests (seconds per command)
FAST = ["video.enc_depth=1", "vae.ch=8", "mlp.hidden=32", "ldm.unet.model_channels=16",
        "ldm.unet.num_head_channels=16", "ldm.sample_steps=2", "train.batch_size=2",
        "ldm_train.batch_size=4", "--no-progress"]


def gif_frames(gif, fps: int = 8) -> int:
    """Frames a GIF plays at ``fps`` (video.fps): its total duration over one frame's. Pillow merges
    identical consecutive frames into one longer frame (a barely trained model can produce them)
    and GIF stores durations in 10 ms units (125 ms -> 120 ms), hence the floor with a margin."""
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    return int(total / (1000 / fps - 10) + 1e-6)


def test_cli_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "video", str(data), "--num", "3", "--frames", "10", "--resolution", "32", "--seed", "1"]) == 0
    assert len(list((data / "train").iterdir())) == 3 and len(list((data / "val").iterdir())) == 1
    assert main(["synth", "video", str(data), "--num", "3"]) == 2                 # refuses to overwrite
    vae, ldm, out = tmp_path / "vae", tmp_path / "ldm", tmp_path / "out"
    assert main(["train", "vae", "video-tiny", f"data.dir={data}", f"run_dir={vae}", "train.steps=2", *FAST]) == 0
    assert (vae / "samples" / "recon-step0000002.png").is_file()
    assert main(["train", "ldm", "video-tiny", f"vae={vae}", f"run_dir={ldm}", "train.steps=2", *FAST]) == 0
    assert (ldm / "samples" / "samples-step0000002.png").is_file()
    assert main(["sample", str(ldm), "--out", str(out), "--num", "2", "--steps", "2",
                 "--resolution", "48", "--frames", "16"]) == 0
    for i in range(2):
        stem = out / f"sample_{i:05d}_48x16"
        gif = Image.open(f"{stem}.gif")
        assert gif_frames(gif) == 16 and gif.size == (48, 48)
        assert len(list(stem.glob("frame*.png"))) == 16
        if av is not None:
            with av.open(f"{stem}.mp4") as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            assert len(frames) == 16 and frames[0].shape == (48, 48, 3)
    sheet = Image.open(out / "sheet_48x16.png")
    assert sheet.size == (16 * 50 + 2, 2 * 50 + 2)
    capsys.readouterr()
    assert main(["sample", str(ldm), "--out", str(out), "--num", "1", "--steps", "2",
                 "--resolution", "48", "--frames", "16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["sample", str(ldm), "--out", str(out), "--frames", "0"]) == 2
    # reconstruct: a frame folder and an MP4 -> clips at 2x the frame count
    rec = tmp_path / "rec"
    inputs = [str(data / "val" / "video_00000"), f"{out / 'sample_00000_48x16'}.mp4"]
    assert main(["reconstruct", str(vae), *inputs, "--out", str(rec), "--frames", "16"]) == 0
    assert gif_frames(Image.open(rec / "video_00000_rec32x16.gif")) == 16
    assert (rec / "sample_00000_48x16_rec32x16.gif").is_file()
    assert (rec / "reconstructions_32x16.png").is_file() and (rec / "inputs.png").is_file()
    assert np.asarray(Image.open(rec / "inputs.png")).std() > 5


def test_bad_data_is_one_line(tmp_path, capsys):
    data = tmp_path / "d" / "train" / "v"
    data.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / f"frame{k}.png")
    assert main(["train", "vae", "video-tiny", f"data.dir={tmp_path / 'd'}", f"run_dir={tmp_path / 'r'}",
                 *FAST]) == 2
    err = capsys.readouterr().err
    assert "no video with at least 8 frames (1 shorter ones skipped)" in err


@pytest.mark.slow
def test_video_vae_resume_is_bitwise(tmp_path):
    """Windows are drawn from (seed, video, training position): a resumed run repeats exactly."""
    import torch
    from safetensors.torch import load_file

    from ddmi import checkpoint as ckpt
    from ddmi.data.synthetic_videos import synth_videos
    synth_videos(tmp_path / "d", num=3, frames=12, resolution=32, seed=0)
    base = ["train", "vae", "video-tiny", f"data.dir={tmp_path / 'd'}", "train.save_every=2", *FAST]
    assert main(base + [f"run_dir={tmp_path / 'a'}", "train.steps=4"]) == 0
    assert main(base + [f"run_dir={tmp_path / 'b'}", "train.steps=2"]) == 0
    assert main(base + [f"run_dir={tmp_path / 'b'}", "train.steps=4"]) == 0
    a = load_file(str(ckpt.latest_checkpoint(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
