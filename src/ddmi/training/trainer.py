"""One trainer for both stages, on accelerate.

The trainer owns the loop: learning-rate schedule, gradient accumulation (no gradient sync on
all but the last micro-batch), non-finite detection, logging, periodic samples, atomic
checkpoints and resume. What is trained is a :class:`Task` (stage 1 or stage 2), which owns the
data, the module and what to save.

Determinism: the examples of optimiser step ``s``, micro-batch ``m`` are global positions
``[(s*G + m) * GB, (s*G + m + 1) * GB)`` of a sequence of per-epoch permutations seeded by the
run seed (``GB`` = per-process batch x processes); process ``r`` takes its slice. All training
randomness (flips, crops, posterior noise, ...) is drawn for the whole global batch from a
generator seeded by ``(seed, s, m)`` and sliced the same way. So a resumed run repeats exactly
what an uninterrupted one does, and N processes see what one process with the same global batch
sees.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ddmi import checkpoint as ckpt
from ddmi.errors import DDMIError

NONFINITE_HELP = ("Remedies: raise the spectral regularisation (loss.sn_weight / loss.sn_init, stage 1), "
                  "lower the learning rate (train.lr), or set train.grad_clip; these keys may change "
                  "when a run resumes, so re-run the same command with the remedy added")


class LossWatch:
    """Flags a step whose loss is non-finite or explodes: larger than ``factor`` times the median
    of the last ``window`` accepted losses (once ``warmup`` of them are known; ``factor`` 0 = only
    non-finite losses). Such a step is skipped like a non-finite one, and the checkpoint due in
    its save interval is not written, so the kept checkpoints predate the divergence."""

    def __init__(self, factor: float, window: int = 100, warmup: int = 10):
        self.factor, self.window, self.warmup = factor, window, warmup
        self.history: list[float] = []

    def explodes(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        if self.factor > 0 and len(self.history) >= self.warmup:
            baseline = float(np.median(self.history[-self.window:]))
            if abs(loss) > self.factor * max(abs(baseline), 1e-8):
                return True
        self.history = [*self.history[-self.window + 1:], loss]
        return False


class Task:
    """What the trainer trains. Subclasses define the data, the module and the extras."""

    stage: str
    module: nn.Module
    dataset: Dataset

    def random_inputs(self, generator: torch.Generator, n: int) -> dict[str, Any]:
        """Randomness for ``n`` examples: tensors with leading dim ``n`` (sliced per process) or
        plain values shared by the batch."""
        return {}

    def loss_kwargs(self, step: int) -> dict[str, float]:
        return {}

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"model": ckpt.state_dict_for_saving(self.module)}

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        ckpt.load_into(self.module, weights["model"], what="checkpoint model")

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def after_optimizer_step(self, step: int) -> None:
        pass

    def write_samples(self, step: int, folder: Path) -> list[Path]:
        return []

    def evaluate(self) -> dict[str, float]:
        """Cheap held-out metrics (a few examples, seconds on a CPU), logged periodically;
        called on the main process in eval mode under ``torch.inference_mode``."""
        return {}

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def to(self, device: torch.device | str) -> None:
        """Move everything a training step, a preview and an evaluation touch to ``device`` (the
        trainer's one placement call). Subclasses holding more (an EMA, a frozen VAE, fixed
        noise, preview tensors) move that too."""
        self.module.to(device)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a group may set its own ``betas`` / ``weight_decay``
        (the learning rate schedule applies to every group)."""
        return [{"params": self.parameters()}]


# ------------------------------------------------------------------------------------------
# deterministic data order


