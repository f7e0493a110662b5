"""Image outputs: stage-1 previews and probes, sample files, reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch

from ddmi.data.images import load_image, resize, save_grid, save_image
from ddmi.devices import model_device
from ddmi.files import output_stems
from ddmi.metrics.image_quality import psnr
from ddmi.progress import progress_bar, share


def write_preview(ae, preview: torch.Tensor, path: Path) -> list[Path]:
    """Rows: inputs (at 2R), reconstructions at R (upscaled for display) and at 2R."""
    r = ae.resolution
    x = preview.to(model_device(ae))
    z = ae.encode(x).mode()
    rec1 = torch.nn.functional.interpolate(ae.render(z, r), scale_factor=2, mode="nearest")
    rec2 = ae.render(z, 2 * r)
    save_grid(torch.cat([x, rec1, rec2]).cpu(), path, nrow=len(x),
              row_labels=["input", f"rec {r}px", f"rec {2 * r}px"])
    return [path]


def probe(ae, preview: torch.Tensor) -> dict[str, float]:
    """``psnr``: reconstructions (posterior mean) of the preview images at R, in dB."""
    r = ae.resolution
    x = resize(preview.to(model_device(ae)), r)
    rec = ae.render(ae.encode(x).mode(), r).clamp(-1, 1)
    return {"psnr": float(psnr(rec, x).mean())}


def sample_targets(args, ae, count: int) -> list[Path]:
    out, resolutions = Path(args.out), args.resolution or [ae.resolution]
    if args.interpolate:
        return [out / f"interpolation_{r}.png" for r in resolutions]
    return ([out / f"sample_{i:05d}_{r}.png" for i in range(count) for r in resolutions]
            + [out / f"grid_{r}.png" for r in resolutions])


def sample_groups(args, ae, count: int) -> dict[str, list[Path]]:
    """One group per resolution: ``{"64": [sample_00000_64.png, ...]}`` (no grids, no strips)."""
    out, resolutions = Path(args.out), args.resolution or [ae.resolution]
    if args.interpolate:
        return {}
    return {str(r): [out / f"sample_{i:05d}_{r}.png" for i in range(count)] for r in resolutions}


def write_samples(args, ae, batches, count: int, shard, log) -> str:
    """PNG per sample and resolution (this process's batches), a grid per resolution (main
    process); with ``--interpolate`` one strip per resolution."""
    out, resolutions = Path(args.out), args.resolution or [ae.resolution]
    rendered = {r: [] for r in resolutions}
    with progress_bar(share(count, shard.world) * len(resolutions), "decoding images", "image",
                      enabled=shard.is_main) as bar:
        for i, z in batches:
            for r in resolutions:
                imgs = ae.render(z, r).cpu()
                if not args.interpolate:
                    for j, img in enumerate(imgs):
                        save_image(img, out / f"sample_{i + j:05d}_{r}.png")
                rendered[r].append((i, imgs))
                bar.update(len(z))
    for r in resolutions:
        imgs = torch.cat(shard.gather_by_start(rendered[r]))
        if shard.is_main:
            if args.interpolate:
                save_grid(imgs, out / f"interpolation_{r}.png", nrow=len(imgs))
            else:
                save_grid(imgs, out / f"grid_{r}.png")
    what = "an interpolation strip" if args.interpolate else f"{count} samples + grid"
    return f"wrote {what} at {', '.join(f'{r}x{r}' for r in resolutions)} to {out}"


def reconstruct_targets(args, ae) -> list[Path]:
    out, res = Path(args.out), args.resolution or ae.resolution
    return [out / f"{s}_rec{res}.png" for s in output_stems(args.inputs)] + [out / "reconstructions.png"]


def reconstruct(args, ae, log) -> int:
    """Encode image files and render their reconstructions at ``--resolution``."""
    device = model_device(ae)
    out = Path(args.out)
    r = ae.resolution
    res = args.resolution or r
    rows = []
    for path, stem in zip(args.inputs, output_stems(args.inputs)):
        img = torch.from_numpy(load_image(path)).permute(2, 0, 1).float() / 127.5 - 1.0
        x = resize(img[None], r).to(device)
        with torch.inference_mode():
            rec = ae.render(ae.encode(x).mode(), res).cpu()
        save_image(rec[0], out / f"{stem}_rec{res}.png")
        rows.append((resize(img[None], res)[0], rec[0]))
    save_grid(torch.stack([t for pair in rows for t in pair]), out / "reconstructions.png", nrow=2,
              col_labels=["input", f"reconstruction ({res}px)"])
    log(f"wrote {len(rows)} reconstructions at {res}x{res} to {out} (+ reconstructions.png: input | output)")
    return 0
