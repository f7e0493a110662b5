"""``ddmi eval`` of shape (occupancy) run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddmi.data.shapes import ShapesDataset, find_models
from ddmi.domains.occupancy.meshes import extract_meshes, mesh_point_clouds, shape_metrics
from ddmi.domains.occupancy.model import occupancy_iou
from ddmi.errors import DataError
from ddmi.progress import progress_bar, share

GENERATION_METRICS = {"mmd-cd", "cov-cd", "1nna-cd"}


def evaluate_run(run_dir: Path, cfg, stage: str, ae, generate, *, metrics, num, resolution, batch_size, ref,
                 seed: int, shard, log, **_) -> dict:
    """Shape runs. ``mmd-cd``/``cov-cd``/``1nna-cd`` (LDM): ``--num`` (default 100) generated meshes
    at ``--resolution`` (default 128), 2048 surface samples each, against 2048-point surface samples
    of the reference shapes (the test split, else the training split), unit-sphere normalised
    (docs/official-code.md §7). ``iou`` (VAE or LDM): reconstruction IoU of the reference shapes' occupancies from
    their encoded point clouds (posterior mean), at the occupancy threshold.

    ``generate(num) -> (batches, sampler, steps)`` draws this process's share of the samples; the
    meshes of the generated samples are extracted in shares, the rest runs on the main process."""
    sc = cfg.shapes
    root = ref or cfg.data.dir
    classes = None if sc.classes is None else list(sc.classes)
    split = "test"
    try:
        find_models(root, "test", classes)
    except DataError:
        split = "train"
    ds = ShapesDataset(root, split=split, classes=classes, num_points=sc.num_points, point_noise=sc.point_noise,
                       num_queries=1, seed=seed)
    n_ref = len(ds) if num is None else min(num, len(ds))
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(ds), n_ref, replace=False))
    results: dict = {"run": str(run_dir), "reference": f"{root} ({split}, {n_ref} shapes)"}

    dev = shard.device
    if shard.is_main and "iou" in metrics:
        ious = []
        with torch.inference_mode(), progress_bar(len(picked), "reconstruction IoU", "shape") as bar:
            for i in picked:
                item = ds[int(i)][None].to(dev)
                z = ae.reconstruction_latent(ae.encode(item[:, :sc.num_points, :3]).mode())
                points, occ = ds.occupancy(int(i))
                logits = ae.decode(z).query(ae.normalize(torch.from_numpy(points).float().to(dev)))[..., 0]
                ious.append(float(occupancy_iou(logits, torch.from_numpy(occ).float()[None].to(dev),
                                                ae.threshold_logit)))
                bar.update(1)
        results["iou"] = float(np.mean(ious))

    if GENERATION_METRICS & set(metrics):
        res = resolution or 128
        num_gen = num or 100
        batches, sampler, steps = generate(num_gen)
        mine = []
        with torch.inference_mode(), progress_bar(share(num_gen, shard.world), f"meshing at {res}^3", "mesh",
                                                  enabled=shard.is_main) as bar:
            for i, z in batches:
                mine.append((i, extract_meshes(ae.decode(z), res, threshold=ae.threshold,
                                               half_extent=ae.half_extent, progress=bar)))
        meshes = [m for batch in shard.gather_by_start(mine) for m in batch]
        if not shard.is_main:
            return results
        gen = mesh_point_clouds(meshes, 2048, seed=seed)
        ref_clouds = torch.from_numpy(np.stack([ds.surface(int(i))[rng.integers(0, len(ds.surface(int(i))), 2048)]
                                                for i in picked])).float()
        pc = shape_metrics(gen, ref_clouds, device=dev)
        for key, name in (("mmd", "mmd-cd"), ("cov", "cov-cd"), ("nna", "1nna-cd")):
            if name in metrics:
                results[name] = pc[key]
        results.update(num_gen=num_gen, empty_meshes=sum(len(f) == 0 for _, f in meshes), resolution=res,
                       sampler=sampler, steps=steps)
    return results