def global_positions(step: int, micro: int, grad_accum: int, global_batch: int) -> range:
    k = step * grad_accum + micro
    return range(k * global_batch, (k + 1) * global_batch)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields the dataset indices of this process's micro-batches from ``start_step`` on.

    With ``positional``, it yields ``(index, global position)`` pairs instead, for datasets that
    draw per-item randomness themselves (seeded by the position, so it survives resume).
    """

    def __init__(self, n: int, *, seed: int, batch_size: int, grad_accum: int, rank: int,
                 world: int, start_step: int, steps: int, positional: bool = False):
        self.positional = positional
        self.n, self.seed, self.bs, self.ga = n, seed, batch_size, grad_accum
        self.rank, self.world, self.start, self.steps = rank, world, start_step, steps
        self._perms: dict[int, np.ndarray] = {}

    def _index(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perms[epoch][i])

    def __iter__(self) -> Iterator[list[int]]:
        gb = self.bs * self.world
        for step in range(self.start, self.steps):
            for micro in range(self.ga):
                pos = global_positions(step, micro, self.ga, gb)
                mine = pos[self.rank * self.bs:(self.rank + 1) * self.bs]
                yield [(self._index(p), p) if self.positional else self._index(p) for p in mine]

    def __len__(self) -> int:
        return (self.steps - self.start) * self.ga


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, step, micro]).integers(2**62)))


def slice_inputs(inputs: dict[str, Any], rank: int, bs: int, device) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            out[k] = v[rank * bs:(rank + 1) * bs].to(device)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------


def learning_rate(tc: DictConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to ``min_lr``."""
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if not tc.cosine:
        return tc.lr
    span = max(1, tc.steps - tc.warmup_steps)
    t = min(1.0, (step - tc.warmup_steps) / span)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * t))


