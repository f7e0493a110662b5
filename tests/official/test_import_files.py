"""Reading official checkpoint files safely, and ``ddmi import-official``'s refusals of bad input:
one line on stderr naming the file, exit status 2, nothing written."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from official_fixtures import official_root  # noqa: F401 (fixture)

from ddmi.cli import main
from ddmi.errors import CheckpointError
from ddmi.official.checkpoint_file import read_official_file
from ddmi.official.importer import recognise

pytestmark = pytest.mark.official

ARGS_FIELDS = ("exp", "configs", "seed", "data_config", "ddconfig", "mlpconfig", "unetconfig", "loss_config",
               "ddpmconfig", "embed_dim", "lr", "resolution", "resume", "pretrained", "amp", "use_fp16",
               "domain", "mode", "DiT")
DOMAINS = ("image", "occupancy", "nerf", "video")


class _RunsCode:
    """Pickles as a call of ``os.system``: loading it would create ``self.marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _only_plain(obj) -> bool:
    if isinstance(obj, dict):
        return type(obj) is dict and all(isinstance(k, str) and _only_plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_only_plain(v) for v in obj)
    return obj is None or isinstance(obj, (bool, int, float, str))


def test_the_official_args_namespace_loads_through_the_allow_list_as_plain_containers(official_root):
    path = official_root / "image" / "ldm-args-namespace-sample.pt"
    with pytest.raises(Exception):  # noqa: B017 - what the plain weights_only load does (README 2.3)
        torch.load(path, map_location="cpu", weights_only=True)
    args = read_official_file(path)["args"]
    assert tuple(args) == ARGS_FIELDS
    assert _only_plain(args)
    for name in ("data_config", "ddconfig", "mlpconfig", "unetconfig", "loss_config", "ddpmconfig"):
        assert isinstance(args[name], dict) and args[name], name
    assert isinstance(args["ddconfig"]["ch_mult"], list)


def test_a_pickle_naming_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    for name, write in (("zip.pt", lambda p: torch.save({"model": _RunsCode(marker)}, p)),
                        ("legacy.pt", lambda p: p.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2)))):
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError, match="system") as info:
            read_official_file(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert not marker.exists()


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_fixture_files_are_recognised(official_root, domain):
    for name, stage in (("model-last.pt", "vae"), ("ldm-last.pt", "ldm")):
        path = official_root / domain / name
        off = recognise(read_official_file(path), path)
        assert (off.stage, off.domain) == (stage, domain)
        assert off.step is not None and off.current_iters is not None
        if stage == "ldm":
            assert off.diffusion and off.ema and isinstance(off.args, dict)


def _bad_inputs(root, tmp):
    """``(name, path, words the error names)`` of inputs that are no usable official checkpoint."""
    good = (root / "image" / "model-last.pt").read_bytes()
    out = []
    for i, frac in enumerate((0.0005, 0.5, 0.999)):
        p = tmp / f"truncated{i}.pt"
        p.write_bytes(good[:max(1, int(len(good) * frac))])
        out.append((f"truncated {frac}", p, "truncated"))
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    out.append(("text file", text, "not a PyTorch checkpoint"))
    empty = tmp / "empty.pt"
    empty.write_bytes(b"")
    out.append(("empty file", empty, "empty"))
    folder = tmp / "folder.pt"
    folder.mkdir()
    out.append(("folder", folder, "folder"))
    fifo = tmp / "fifo.pt"
    os.mkfifo(fifo)
    out.append(("fifo", fifo, "regular file"))
    out.append(("missing", tmp / "missing.pt", "no such file"))
    code = tmp / "code.pt"
    torch.save({"model": _RunsCode(tmp / "ran")}, code)
    out.append(("pickle that needs code", code, "system"))
    other = tmp / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    out.append(("another kind of checkpoint", other, "not an official DDMI checkpoint"))
    return out


def _assert_refused(capsys, argv, path, words, out):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and words in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_files_are_one_line_errors_and_write_nothing(official_root, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, path, words in _bad_inputs(official_root, inputs):
        out = tmp_path / "runs" / "imported"
        out.parent.mkdir(exist_ok=True)
        _assert_refused(capsys, ["import-official", str(path), "--preset", "image-tiny", "--out", str(out)],
                        path, words, out)
    assert not (inputs / "ran").exists()


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_checkpoint_of_another_domain_is_refused(official_root, tmp_path, capsys, domain):
    other = {"image": "shapes-tiny", "occupancy": "video-tiny", "nerf": "image-tiny", "video": "nerf-tiny"}[domain]
    for name in ("model-last.pt", "ldm-last.pt"):
        path = official_root / domain / name
        out = tmp_path / f"{domain}-{name}"
        _assert_refused(capsys, ["import-official", str(path), "--preset", other, "--out", str(out)],
                        path, f"official {domain} checkpoint", out)


def test_an_existing_output_folder_is_never_replaced(official_root, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = official_root / "image" / "model-last.pt"
    for extra in ([], ["--overwrite"]):
        assert main(["import-official", str(path), "--preset", "image-tiny", "--out", str(out), *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert (out / "notes.txt").read_text() == "mine"


def test_a_checkpoint_of_another_preset_is_refused_listing_the_sizes(official_root, tmp_path, capsys):
    """Needs the image domain's official hooks (the image helper's branch)."""
    path = official_root / "image" / "model-last.pt"
    out = tmp_path / "imported"
    _assert_refused(capsys, ["import-official", str(path), "--preset", "afhq", "--out", str(out)],
                    path, "--use-file-sizes", out)
