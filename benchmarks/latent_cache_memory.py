"""Resident memory of stage 2's latent cache, before and after it moved to a file (issue 16).

    python -m benchmarks.latent_cache_memory [--items 10000] [--preset image-tiny]

Each variant runs in a fresh subprocess on the same synthetic dataset (``--items`` deterministic
random images at the preset's resolution, generated per item, so the dataset itself takes no
memory) and the same randomly initialised VAE of the preset:

* ``before``: the in-RAM cache of ddmi <= 3775d49, reproduced here: float32 means and stds of both
  views of every item concatenated in one tensor in every process, then the standardisation
  statistics from one posterior sample of the whole first view;
* ``after``: :func:`ddmi.training.ldm_task.build_latent_cache` into a run folder (memory-mapped float16
  ``.npy``), :func:`ddmi.training.ldm_task.measure_latent_stats` streamed in chunks, then one pass over every
  item as training reads them.

Printed per variant: the peak resident set of the process (``VmHWM``), its anonymous (heap)
resident memory at the end (``RssAnon``, what cannot be reclaimed; mapped cache pages are file
pages the kernel can drop and that processes share), and the cache's bytes per item. Then the
bytes per item of each paper preset's cache, computed from its latent shape.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

TAG = "@@LATENT-CACHE "


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class SyntheticImages(Dataset):
    """``n`` random images ``(3, r, r)`` in [-1, 1], item ``i`` drawn from seed ``i``."""

    def __init__(self, n: int, resolution: int):
        self.n, self.r = n, resolution

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(int(i))
        return torch.rand((3, self.r, self.r), generator=g) * 2 - 1


def _old_in_ram_cache(ae, items, batch_size=32) -> torch.Tensor:
    stats = []
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size)
    with torch.inference_mode():
        for x in loader:
            per_view = [torch.stack([p.mean, p.std], 1) for p in map(ae.encode, ae.encoder_views(x))]
            stats.append(torch.stack(per_view, dim=1))
    stats = torch.cat(stats).float()
    s = stats[:, 0]
    z = s[:, 0] + s[:, 1] * torch.randn(s[:, 0].shape, generator=torch.Generator().manual_seed(0))
    z.transpose(0, 1).reshape(z.shape[1], -1).std(1)
    return stats


def _child(variant: str, items: int, preset: str) -> dict:
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    from ddmi.training.ldm_task import build_latent_cache, measure_latent_stats
    torch.set_num_threads(2)
    cfg = load_config(preset)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval().requires_grad_(False)
    data = SyntheticImages(items, cfg.data.resolution)
    rss0 = _status("RssAnon")
    t0 = time.perf_counter()
    if variant == "before":
        stats = _old_in_ram_cache(ae, data)
        per_item = stats[0].numel() * stats.element_size()
    else:
        with tempfile.TemporaryDirectory() as run:
            cache = build_latent_cache(ae, data, Path(run) / "latent-cache", signature={}, log=lambda m: None)
            measure_latent_stats(cache, torch.Generator().manual_seed(0), "auto")
            for i in range(len(cache)):
                cache[i]
            per_item = (Path(run) / "latent-cache" / "latents.npy").stat().st_size / len(cache)
            out = {"rss_anon_end": _status("RssAnon")}
    seconds = time.perf_counter() - t0
    return {"variant": variant, "items": items, "seconds": seconds, "peak_rss": _status("VmHWM"),
            "rss_anon_start": rss0, "rss_anon_end": _status("RssAnon") if variant == "before" else out["rss_anon_end"],
            "bytes_per_item": per_item}


def _paper_rows() -> list[tuple[str, str, float]]:
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    rows = []
    for preset, items in (("afhq", 15_803), ("celebahq", 30_000), ("shapenet", 35_000), ("srn_cars", 2_458),
                          ("skytimelapse", 2_392)):
        cfg = load_config(preset)
        with torch.device("meta"):
            shape = build_autoencoder(cfg).latent_shape
        views = 2 if cfg.domain == "image" or (cfg.domain == "video" and cfg.data.hflip) else 1
        numel = views * 2 * int(torch.tensor(shape).prod())
        rows.append((preset, f"{tuple(shape)} x {views} view(s)", numel * 4, numel * 2, items))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--preset", default="image-tiny")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(TAG + json.dumps(_child(args.child, args.items, args.preset)), flush=True)
        return
    results = []
    for variant in ("before", "after"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.latent_cache_memory", "--child", variant,
                              "--items", str(args.items), "--preset", args.preset],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(next(l for l in out.stdout.splitlines() if l.startswith(TAG))[len(TAG):]))
    avx = "AVX-512" if "avx512" in Path("/proc/cpuinfo").read_text() else "AVX2"
    print(f"# {args.preset}, {args.items} synthetic items; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {avx}, torch {torch.__version__}")
    mib = 1 << 20
    print("| variant | peak RSS | heap (RssAnon) growth | cache bytes per item | seconds |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['peak_rss'] / mib:.0f} MiB | {(r['rss_anon_end'] - r['rss_anon_start']) / mib:+.0f} MiB "
              f"| {r['bytes_per_item'] / 1024:.1f} KiB | {r['seconds']:.1f} |")
    print()
    print("| paper preset | latent | before: RAM per item (float32) | after: disk per item (float16) | items | after: disk in all |")
    print("|---|---|---|---|---|---|")
    for preset, latent, b, a, n in _paper_rows():
        print(f"| {preset} | {latent} | {b / 1e6:.2f} MB | {a / 1e6:.2f} MB | {n} | {a * n / 1e9:.1f} GB |")


if __name__ == "__main__":
    main()