class MetricLog:
    """JSON-lines scalars (always); TensorBoard scalars and preview images (when tensorboard is
    installed)."""

    def __init__(self, folder: Path, enabled: bool):
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self.tb = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(folder / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def images(self, step: int, paths: list[Path]) -> None:
        """The preview pictures written at ``step`` (PNG files) as TensorBoard images."""
        if self.tb is None:
            return
        from PIL import Image
        for path in paths:
            if Path(path).suffix.lower() == ".png" and Path(path).is_file():
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("RGB"))
                self.tb.add_image(f"samples/{Path(path).stem.split('-')[0]}", pixels, step, dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    last_logs: dict[str, float]


class _Interrupt:
    """Turns SIGINT / SIGTERM into a flag checked between optimiser steps."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def mixed_precision(precision: str, device: torch.device):
    """``(autocast context, GradScaler)`` for ``precision`` (``no`` | ``fp16`` | ``bf16``).

    Weights, gradients and optimiser states stay fp32; only the forward pass runs in half
    precision. fp16 gets dynamic loss scaling: a step whose gradients overflow is skipped and the
    scale halves; after 2000 clean steps it doubles again. The scaler is disabled (a no-op) for
    ``no`` and ``bf16``."""
    if precision not in ("no", "fp16", "bf16"):
        raise DDMIError(f"unknown mixed precision '{precision}' (choose no, fp16 or bf16)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    return autocast, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def set_gpu_options(tc: DictConfig, device: torch.device) -> None:
    """TF32 matrix products and convolutions (``tf32``; Ampere and newer GPUs)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(tc.tf32)
        torch.backends.cudnn.allow_tf32 = bool(tc.tf32)


def gradients_finite(params) -> bool:
    """Whether every gradient is finite, with one host synchronisation."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def train(task: Task, tc: DictConfig, run_dir: Path, *, seed: int, accelerator: Accelerator | None = None,
          log=print, progress: bool = True, stop_after: int | None = None,
          precision: str | None = None) -> TrainResult:
    """Run (or resume) training of ``task`` with training config ``tc`` in ``run_dir``.

    ``precision``: ``no`` | ``fp16`` | ``bf16`` (default ``tc.mixed_precision``): autocast of the
    forward pass, fp32 master weights; fp16 adds dynamic loss scaling (:func:`mixed_precision`).
    The accelerator should be created without mixed precision: the trainer applies it.
    ``stop_after``: stop (with a checkpoint) once this step is reached; used by tests.
    """
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    device = acc.device
    rank, world = acc.process_index, acc.num_processes
    main = acc.is_main_process
    precision = tc.mixed_precision if precision is None else precision
    set_gpu_options(tc, device)
    task.to(device)
    if tc.channels_last:
        task.module.to(memory_format=torch.channels_last)
    autocast, scaler = mixed_precision(precision, device)

    betas = tuple(tc.betas)
    optimizer = torch.optim.AdamW(task.param_groups(), lr=tc.lr, betas=betas, weight_decay=tc.weight_decay)
    start_step = 0
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        state = ckpt.load_state(latest)
        weights = {p.name[:-12]: ckpt.load_weights(p) for p in latest.glob("*.safetensors")}
        task.load_weights(weights)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(f"optimizer state in {latest} does not match: {exc}") from None
        task.load_extra_state(state.get("extra", {}))
        if scaler.is_enabled() and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        if main:
            log(f"resuming {run_dir} from step {start_step} ({latest.name})")
    model, optimizer = acc.prepare(task.module, optimizer)
    if tc.compile:
        model = torch.compile(model)

    sampler = StepBatchSampler(len(task.dataset), seed=seed, batch_size=tc.batch_size,
                               grad_accum=tc.grad_accum, rank=rank, world=world,
                               start_step=start_step, steps=tc.steps,
                               positional=getattr(task.dataset, "positional", False))
    loader = DataLoader(task.dataset, batch_sampler=sampler, num_workers=getattr(task, "num_workers", 0),
                        persistent_workers=False, pin_memory=device.type == "cuda")
    batches = iter(loader)

    logger = MetricLog(run_dir / "logs", enabled=main)
    samples_dir = run_dir / "samples"

    def save(step: int) -> None:
        acc.wait_for_everyone()
        if main:
            state = {"step": step, "optimizer": optimizer.state_dict(), "extra": task.extra_state()}
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            ckpt.save_checkpoint(run_dir, step, weights=task.weights(), state=state, keep=tc.keep_checkpoints)
        acc.wait_for_everyone()

    def samples(step: int) -> None:
        if main:
            task.module.eval()
            with torch.inference_mode():
                written = task.write_samples(step, samples_dir)
            logger.images(step, list(written or []))
            task.module.train()

    eval_every = tc.sample_every if tc.get("eval_every") is None else tc.eval_every

    def evaluate(step: int) -> None:
        if main:
            task.module.eval()
            with torch.inference_mode():
                scalars = task.evaluate()
            task.module.train()
            if scalars:
                logger.write(step, {f"eval/{k}": v for k, v in scalars.items()})
                text = ", ".join(f"{k} {v:.4g}" for k, v in scalars.items())
                (bar.write if bar is not None else log)(f"step {step}: {text}")

    bar = None
    if main and progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=tc.steps, initial=start_step, desc=f"train {task.stage}", dynamic_ncols=True)

    step, nonfinite, last_logs, interrupted = start_step, 0, {}, False
    watch = LossWatch(tc.get("divergence_factor", 0.0))
    tainted: int | None = None       # first diverging step since the last checkpoint
    t0 = time.perf_counter()
    task.module.train()
    with _Interrupt() as interrupt:
        while step < tc.steps:
            lr = learning_rate(tc, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums: dict[str, float] = {}
            bad = torch.zeros((), device=device)
            total = torch.zeros((), device=device)
            logged: dict[str, torch.Tensor] = {}
            for micro in range(tc.grad_accum):
                images = next(batches)
                if isinstance(images, (list, tuple)):
                    images = images[0]
                gen = step_generator(seed, step, micro)
                rand = task.random_inputs(gen, tc.batch_size * world)
                rand = slice_inputs(rand, rank, tc.batch_size, device)
                sync = contextlib.nullcontext() if micro == tc.grad_accum - 1 else acc.no_sync(model)
                with sync:
                    with autocast:
                        loss, logs = model(images.to(device, non_blocking=True), rand, **task.loss_kwargs(step))
                    if not torch.isfinite(loss):
                        bad += 1
                        loss = loss * 0.0  # keep the collective calls in step across processes
                    total += loss.detach().float() / tc.grad_accum
                    acc.backward(scaler.scale(loss / tc.grad_accum))
                for k, v in logs.items():
                    logged[k] = logged.get(k, 0.0) + v.detach().float() / tc.grad_accum
            if logged:
                names = sorted(logged)
                vec = torch.stack([torch.as_tensor(logged[k], device=device) for k in names])
                vec = acc.reduce(vec, reduction="mean") if world > 1 else vec
                sums = {k: float(v) for k, v in zip(names, vec)}
            bad = acc.reduce(bad, reduction="sum") if world > 1 else bad
            total = acc.reduce(total, reduction="mean") if world > 1 else total
            exploded = bad.item() == 0 and watch.explodes(float(total))
            grads_ok = gradients_finite(task.parameters())   # the same on every process (all-reduced)
            # fp16: non-finite gradients with a finite loss are an overflow of the loss scale; the
            # scaler skips the step and halves the scale, and it is not divergence
            overflow = scaler.is_enabled() and not grads_ok and bad.item() == 0
            if exploded or bad.item() > 0 or not (grads_ok or overflow):
                optimizer.zero_grad(set_to_none=True)
                nonfinite += 1
                tainted = tainted if tainted is not None else step
                what = (f"loss {float(total):.4g} exploded (over {watch.factor:g}x the recent median)"
                        if exploded else "non-finite loss or gradient")
                if main:
                    log(f"step {step}: {what}, step skipped ({nonfinite} in a row)")
                if nonfinite >= tc.max_nonfinite:
                    logger.close()
                    good = ckpt.latest_checkpoint(run_dir)
                    kept = (f"the last good checkpoint is {good} (written before the divergence; the "
                            "run resumes from it)" if good else "no checkpoint was written")
                    raise DDMIError(f"training diverged at step {step}: {what} for {nonfinite} steps in a "
                                    f"row; {kept}. {NONFINITE_HELP}")
                step += 1
                continue
            nonfinite = 0
            scaler.unscale_(optimizer)
            if tc.grad_clip > 0 and not overflow:
                acc.clip_grad_norm_(task.parameters(), tc.grad_clip)
            scaler.step(optimizer)          # skipped by the scaler on an overflow
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if overflow:
                if main:
                    log(f"step {step}: fp16 gradient overflow, step skipped; loss scale now {scaler.get_scale():g}")
                step += 1
                continue
            task.after_optimizer_step(step)
            step += 1
            last_logs = {**sums, "lr": lr}
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in sums.items()}, refresh=False)
            if step % tc.log_every == 0 or step == tc.steps:
                last_logs["sec_per_step"] = (time.perf_counter() - t0) / max(1, step - start_step)
                logger.write(step, last_logs)
            if tc.sample_every and step % tc.sample_every == 0 and step < tc.steps:
                samples(step)
            if eval_every and step % eval_every == 0 and step < tc.steps:
                evaluate(step)
            if step % tc.save_every == 0 or step == tc.steps:
                if tainted is None or step == tc.steps:      # the last step itself was a good one
                    save(step)
                elif main:
                    log(f"step {step}: no checkpoint written: the loss diverged at step {tainted} since the "
                        "last one, which is kept as the last good checkpoint")
                tainted = None
            if interrupt.requested or (stop_after is not None and step >= stop_after):
                interrupted = interrupt.requested
                if step % tc.save_every != 0 and step != tc.steps and tainted is None:
                    save(step)
                if main and interrupted:
                    log(f"interrupted: saved a checkpoint at step {step}; run the same command to resume")
                break
    if bar is not None:
        bar.close()
    if step >= tc.steps and not interrupted:
        samples(step)
        if tc.get("eval_every") != 0:
            evaluate(step)
    logger.close()
    acc.wait_for_everyone()
    return TrainResult(step=step, interrupted=interrupted, last_logs=last_logs)
