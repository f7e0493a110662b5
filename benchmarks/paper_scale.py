"""Paper-scale numbers of each paper preset and stage, computed without a GPU: parameters, FLOPs
per training step, memory per GPU and an estimated time per step.

``python -m benchmarks.paper_scale [--mfu 0.35] [--json PATH]`` prints one table (docs/paper-scale.md).

How each column is obtained:

* **parameters**: the trainable parameters of the stage's module, counted exactly (stage 1: the
  whole autoencoder with its PointNet / MLP; stage 2: the denoiser + the mixed-prediction
  parameters), as ``ddmi info PRESET -q`` counts them.
* **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` around the forward (the training loss,
  as ``benchmarks.paper_steps`` builds it) and ``backward()`` of one micro-batch at the preset's
  per-process batch, on the ``meta`` device (shapes only: nothing is allocated or computed). The
  counter counts matrix products, convolutions and attention (2 FLOPs per multiply-add), not
  element-wise ops, normalisations or ``grid_sample``. The stage-1 spectral regulariser is left
  out (a few power iterations on the weights: small). An optimiser step is ``grad_accum``
  micro-batches.
* **weights + grads + AdamW**: exactly ``16 bytes x parameters`` (fp32 weights 4, gradients 4,
  AdamW's two moments 8; accelerate's mixed precision autocasts and keeps fp32 weights).
* **activations**: an ESTIMATE: the bytes of the tensors autograd saves for the backward pass
  during the forward of one micro-batch, counted with ``torch.autograd.graph.saved_tensors_hooks``
  on the meta device, each storage once, parameters excluded, fp32, and without the attention
  probabilities (softmax outputs): on the meta device attention runs PyTorch's math path, which
  saves them, while a GPU's flash / memory-efficient kernels recompute them (their bytes are a
  separate column: what the math path would add). Under bf16/fp16 autocast
  many of them are stored in half precision (up to ~2x less); transient buffers of the backward
  pass come on top. Not a GPU measurement: ``python -m benchmarks.gpu`` measures the peak.
* **time per step**: an ESTIMATE: the optimiser step's FLOPs at ``--mfu`` (default 35 %) of the
  dense bf16 peak of an H100 SXM (989 TFLOP/s) and of an A100 (312 TFLOP/s), plus the AdamW
  update as memory traffic (28 bytes per parameter at 3.35 / 2.04 TB/s); and the preset's
  ``steps`` at that rate (data parallel over 4 GPUs: each GPU does its per-process batch, so the
  4-GPU time per optimiser step is the one-GPU time, communication ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .paper_steps import PAPER_PRESETS, stage1_batch

PEAK_BF16 = {"H100": 989e12, "A100": 312e12}   # dense bf16 tensor-core peaks, FLOP/s (SXM)
HBM = {"H100": 3.35e12, "A100": 2.04e12}         # memory bandwidth, bytes/s (H100 SXM, A100 80 GB SXM)
ADAMW_BYTES = 28                                 # per parameter: read w, g, m, v (16), write w, m, v (12)


def _meta_model(cfg, stage: str):
    """``(module, loss_fn, batch)`` on the meta device."""
    from ddmi.diffusion import LatentDiffusion
    from ddmi.models import build_denoiser
    from ddmi.models import build_autoencoder

    from .paper_steps import stage2_loss
    meta = torch.device("meta")
    with meta:
        ae = build_autoencoder(cfg)
    if stage == "vae":
        b = cfg.train.batch_size
        x, rand = stage1_batch(cfg, ae, b, meta)
        from .paper_steps import stage1_weights
        kl, _ = stage1_weights(cfg)
        return ae, (lambda: ae(x, rand, kl_weight=kl, sn_weight=0.0)[0]), b
    latent_shape = tuple(ae.latent_shape)
    with meta:
        net = build_denoiser(cfg, latent_shape)
    d = LatentDiffusion(net, latent_channels=latent_shape[0], mixed_prediction=cfg.ldm.mixed_prediction,
                        mixed_init=cfg.ldm.mixed_init).to(meta)
    b = cfg.ldm_train.batch_size
    return d, stage2_loss(cfg, d, latent_shape, b, meta), b


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage()._cdata
    except Exception:  # noqa: BLE001
        return id(t)


def measure(preset: str, stage: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ddmi.config import load_config
    cfg = load_config(preset)
    t0 = time.perf_counter()
    module, loss_fn, batch = _meta_model(cfg, stage)
    params = [p for p in module.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    param_keys = {_storage_key(p) for p in module.parameters()}
    saved: dict = {}

    def pack(t):
        k = _storage_key(t)
        if k not in param_keys and k not in saved:
            saved[k] = t.untyped_storage().nbytes() if t.device.type == "meta" else t.numel() * t.element_size()
        return t

    from torch.utils._python_dispatch import TorchDispatchMode

    softmax_keys: set = set()

    class MarkSoftmax(TorchDispatchMode):
        """Notes the attention probabilities (softmax outputs): on the meta device attention runs
        the math path, which saves them; a GPU's flash / memory-efficient kernels do not."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten._softmax, torch.ops.aten._safe_softmax) \
                    and isinstance(out, torch.Tensor) and out.dim() >= 3:
                softmax_keys.add(_storage_key(out))
            return out

    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), MarkSoftmax():
            loss = loss_fn()
        loss.backward()
    attn = sum(v for k, v in saved.items() if k in softmax_keys)
    tc = cfg.train if stage == "vae" else cfg.ldm_train
    return {"preset": preset, "stage": stage, "params": n_params, "batch": batch, "grad_accum": tc.grad_accum,
            "steps": tc.steps, "flops_micro": counter.get_total_flops(),
            "flops_step": counter.get_total_flops() * tc.grad_accum,
            "state_bytes": 16 * n_params, "activation_bytes": sum(saved.values()) - attn,
            "attention_prob_bytes": attn,
            "seconds_to_count": round(time.perf_counter() - t0, 1)}


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f}"


