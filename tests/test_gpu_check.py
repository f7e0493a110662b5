"""`python -m benchmarks.gpu`: the phase runner, the table and the exit status, on stub phases
(nothing is trained)."""

import json

import pytest

from benchmarks import gpu


def test_phase_runner_table_and_exit_status():
    ok = gpu.run_phase("image", "fp32", "train-vae", lambda: {"samples_per_s": 12.5, "note": "stub"})
    assert ok.status == "ok" and not ok.failed and ok.samples_per_s == 12.5 and ok.error == ""
    assert ok.seconds is not None and ok.seconds >= 0

    def boom():
        raise ValueError("CUDA out of memory.\nTried to allocate 2.00 GiB")
    bad = gpu.run_phase("image", "fp16", "train-ldm", boom)
    assert bad.status == "FAIL" and bad.failed
    assert bad.error == "ValueError: Tried to allocate 2.00 GiB"          # one line: the last one

    def exits():
        raise SystemExit(2)                                                 # argparse-style exit
    assert gpu.run_phase("video", "bf16", "sample", exits).status == "FAIL"

    skip = gpu.skipped("image", "fp16", "sample", "needs train-ldm, which did not pass")
    table = gpu.format_table([ok, bad, skip])
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0].startswith("| target ")
    assert "| ok " in lines[2] and "12.5" in lines[2] and "stub" in lines[2]
    assert "| FAIL " in lines[3] and "Tried to allocate 2.00 GiB" in lines[3]
    assert "| skip " in lines[4] and "needs train-ldm" in lines[4]
    assert len({len(x) for x in lines}) == 1                               # aligned columns

    assert gpu.exit_status([ok]) == 0
    assert gpu.exit_status([ok, bad]) == 1
    assert gpu.exit_status([ok, skip]) == 1
    assert gpu.summary([ok, bad, skip]) == "3 phase(s): 1 ok, 1 FAIL, 1 skipped"


def test_command_failure_is_its_last_stderr_line(tmp_path):
    log = open(tmp_path / "log.txt", "w")
    res = gpu.run_phase("image", "fp32", "sample", lambda: gpu.ddmi_cli(["sample", str(tmp_path / "none"),
                                                                          "--out", str(tmp_path / "o")], log))
    log.close()
    assert res.status == "FAIL" and res.error.startswith("ddmi sample exited 2: error:")
    assert "\n" not in res.error


def test_missing_child_rows_become_failures(tmp_path):
    """A child that dies before reporting: every expected row is a FAIL naming the cause."""
    spec = {"kind": "nonsense", "device": "cpu"}
    got = gpu.run_child(spec, [("image", "fp32", "train-vae")], timeout=120)
    assert [r.status for r in got] == ["FAIL"]
    assert "process exited" in got[0].error


def test_main_rejects_unknown_names_and_missing_gpu(capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--precisions", "fp8"])
    import torch
    if not torch.cuda.is_available():
        assert gpu.main(["--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_json_and_table_from_a_stubbed_run(tmp_path, monkeypatch, capsys):
    """main() end to end with the child processes replaced by stubs: one OK and one failing phase."""
    def fake_child(spec, expected, *, timeout, nproc=1, echo=None):
        out = [gpu.Result(*expected[0], "ok", seconds=1.0, samples_per_s=3.0)]
        out += [gpu.Result(*e, "FAIL", error="boom") for e in expected[1:]]
        return out
    monkeypatch.setattr(gpu, "run_child", fake_child)
    path = tmp_path / "gpu.json"
    rc = gpu.main(["--device", "cpu", "--precisions", "fp32", "--domains", "image", "--skip-paper",
                   "--json", str(path)])
    assert rc == 1
    data = json.loads(path.read_text())
    assert [r["status"] for r in data["results"]][:2] == ["ok", "FAIL"]
    assert {r["phase"] for r in data["results"]} == set(gpu.PHASES)
    out = capsys.readouterr().out
    assert "| synth " in out and "boom" in out and "FAIL" in out
