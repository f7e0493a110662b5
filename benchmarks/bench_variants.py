"""Training-step variants, same run: eager (the default) vs channels-last vs ``torch.compile``.

Each variant builds the same model from the same seed and times the same step as
``stage1-official`` / ``ldm-step-official`` (reduced official configurations), so the rows are
directly comparable. ``torch.compile`` (inductor, needs a C++ compiler) is timed after its
compilation, which happens in the warm-up steps and is reported separately in ``extra``.
"""

from __future__ import annotations

import time

import torch

from .bench_stage1 import step_inputs
from .bench_stage2 import build_model, step_batch, train_step
from .common import OFFICIAL_IMAGE, OFFICIAL_LDM, Context, Row, bench, case

VARIANTS = ("eager", "channels_last", "compile")


def _stage1(variant: str):
    from ddmi.config import load_config
    from ddmi.models import build_autoencoder
    cfg = load_config("image-tiny", OFFICIAL_IMAGE)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    images, rand = step_inputs(ae, batch=8, input_size=64, zoom=1.0)
    forward = ae
    if variant == "channels_last":
        ae.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    elif variant == "compile":
        forward = torch.compile(ae)

    def step():
        loss, _ = forward(images, rand, kl_weight=0.5, sn_weight=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _ldm(variant: str):
    d = build_model(OFFICIAL_LDM, (16, 16, 16)).train()
    x0, t, eps = step_batch(d, 16, (16, 16, 16))
    if variant == "channels_last":
        d.net.to(memory_format=torch.channels_last)
        x0, eps = (x.contiguous(memory_format=torch.channels_last) for x in (x0, eps))
    elif variant == "compile":
        d.net = torch.compile(d.net)
    return train_step(d, x0, t, eps)


def _rows(name: str, make, what: str, ctx: Context) -> list[Row]:
    rows = []
    for variant in VARIANTS:
        try:
            step = make(variant)
            t0 = time.perf_counter()
            step()                                            # compilation happens here
            first = time.perf_counter() - t0
            w, r = ctx.reps(2, 5)
            t = bench(step, warmup=w, repeats=r)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
            rows.append(Row(f"{name}-{variant}", f"{what}, {variant}", float("nan"), "s",
                            extra=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
            continue
        rows.append(t.row(f"{name}-{variant}", f"{what}, {variant}", "s", f"first step {first:.1f} s"))
    base = rows[0].median
    for row in rows[1:]:
        if row.median == row.median:
            row.extra += f"; {base / row.median:.2f}x eager"
    return rows


@case("stage1-variants", slow=True)
def stage1_variants(ctx: Context) -> list[Row]:
    """Reduced official image stage-1 step (batch 8, 64^2): eager vs channels-last vs compile."""
    return _rows("stage1", _stage1, "stage-1 step, reduced official image config", ctx)


@case("ldm-variants", slow=True)
def ldm_variants(ctx: Context) -> list[Row]:
    """Reduced official LDM step (16.07 M UNet, batch 16): eager vs channels-last vs compile."""
    return _rows("ldm", _ldm, "LDM step, reduced official UNet", ctx)