def format_table(rows: list[dict], mfu: float) -> str:
    head = ["preset", "stage", "params", "batch x accum", "TFLOP / micro-batch", "TFLOP / step",
            "weights+grads+AdamW GiB", "activations GiB (est.)", "+ attention probs GiB (math path)",
            "GiB per GPU (est.)",
            "s / step H100 (est.)", "s / step A100 (est.)",
            "preset steps on 4 H100 (est.)"]
    body = []
    for r in rows:
        h100, a100 = (r["flops_step"] / (mfu * PEAK_BF16[g]) + ADAMW_BYTES * r["params"] / HBM[g]
                      for g in ("H100", "A100"))
        days = h100 * r["steps"] / 86400
        body.append([r["preset"], r["stage"], f"{r['params'] / 1e6:.1f} M", f"{r['batch']} x {r['grad_accum']}",
                     f"{r['flops_micro'] / 1e12:.2f}", f"{r['flops_step'] / 1e12:.1f}", _gib(r["state_bytes"]),
                     _gib(r["activation_bytes"]), _gib(r["attention_prob_bytes"]),
                     _gib(r["state_bytes"] + r["activation_bytes"]), f"{h100:.2f}", f"{a100:.2f}",
                     f"{r['steps']:,} steps: " + (f"{days * 1440:.0f} min" if days < 1 / 24 else
                                                  f"{days * 24:.0f} h" if days < 2 else f"{days:.1f} d")])
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper_scale", description=__doc__.split("\n")[0])
    p.add_argument("--presets", default=",".join(PAPER_PRESETS))
    p.add_argument("--mfu", type=float, default=0.35, help="assumed fraction of the bf16 peak (default 0.35)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    from .common import machine_info
    info = machine_info(torch.get_num_threads())
    print(f"machine: {info['cpu']} ({info['cpu_flags']}); torch {info['torch']}; {info['date']}; "
          f"counted on the meta device (no GPU)", flush=True)
    rows = []
    for preset in [x for x in args.presets.split(",") if x]:
        for stage in ("vae", "ldm"):
            rows.append(measure(preset, stage))
            print(f"  {preset} {stage}: {rows[-1]['seconds_to_count']} s", file=sys.stderr, flush=True)
    print(format_table(rows, args.mfu))
    print(f"\nestimates: time = FLOPs / ({args.mfu:.0%} of {PEAK_BF16['H100'] / 1e12:.0f} (H100) or "
          f"{PEAK_BF16['A100'] / 1e12:.0f} (A100) bf16 TFLOP/s) + AdamW's {ADAMW_BYTES} bytes/parameter at "
          f"{HBM['H100'] / 1e12:.2f} / {HBM['A100'] / 1e12:.2f} TB/s; activations = autograd's saved tensors (fp32) "
          "of one micro-batch, attention probabilities apart; weights+grads+AdamW = 16 bytes x parameters (exact)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "mfu": args.mfu, "peaks": PEAK_BF16, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
