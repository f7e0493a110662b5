"""GPU check: every domain end to end in each precision, then one step of each paper preset.

``python -m benchmarks.gpu`` (about 8 minutes on one GPU) runs, for each domain (image,
occupancy, nerf, video; the tiny presets) on synthetic data it writes itself with ``ddmi synth``
in a temporary folder, and for each precision (fp32, bf16, fp16 = ``train.mixed_precision=no |
bf16 | fp16``):

* ``train-vae``: ``ddmi train vae`` for 4 steps;
* ``train-ldm``: ``ddmi train ldm`` for 8 steps with ``ldm.ema_after=4 ldm.ema_every=2`` (the
  EMA copies the weights until step 4 and first blends at step 6: the run goes past it);
* ``sample``: ``ddmi sample --resolution A --resolution B``;
* ``reconstruct``: ``ddmi reconstruct`` of held-out items;
* ``eval``: ``ddmi eval --num 4`` (generation metrics of the LDM run; video: PSNR/SSIM of the
  VAE run, FVD needs I3D weights);

with two or more GPUs visible, the two training phases again under ``accelerate launch
--num_processes N`` (rows ``train-vae xN``); then one training step (forward under autocast,
backward, AdamW) of each paper preset (afhq, celebahq, shapenet, srn_cars, skytimelapse) at full
size and its per-process batch, on random data of the right shapes, with its peak GPU memory
(``torch.cuda.max_memory_allocated``) and samples per second.

It prints ONE table (rows: domain or preset x precision x phase; columns: ok / FAIL with the
one-line error, seconds, peak memory, samples/s) and writes it as JSON with ``--json PATH``. A
failing phase does not stop the others (a phase whose input failed is reported as ``skip``); the
exit status is 1 when any phase failed. Test it on a CPU with
``python -m benchmarks.gpu --device cpu --precisions fp32 --skip-paper``.

Each (domain, precision) pipeline runs in its own Python process (fresh accelerate state, fresh
CUDA allocator; a crash loses only that pipeline's later phases) and calls ``ddmi.cli.main`` in
it, so the peak memory of a phase is that process's ``torch.cuda.max_memory_allocated`` over the
phase (on a CPU: the peak resident set, ``VmHWM``). Training samples/s = the optimiser steps'
items (``batch_size x grad_accum x processes``) over the mean step time of steps 2..n, read from
the run's ``logs/metrics.jsonl`` (the first step, with its warm-up, is left out); the other phases'
samples/s = items over the phase's wall time (loading included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .paper_steps import PRECISIONS   # benchmark name -> train.mixed_precision

DOMAINS = {"image": "image-tiny", "occupancy": "shapes-tiny", "nerf": "nerf-tiny", "video": "video-tiny"}
PAPER_PRESETS = ("afhq", "celebahq", "shapenet", "srn_cars", "skytimelapse")
PHASES = ("synth", "train-vae", "train-ldm", "sample", "reconstruct", "eval")
NEEDS = {"train-vae": "synth", "train-ldm": "train-vae", "sample": "train-ldm", "reconstruct": "train-vae",
         "eval": "train-ldm"}
RESULT_TAG = "@@GPU-CHECK "
VAE_STEPS, LDM_STEPS = 4, 8
EMA = ["ldm.ema_after=4", "ldm.ema_every=2"]
SYNTH = {   # ddmi synth arguments per domain (small: seconds on a CPU)
    "image": ["image", "--num", "32", "--test", "8", "--resolution", "32"],
    "occupancy": ["shapes", "--num", "6", "--test", "2", "--points", "6000"],
    "nerf": ["nerf", "--num", "4", "--test", "1", "--views", "6", "--resolution", "32", "--points", "1024"],
    "video": ["video", "--num", "4", "--test", "1", "--frames", "10", "--resolution", "32"],
}
RESOLUTIONS = {"image": (32, 64), "occupancy": (32, 48), "nerf": (32, 48), "video": (32, 48)}


# ------------------------------------------------------------------------------------------
# results and the table


@dataclass
class Result:
    target: str                       # domain (tiny preset) or paper preset
    precision: str                    # fp32 | bf16 | fp16 | - (synth)
    phase: str
    status: str                       # ok | FAIL | skip
    seconds: float | None = None
    peak_mib: float | None = None
    samples_per_s: float | None = None
    error: str = ""                   # one line, for FAIL and skip
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "ok"


class CommandFailed(RuntimeError):
    """A ``ddmi`` command exited non-zero; the message is its last stderr line."""


def one_line(text: str, limit: int = 160) -> str:
    """The last non-empty line of ``text`` (an error message or a stderr tail), shortened."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "failed"
    return line if len(line) <= limit else line[:limit - 3] + "..."


