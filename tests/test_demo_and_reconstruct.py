"""The README's first command in miniature (`ddmi demo --quick`) and `ddmi reconstruct`."""

from PIL import Image

from ddmi.cli import main


def test_quick_demo_writes_the_pictures_it_announces(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    err = capsys.readouterr().err
    listed = [line.strip() for line in err.splitlines() if line.startswith("  ") and line.strip().endswith(".png")]
    assert len(listed) == 5
    sizes = {p: Image.open(p).size for p in listed}
    assert all(w > 0 and h > 0 for w, h in sizes.values())
    with Image.open(out / "samples" / "sample_00000_128.png") as im:
        assert im.size == (128, 128)
    # running it again resumes the finished runs instead of starting over
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    assert "reusing the synthetic images" in capsys.readouterr().err


def test_reconstruct_at_four_times_the_resolution(vae_run, image_data, tmp_path):
    inputs = sorted(image_data.glob("*.png"))[:2]
    out = tmp_path / "rec"
    assert main(["reconstruct", str(vae_run), *map(str, inputs), "--out", str(out), "--resolution", "64"]) == 0
    for p in inputs:
        with Image.open(out / f"{p.stem}_rec64.png") as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert (out / "reconstructions.png").is_file()
    # outputs are never overwritten silently
    assert main(["reconstruct", str(vae_run), str(inputs[0]), "--out", str(out), "--resolution", "64"]) == 2
