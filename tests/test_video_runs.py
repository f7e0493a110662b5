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
    # 2 clips x 16 frames, 8 frames per row (+ the row labels), the clips one above the other
    assert sheet.size[1] == 2 * (2 * 50 + 2) + 6 and 8 * 50 + 2 < sheet.size[0] < 9 * 50
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
    assert "no video with at least 8 frames (1 shorter ones skipped, e.g. " in err


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


def test_eval_video_runs(tmp_path, capsys):
    """``ddmi eval`` of a video VAE run (PSNR / SSIM of held-out clips) and of an LDM run (FVD and
    rFVD with a randomly initialised I3D file, so the whole path runs without the real weights)."""
    import json

    import torch

    from ddmi.metrics.fvd import InceptionI3d

    data, vae, ldm = tmp_path / "data", tmp_path / "vae", tmp_path / "ldm"
    assert main(["synth", "video", str(data), "--num", "4", "--frames", "10", "--resolution", "32", "--seed", "2"]) == 0
    clip = ["video.frames=10", *FAST]            # I3D needs at least 9 frames
    assert main(["train", "vae", "video-tiny", f"data.dir={data}", f"run_dir={vae}", "train.steps=2", *clip]) == 0
    assert main(["eval", str(vae)]) == 0
    out = json.loads((vae / "eval" / "psnr-ssim-32.json").read_text())
    assert 5 < out["psnr"] < 60 and 0 < out["ssim"] <= 1 and out["num_recon"] == 1   # the one val video
    assert out["recon_folder"].endswith("val")

    assert main(["train", "ldm", "video-tiny", f"vae={vae}", f"run_dir={ldm}", "train.steps=2", *clip]) == 0
    capsys.readouterr()
    assert main(["eval", str(ldm), "--metric", "fvd"]) == 2               # no I3D weights: says how
    assert "--i3d" in capsys.readouterr().err
    assert not (ldm / "eval").exists()                                    # ... before any work

    torch.manual_seed(0)
    i3d = InceptionI3d()
    for m in i3d.modules():       # He init keeps the random features informative (see test_metrics_fvd)
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(i3d.state_dict(), tmp_path / "i3d.pt")
    i3d_file = str(tmp_path / "i3d.pt")
    assert main(["eval", str(ldm), "--metric", "rfvd", "--i3d", i3d_file]) == 2      # 1 held-out clip
    assert "at least 2 clips" in capsys.readouterr().err
    assert main(["eval", str(ldm), "--metric", "fvd", "--metric", "rfvd", "--num", "3", "--steps", "2",
                 "--ref", str(data / "train"), "--i3d", i3d_file]) == 0
    out = json.loads((ldm / "eval" / "fvd-rfvd-32.json").read_text())
    assert out["fvd"] > 0 and out["rfvd"] >= 0 and out["num_gen"] == 3 and out["num_ref"] == 3
    assert len(list((ldm / "eval").glob("samples-*/sample_00002/frame*.png"))) == 10
