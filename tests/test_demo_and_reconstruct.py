"""The README's first command in miniature (`ddmi demo --quick`) and `ddmi reconstruct`."""

from PIL import Image

from ddmi.cli import main


def test_quick_demo_writes_the_pictures_it_announces(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    err = capsys.readouterr().err
    listed = [line.strip() for line in err.splitlines() if line.startswith("  ") and line.strip().endswith(".png")]
    assert len(listed) == 5
    assert "the demo took 0 min" in err or "the demo took 1 min" in err     # it says what it took
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


def test_reconstruct_reads_folders_keeps_same_named_inputs_apart_and_refuses_foreign_options(
        vae_run, image_data, tmp_path, capsys):
    import shutil
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
    first, second = sorted(image_data.glob("*.png"))[:2]
    shutil.copy(first, a / "x.png")
    shutil.copy(second, b / "x.png")                          # the same file name in two folders
    out = tmp_path / "out"
    assert main(["reconstruct", str(vae_run), str(a), str(b / "x.png"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*_rec*.png")) == ["a_x_rec16.png", "b_x_rec16.png"]
    for p in out.glob("*_rec16.png"):                        # only the grid is left: still refused
        p.unlink()
    assert main(["reconstruct", str(vae_run), str(a), str(b / "x.png"), "--out", str(out)]) == 2
    assert "reconstructions.png exists" in capsys.readouterr().err
    for option in (["--views", "3"], ["--frames", "4"], ["--normalize"]):
        assert main(["reconstruct", str(vae_run), str(a), "--out", str(tmp_path / "o"), *option]) == 2
        assert f"{option[0]} does not apply to image runs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sample_refuses_options_of_other_domains(ldm_run, tmp_path, capsys):
    assert main(["sample", str(ldm_run), "--out", str(tmp_path / "s"), "--frames", "8", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--frames does not apply to image runs" in err and "nerf, video" in err
    assert not (tmp_path / "s").exists()