def run_phase(target: str, precision: str, phase: str, fn: Callable[[], dict | None], *,
              memory: Callable[[], "contextlib.AbstractContextManager"] | None = None) -> Result:
    """Run one phase; never raises (except KeyboardInterrupt). ``fn()`` returns optional fields
    of the result (``samples_per_s``, ``note``, ``seconds`` to override the wall time, ``peak_mib``)
    or raises: its one-line message becomes the row's error. ``memory()`` is a context manager
    whose ``peak_mib`` attribute is read after the phase."""
    mem = memory() if memory is not None else None
    t0 = time.perf_counter()
    status, error, extra = "ok", "", {}
    try:
        with (mem if mem is not None else contextlib.nullcontext()):
            extra = fn() or {}
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row (SystemExit included)
        msg = one_line(str(exc)) if str(exc) else ""
        status, error = "FAIL", msg if isinstance(exc, CommandFailed) else f"{type(exc).__name__}: {msg}".rstrip(": ")
    seconds = time.perf_counter() - t0
    peak = getattr(mem, "peak_mib", None)
    res = Result(target, precision, phase, status, round(extra.pop("seconds", seconds), 3),
                 extra.pop("peak_mib", peak), extra.pop("samples_per_s", None), error, extra.pop("note", ""))
    return res


def skipped(target: str, precision: str, phase: str, why: str) -> Result:
    return Result(target, precision, phase, "skip", error=why)


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def format_table(results: list[Result]) -> str:
    head = ["target", "precision", "phase", "status", "seconds", "peak MiB", "samples/s", "error / note"]
    body = [[r.target, r.precision, r.phase, r.status, _num(r.seconds), _num(r.peak_mib), _num(r.samples_per_s),
             "; ".join(x for x in (r.error, r.note) if x)] for r in results]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body])


def summary(results: list[Result]) -> str:
    bad = [r for r in results if r.failed]
    n_fail = sum(r.status == "FAIL" for r in results)
    n_skip = sum(r.status == "skip" for r in results)
    if not bad:
        return f"{len(results)} phase(s): all ok"
    return f"{len(results)} phase(s): {len(results) - len(bad)} ok, {n_fail} FAIL, {n_skip} skipped"


def exit_status(results: list[Result]) -> int:
    return 1 if any(r.failed for r in results) else 0


# ------------------------------------------------------------------------------------------
# memory of a phase


