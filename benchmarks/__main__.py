"""Run the ddmi benchmark suite: ``python -m benchmarks [--only NAME] [--json out.json] [--quick]``.

Every case runs in its own fresh Python subprocess (see ``benchmarks/common.py`` for how time and
memory are measured); the parent collects the rows, prints one table and optionally writes JSON.
``--only`` takes comma-separated case names or prefixes (``--only decode`` runs every
``decode-*`` case); ``--list`` shows the cases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import common
from .common import CASES, Context

MODULES = ("bench_stage1", "bench_decode", "bench_stage2", "bench_variants", "bench_metrics", "bench_mesh",
           "bench_nerf", "bench_video")
RESULT_TAG = "@@BENCH-RESULT "


def _load_cases() -> None:
    import importlib
    for m in MODULES:
        importlib.import_module(f"benchmarks.{m}")


def _select(only: str | None, quick: bool) -> list[str]:
    names = list(CASES)
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        picked = [n for n in names if any(n == w or n.startswith(w) for w in wanted)]
        unknown = [w for w in wanted if not any(n == w or n.startswith(w) for n in names)]
        if unknown:
            sys.exit(f"unknown benchmark case(s): {', '.join(unknown)}; "
                     f"known: {', '.join(names)}")
        return picked
    return [n for n in names if not (quick and CASES[n].slow)]


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3g}" if a < 10 else f"{v:.1f}"
    return f"{v:.3g}"


def format_table(rows: list[dict]) -> str:
    head = ["case", "what", "median", "unit", "official", "speed-up", "peak RSS MiB", "+RSS MiB", "extra"]
    body = []
    for r in rows:
        body.append([
            r["case"], r["what"], _fmt(r["median"]), r["unit"], _fmt(r.get("official")),
            f"{r['speedup']:.2f}x" if r.get("speedup") else "",
            _fmt(r.get("peak_rss_mib")), _fmt(r.get("delta_rss_mib")), r.get("extra", ""),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def _run_case_here(name: str, ctx: Context) -> None:
    """Child side: run one case in this process and print its rows as one tagged JSON line."""
    common.setup_torch(ctx.threads)
    rows = CASES[name].fn(ctx)
    print(RESULT_TAG + json.dumps([common.row_dict(r) for r in rows]), flush=True)


def _run_case_subprocess(name: str, ctx: Context, timeout: float) -> tuple[list[dict], float, str]:
    cmd = [sys.executable, "-m", "benchmarks", "--case-in-process", name, "--threads", str(ctx.threads)]
    if ctx.quick:
        cmd.append("--quick")
    env = dict(os.environ, OMP_NUM_THREADS=str(ctx.threads), MKL_NUM_THREADS=str(ctx.threads))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        return [], time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), wall, ""
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return [], wall, f"failed (exit {proc.returncode}): {err}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated case names or name prefixes")
    p.add_argument("--json", metavar="PATH", help="also write machine info and rows as JSON")
    p.add_argument("--quick", action="store_true",
                   help="1 warm-up, at most 2 repeats, skip the slow cases (for development)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--timeout", type=float, default=600, help="per-case limit in seconds")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--case-in-process", metavar="NAME", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    _load_cases()
    ctx = Context(quick=args.quick, threads=args.threads)
    if args.case_in_process:
        _run_case_here(args.case_in_process, ctx)
        return 0
    if args.list:
        for n, c in CASES.items():
            print(f"{n:24s} {'(slow) ' if c.slow else ''}{c.doc}")
        return 0

    names = _select(args.only, args.quick)
    info = common.machine_info(args.threads)
    print(f"machine: {info['cpu']} ({info['cpu_flags']}), {info['usable_cpus']} usable of "
          f"{info['logical_cpus']} logical CPUs; torch {info['torch']}, {args.threads} threads; "
          f"{info['date']}; load average at start {info['loadavg_at_start']}", flush=True)
    rows, failures, t_all = [], {}, time.perf_counter()
    for name in names:
        got, wall, err = _run_case_subprocess(name, ctx, args.timeout)
        status = err or f"{len(got)} row(s)"
        print(f"  {name:22s} {wall:6.1f} s  {status}", file=sys.stderr, flush=True)
        if err:
            failures[name] = err
        for r in got:
            r["case_wall_s"] = round(wall, 1)
        rows.extend(got)
    total = time.perf_counter() - t_all
    print()
    print(format_table(rows))
    print(f"\n{len(names)} case(s) in {total:.0f} s" + (f"; FAILED: {failures}" if failures else ""))
    if args.json:
        info["loadavg_at_end"] = list(os.getloadavg())
        with open(args.json, "w") as f:
            json.dump({"machine": info, "quick": args.quick, "total_s": round(total, 1),
                       "failures": failures, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
