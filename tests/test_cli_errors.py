"""Bad input gives a one-line error, a non-zero exit and no traceback."""

import subprocess
import sys

import pytest

from ddmi.cli import main


def err_of(capsys, *args):
    rc = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = err_of(capsys, "train", "vae", "image-tiny", f"data.dir={tmp_path / 'empty'}", f"run_dir={tmp_path / 'r'}")
    assert rc == 2 and err[-1].startswith("error:") and "empty" in err[-1]


def test_corrupt_png_names_the_file(tmp_path, capsys):
    from ddmi.data.synthetic import synth_images
    synth_images(tmp_path / "d", num=3, resolution=16, seed=0)
    (tmp_path / "d" / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    rc, err = err_of(capsys, "train", "vae", "image-tiny", f"data.dir={tmp_path / 'd' / 'train'}",
                     f"run_dir={tmp_path / 'r'}", "train.steps=1", "--no-progress")
    assert rc == 2 and "broken.png" in err[-1]


@pytest.mark.parametrize("args, needle", [
    (("info", "image-tiny", "train.nope=1"), "train.nope"),
    (("info", "image-tiny", "train.steps=many"), "train.steps"),
    (("sample", "/no/such/run", "--out", "x"), "does not exist"),
    (("reconstruct", "/no/such/run", "a.png", "--out", "x"), "does not exist"),
    (("sample", "/no/such/run", "--out", "x", "--sampler", "euler"), "unknown sampler"),
    (("sample", "/no/such/run", "--out", "x", "--resolution", "0"), "--resolution"),
    (("sample", "/no/such/run", "--out", "x", "--batch-size", "0"), "--batch-size"),
    (("sample", "/no/such/run", "--out", "x", "--steps", "-3"), "--steps"),
    (("eval", "/no/such/run", "--num", "0"), "--num"),
])
def test_bad_arguments(capsys, args, needle):
    rc, err = err_of(capsys, *args)
    assert rc == 2 and len(err) == 1 and needle in err[0]


def test_no_traceback_from_the_real_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddmi", "info", "image-tiny", "bogus.key=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error:")