class PeakMemory:
    """Peak memory of the work inside: ``torch.cuda.max_memory_allocated`` on CUDA (reset on
    entry), else the resident-set high-water mark (benchmarks.common.PeakMemory)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak_mib = None

    def __enter__(self):
        if self.cuda:
            import torch
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
        else:
            from .common import PeakMemory as RSSPeak
            self._rss = RSSPeak().__enter__()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
                self.peak_mib = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            self._rss.__exit__(*exc)
            self.peak_mib = round(self._rss.peak_mib, 1)
        return False


# ------------------------------------------------------------------------------------------
# child side: one (domain, precision) pipeline, or the paper steps of one precision


def _emit(res: Result) -> None:
    print(RESULT_TAG + json.dumps(asdict(res)), flush=True)


class _Tee(io.TextIOBase):
    """Keeps everything written (for the error line) and forwards it to a log file."""

    def __init__(self, log):
        self.buf, self.log = io.StringIO(), log

    def write(self, s):
        self.buf.write(s)
        self.log.write(s)
        return len(s)

    def flush(self):
        self.log.flush()


def ddmi_cli(argv: list[str], log) -> None:
    """``ddmi ARGV`` in this process; raises RuntimeError(the last stderr line) unless it exits 0."""
    from ddmi.cli import main
    log.write(f"$ ddmi {' '.join(argv)}\n")
    tee = _Tee(log)
    with contextlib.redirect_stderr(tee), contextlib.redirect_stdout(tee):
        try:
            rc = main(argv)
        except SystemExit as exc:       # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 2
    if rc != 0:
        raise CommandFailed(f"ddmi {argv[0]} exited {rc}: {one_line(tee.buf.getvalue())}")


def _steady_items_per_s(run: Path, items_per_step: int) -> float | None:
    """Items per second from the ``sec_per_step`` (a running mean since the first step) logged at
    every step: the mean time of steps 2..n, leaving the first (warm-up) step out."""
    try:
        recs = [json.loads(ln) for ln in (run / "logs" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    except OSError:
        return None
    recs = [r for r in recs if "sec_per_step" in r]
    if not recs:
        return None
    last = recs[-1]
    first = recs[0] if len(recs) > 1 else None
    if first is None or last["step"] == first["step"]:
        return items_per_step / last["sec_per_step"]
    dt = last["step"] * last["sec_per_step"] - first["step"] * first["sec_per_step"]
    return items_per_step * (last["step"] - first["step"]) / dt if dt > 0 else None


def _run_items(run: Path, nproc: int) -> int:
    import yaml
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section = cfg["ldm_train"] if (run / "run.yaml").is_file() and "stage: ldm" in (run / "run.yaml").read_text() \
        else cfg["train"]
    return section["batch_size"] * section["grad_accum"] * nproc


def _inputs(domain: str, data: Path) -> list[str]:
    """Held-out items of the synthetic data to reconstruct (two)."""
    if domain == "image":
        files = sorted((data / "test").rglob("*.png"))
    elif domain == "occupancy":
        files = sorted(data.glob("*/synth*/pointcloud.npz"))
    elif domain == "nerf":
        files = sorted(data.glob("*/sampled/synth_t*.npz")) or sorted(data.glob("*/sampled/*.npz"))
    else:
        files = sorted(p for p in (data / "val").iterdir() if p.is_dir())
    if not files:
        raise FileNotFoundError(f"no held-out {domain} items under {data}")
    return [str(p) for p in files[:2]]


def _device_args(cmd: list[str], device: str, log) -> Callable[[], dict]:
    """A phase running ``ddmi CMD --device DEVICE``."""
    def fn():
        ddmi_cli(cmd + ["--device", device], log)
        return {}
    return fn


def run_pipeline(spec: dict) -> None:
    """Child: the phases of one (domain, precision) pipeline; one tagged JSON line per phase."""
    domain, precision, device, nproc = spec["domain"], spec["precision"], spec["device"], spec.get("nproc", 1)
    preset, root = DOMAINS[domain], Path(spec["root"])
    data = root / "data" / domain
    runs = root / "runs" / (f"{domain}-{precision}" + (f"-x{nproc}" if nproc > 1 else ""))
    runs.mkdir(parents=True, exist_ok=True)
    vae, ldm = runs / "vae", runs / "ldm"
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    log = open(runs / (f"log-rank{rank}.txt" if nproc > 1 else "log.txt"), "a")
    mp = PRECISIONS[precision]
    cpu_note = "CPU: the trainer runs fp32" if device == "cpu" and mp != "no" else ""
    extra = list(spec.get("set", []))
    suffix = f" x{nproc}" if nproc > 1 else ""
    failed: set[str] = set()

    def train_phase(stage: str):
        run = vae if stage == "vae" else ldm
        if stage == "vae":
            train_dir = data / "train" if domain == "image" else data
            argv = ["train", "vae", preset, f"data.dir={train_dir}", f"run_dir={run}", f"train.steps={VAE_STEPS}"]
            if domain == "nerf":
                argv.append("nerf.turntable_frames=4")   # `ddmi sample` renders 4 frames per turntable, not 16
        else:
            argv = ["train", "ldm", preset, f"vae={vae}", f"run_dir={run}", f"train.steps={LDM_STEPS}", *EMA]
        argv += [f"train.mixed_precision={mp}", "train.log_every=1", "train.save_every=1000",
                 "train.sample_every=0", *extra, "--no-progress"]

        def fn():
            ddmi_cli(argv, log)
            out = {"samples_per_s": _steady_items_per_s(run, _run_items(run, nproc))}
            if cpu_note:
                out["note"] = cpu_note
            return out
        return fn

    res_a, res_b = RESOLUTIONS[domain]
    phases: dict[str, Callable[[], dict | None]] = {}
    if "synth" in spec["phases"]:
        def synth():
            if (data / ".complete").is_file():
                return {"note": "reused"}
            if data.exists():
                shutil.rmtree(data)
            kind, *rest = SYNTH[domain]
            ddmi_cli(["synth", kind, str(data), *rest, "--seed", "0"], log)
            (data / ".complete").write_text("ok\n")
            return {}
        phases["synth"] = synth
    phases["train-vae"] = train_phase("vae")
    phases["train-ldm"] = train_phase("ldm")
    num = 2

    def timed_items(fn, items):
        def wrapped():
            t0 = time.perf_counter()
            out = fn() or {}
            out.setdefault("samples_per_s", items / (time.perf_counter() - t0))
            return out
        return wrapped

    phases["sample"] = timed_items(_device_args(
        ["sample", str(ldm), "--out", str(runs / "samples"), "--num", str(num), "--steps", "2",
         "--resolution", str(res_a), "--resolution", str(res_b), "--overwrite"], device, log), num)
    if domain in ("occupancy", "nerf", "video", "image"):
        def reconstruct():
            inputs = _inputs(domain, data)
            cmd = ["reconstruct", str(vae), *inputs, "--out", str(runs / "rec"), "--overwrite"]
            cmd += ["--views", "2"] if domain == "nerf" else ["--resolution", str(res_b)]
            return timed_items(_device_args(cmd, device, log), len(inputs))()
        phases["reconstruct"] = reconstruct
    n_eval = 4
    eval_run = vae if domain == "video" else ldm
    eval_cmd = ["eval", str(eval_run), "--num", str(n_eval), "--json", str(runs / "eval.json")]
    if domain != "video":
        eval_cmd += ["--steps", "2", "--resolution", str(res_a)]
    phases["eval"] = timed_items(_device_args(eval_cmd, device, log), n_eval)

    wanted = [p for p in PHASES if p in spec["phases"]]
    for name in wanted:
        label = name + suffix
        prec = "-" if name == "synth" else precision
        need = NEEDS.get(name)
        if domain == "video" and name == "eval":
            need = "train-vae"
        if need in failed:
            res = skipped(domain, prec, label, f"needs {need}{suffix}, which did not pass")
        elif nproc > 1 and name not in ("train-vae", "train-ldm"):
            continue
        else:
            res = run_phase(domain, prec, label, phases[name], memory=lambda: PeakMemory(device))
        if res.failed:
            failed.add(name)
        log.flush()
        if rank == 0:
            _emit(res)
    log.close()


def run_paper(spec: dict) -> None:
    """Child: one training step of each paper preset at one precision."""
    import torch

    from ddmi.config import load_config

    from .paper_steps import training_step
    device, precision = spec["device"], spec["precision"]
    for preset in spec["presets"]:
        for stage in ("vae", "ldm"):
            holder: dict = {}

            def fn():
                cfg = load_config(preset)
                step = training_step(cfg, stage, device, precision)
                holder["step"] = step
                step.run()                                   # warm-up (allocations, autotuning)
                times = []
                for _ in range(2):
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step.run()
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                t = sorted(times)[len(times) // 2]
                params = sum(p.numel() for p in step.module.parameters()) / 1e6
                note = f"batch {step.batch}, {params:.1f} M params; step median of 2 after 1 warm-up"
                if device == "cpu" and precision != "fp32":
                    note += "; CPU: fp32"
                return {"seconds": round(t, 3), "samples_per_s": step.batch / t, "note": note}

            res = run_phase(preset, precision, f"{stage}-step", fn, memory=lambda: PeakMemory(device))
            holder.clear()
            if device.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()
            _emit(res)


# ------------------------------------------------------------------------------------------
# parent side


def _child_env(device: str) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    paths = [str(root / "src"), str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""          # the trainer uses a GPU whenever it sees one
    return env


def run_child(spec: dict, expected: list[tuple[str, str, str]], *, timeout: float, nproc: int = 1,
              echo=None) -> list[Result]:
    """Run a child (``--child SPEC``, under ``accelerate launch`` when ``nproc > 1``), collect its
    rows; every expected row it did not report becomes a FAIL carrying the child's last stderr
    line (a crash, a timeout)."""
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--child", json.dumps(spec)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "-m", "benchmarks.gpu", "--child", json.dumps(spec)]
    import threading
    root = Path(__file__).resolve().parent.parent
    got: list[Result] = []
    try:
        proc = subprocess.Popen(cmd, cwd=root, env=_child_env(spec["device"]), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        return [Result(*e, "FAIL", error=f"cannot start: {exc}") for e in expected]
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    killed: list[bool] = []

    def kill():
        killed.append(True)
        proc.kill()
    timer = threading.Timer(timeout, kill)
    timer.start()
    for line in proc.stdout:                       # rows stream in as the phases finish
        if line.startswith(RESULT_TAG):
            res = Result(**json.loads(line[len(RESULT_TAG):]))
            got.append(res)
            if echo:
                echo(res)
    proc.wait()
    timer.cancel()
    timed_out = bool(killed)
    reader.join(timeout=5)
    err_tail = one_line("".join(err_lines)) if err_lines else f"exit {proc.returncode}, no output"
    seen = {(r.target, r.precision, r.phase) for r in got}
    why = (f"timed out after {timeout:.0f} s" if timed_out else
           f"process exited {proc.returncode} before this phase: {err_tail}")
    for e in expected:
        if e not in seen:
            r = Result(*e, "FAIL", error=why)
            got.append(r)
            if echo:
                echo(r)
    return got


def _gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def machine_line(device: str) -> str:
    from .common import machine_info
    import torch
    info = machine_info(torch.get_num_threads())
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpu = f"; GPUs: {', '.join(names)}; CUDA {torch.version.cuda}"
    return (f"machine: {info['cpu']} ({info['cpu_flags']}), {info['usable_cpus']} usable CPUs; torch "
            f"{info['torch']}{gpu}; device {device}; {info['date']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--domains", default=",".join(DOMAINS), help=f"comma-separated: {', '.join(DOMAINS)}")
    p.add_argument("--skip-paper", action="store_true", help="no paper-preset steps")
    p.add_argument("--paper", default=",".join(PAPER_PRESETS),
                   help="comma-separated paper presets to step (default all five)")
    p.add_argument("--processes", type=int, default=None,
                   help="processes for the accelerate-launch rows (default: the GPUs visible; < 2: none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for both training commands, e.g. train.tf32=true (repeat)")
    p.add_argument("--out", default=None, help="work folder (default: a fresh temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (runs, logs)")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    p.add_argument("--timeout", type=float, default=600, help="limit per child process, seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        (run_paper if spec["kind"] == "paper" else run_pipeline)(spec)
        return 0

    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    domains = [x.strip() for x in args.domains.split(",") if x.strip()]
    presets = [] if args.skip_paper else [x.strip() for x in args.paper.split(",") if x.strip()]
    for name, got, known in (("precision", precisions, PRECISIONS), ("domain", domains, DOMAINS),
                             ("paper preset", presets, PAPER_PRESETS)):
        bad = [x for x in got if x not in known]
        if bad:
            p.error(f"unknown {name}(s) {', '.join(bad)}; choose from {', '.join(known)}")
    if args.device.startswith("cuda") and _gpu_count() == 0:
        print("error: no CUDA device is visible (torch.cuda.is_available() is False); "
              "run with --device cpu to test the check itself", file=sys.stderr)
        return 2
    nproc = args.processes if args.processes is not None else _gpu_count()
    if args.device == "cpu":
        nproc = args.processes or 0

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ddmi-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    print(machine_line(args.device), flush=True)
    print(f"work folder: {root}{' (kept)' if args.keep or args.out else ' (deleted at the end; --keep keeps it)'}",
          flush=True)

    def echo(r: Result) -> None:
        msg = f"  {r.target:12s} {r.precision:5s} {r.phase:16s} {r.status:4s} {_num(r.seconds):>7s} s"
        print(msg + (f"  {r.error}" if r.error else ""), file=sys.stderr, flush=True)

    results: list[Result] = []
    t_all = time.perf_counter()
    for domain in domains:
        for i, prec in enumerate(precisions):
            phases = list(PHASES) if i == 0 else [x for x in PHASES if x != "synth"]
            spec = {"kind": "pipeline", "domain": domain, "precision": prec, "device": args.device,
                    "root": str(root), "phases": phases, "set": args.set}
            expected = [(domain, "-" if ph == "synth" else prec, ph) for ph in phases]
            results += run_child(spec, expected, timeout=args.timeout, echo=echo)
            if nproc >= 2:
                mspec = dict(spec, nproc=nproc, phases=["train-vae", "train-ldm"])
                mexp = [(domain, prec, f"{ph} x{nproc}") for ph in mspec["phases"]]
                results += run_child(mspec, mexp, timeout=args.timeout, nproc=nproc, echo=echo)
    if presets:
        for prec in precisions:
            spec = {"kind": "paper", "precision": prec, "device": args.device, "presets": presets}
            expected = [(ps, prec, f"{st}-step") for ps in presets for st in ("vae", "ldm")]
            results += run_child(spec, expected, timeout=args.timeout, echo=echo)
    total = time.perf_counter() - t_all

    print()
    print(format_table(results))
    print(f"\n{summary(results)}; {total:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine_line(args.device), "device": args.device, "precisions": precisions,
            "total_s": round(total, 1), "results": [asdict(r) for r in results]}, indent=1) + "\n")
        print(f"wrote {args.json}")
    if not (args.keep or args.out):
        shutil.rmtree(root, ignore_errors=True)
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
