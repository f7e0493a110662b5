"""Shared machinery of the benchmark suite: the case registry, timing, memory and the machine.

Timing: every figure is the median of ``repeats`` timed calls after ``warmup`` untimed ones
(``time.perf_counter``, one call = one iteration of the thing named in the row).

Memory: each case runs in a fresh Python subprocess, so one case's allocator state and cached
weights never leak into the next. Inside it, the peak resident set (``VmHWM``) is reset through
``/proc/self/clear_refs`` (Linux >= 4.0) just before the measured work, and read back after it:

* ``peak RSS``  = the whole process's high-water mark during the measured work (torch, the
  model, its optimiser state, the activations...);
* ``+RSS`` = that peak minus the resident set just before the work started: the working memory
  the operation itself needed on top of what was already resident (for a training step measured
  from the first step on, it includes gradients and optimiser state).

Where ``clear_refs`` cannot be written, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the
process-lifetime peak) is used instead and the row says so. Resident-set figures are what the
operating system sees: they include allocator slack but not memory that was never touched.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

# ------------------------------------------------------------------------------------------
# context of a run


@dataclass
class Context:
    quick: bool = False
    threads: int = 2

    def reps(self, warmup: int, repeats: int) -> tuple[int, int]:
        """(warmup, repeats) for a full run, shrunk for ``--quick``."""
        return (min(warmup, 1), min(repeats, 2)) if self.quick else (warmup, repeats)


# ------------------------------------------------------------------------------------------
# result rows


@dataclass
class Row:
    case: str
    what: str
    median: float
    unit: str
    extra: str = ""
    official: float | None = None      # the official figure in the same unit, if any
    speedup: float | None = None       # >1: we are faster (time: official/ours; rate: ours/official)
    times: list[float] = field(default_factory=list)
    peak_rss_mib: float | None = None
    delta_rss_mib: float | None = None

    def compare(self, official: float, *, higher_is_better: bool = False) -> "Row":
        self.official = official
        if self.median > 0:
            self.speedup = self.median / official if higher_is_better else official / self.median
        return self


# ------------------------------------------------------------------------------------------
# registry

CASES: dict[str, "Case"] = {}


@dataclass
class Case:
    name: str
    fn: Callable[[Context], list[Row]]
    slow: bool = False                 # skipped by --quick
    doc: str = ""


def case(name: str, *, slow: bool = False):
    """Register ``fn(ctx) -> list[Row]`` as benchmark case ``name``."""

    def deco(fn):
        assert name not in CASES, f"duplicate benchmark case {name!r}"
        CASES[name] = Case(name, fn, slow=slow, doc=(fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


# ------------------------------------------------------------------------------------------
# memory


def _status_kib(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def current_rss_mib() -> float:
    kib = _status_kib("VmRSS")
    if kib is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kib / 1024


class PeakMemory:
    """``with PeakMemory() as mem: ...`` -> ``mem.peak_mib``, ``mem.delta_mib``, ``mem.method``."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")               # reset VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method = "ru_maxrss (process lifetime)"
        self.before_mib = current_rss_mib()
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak_mib = (_status_kib("VmHWM") or 0) / 1024
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.delta_mib = max(0.0, self.peak_mib - self.before_mib)
        return False


# ------------------------------------------------------------------------------------------
# timing


@dataclass
class Timing:
    median: float
    times: list[float]
    peak_mib: float
    delta_mib: float

    def row(self, case: str, what: str, unit: str = "s", extra: str = "") -> Row:
        return Row(case, what, self.median, unit, extra, times=self.times,
                   peak_rss_mib=self.peak_mib, delta_rss_mib=self.delta_mib)


def bench(fn: Callable[[], object], *, warmup: int, repeats: int,
          warmup_fn: Callable[[], object] | None = None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls of
    ``warmup_fn`` (default ``fn``); peak memory over the whole window, warm-up included."""
    assert repeats >= 1
    warm = warmup_fn or fn
    times = []
    with PeakMemory() as mem:
        for _ in range(warmup):
            warm()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times, mem.peak_mib, mem.delta_mib)


# ------------------------------------------------------------------------------------------
# machine


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    flags = ""
    try:
        text = open("/proc/cpuinfo").read()
        m = re.search(r"^flags\s*:(.*)$", text, re.M)
        have = set(m.group(1).split()) if m else set()
        flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch": torch.__version__,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_at_start": list(load) if load else None,
    }


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def row_dict(row: Row) -> dict:
    return asdict(row)


# ------------------------------------------------------------------------------------------
# configurations

# The reduced "official-timings" image configuration (official-cpu-timings.md) as overrides of
# the image-tiny preset: VAE 14.31 M (encoder 5.89 M, decoder 8.42 M), MLP 0.48 M, latent
# 16x16x16, planes of 32 channels at 16^2, 32^2, 64^2.
OFFICIAL_IMAGE = [
    "data.resolution=64", "vae.ch=64", "vae.ch_mult=[1,2,4]", "vae.num_res_blocks=2",
    "vae.z_channels=64", "vae.embed_dim=16", "vae.hdbpe_resolutions=[32,16]",
    "vae.plane_channels=32", "mlp.hidden=128", "mlp.scale_embed_dim=64",
]
# The reduced official ADM UNet on the 16x16x16 latent (16.07 M).
OFFICIAL_LDM = [
    "ldm.unet.model_channels=64", "ldm.unet.channel_mult=[1,2,4]", "ldm.unet.num_res_blocks=2",
    "ldm.unet.attention_resolutions=[4,2]", "ldm.unet.num_head_channels=32",
]


def official_config():
    from ddmi.config import load_config
    return load_config("image-tiny", OFFICIAL_IMAGE + OFFICIAL_LDM)


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6
