"""The occupancy (3-D shape) domain: ONet-layout shapes; three latent planes; meshes at any grid
resolution."""

from __future__ import annotations

import torch

from ddmi.data.shapes import ShapesDataset, split_item
from ddmi.domains.base import Domain
from ddmi.domains.occupancy import evaluation, meshes
from ddmi.domains.occupancy.config import ShapesConfig
from ddmi.domains.occupancy.model import OccupancyAutoencoder, occupancy_iou
from ddmi.errors import DataError
from ddmi.render.mesh import write_png
from ddmi.vae.triplane_coords import PLANES


def _shapes(cfg, root, split: str, *, num_queries: int | None = None) -> ShapesDataset:
    sc = cfg.shapes
    return ShapesDataset(root, split=split, classes=None if sc.classes is None else list(sc.classes),
                         num_points=sc.num_points, point_noise=sc.point_noise,
                         num_queries=sc.num_queries if num_queries is None else num_queries, seed=cfg.seed)


class OccupancyDomain(Domain):
    name = "occupancy"
    input_suffixes = meshes.POINT_SUFFIXES
    command_options = {
        "synth": {"points": {"type": int, "help": "query points and surface points per shape (default 30k; ONet's "
                             "files hold 100k; training draws 2048 + 3000 per step)"}},
        "reconstruct": {"normalize": {"action": "store_true", "help": "centre each point cloud and scale its "
                                      "longest side to 1 first"}},
    }
    section = "shapes"
    section_schema = ShapesConfig
    synth_name = "shapes"
    description = "3-D shapes: occupancy fields of ONet-layout shapes (point clouds in, meshes out)"
    run_metrics = ("mmd-cd", "cov-cd", "1nna-cd", "iou")
    default_metrics = {"ldm": ("mmd-cd", "cov-cd", "1nna-cd"), "vae": ("iou",)}
    point_clouds = True

    def render(self, ae, z, *, resolution: int = 128):
        """Meshes of the latents' occupancy fields at ``resolution^3`` (those of ``ddmi sample
        --resolution R``): a list of ``(vertices (V, 3) float32 in the world frame, faces (F, 3)
        int64)``, watertight."""
        return meshes.extract_meshes(ae.decode(z), resolution, threshold=ae.threshold, half_extent=ae.half_extent)
    data_hint = " (ONet layout; see `ddmi synth shapes`)"

    def validate(self, cfg, check):
        sc = cfg.shapes
        check(sc.num_points > 0, "shapes.num_points", "must be > 0")
        check(sc.num_queries > 0, "shapes.num_queries", "must be > 0")
        check(sc.point_noise >= 0, "shapes.point_noise", "must be >= 0")
        check(sc.padding >= 0, "shapes.padding", "must be >= 0")
        check(0 < sc.threshold < 1, "shapes.threshold", "must be a probability in (0, 1)")
        check(sc.pointnet_blocks >= 1 and sc.pointnet_hidden > 0 and sc.pointnet_channels > 0,
              "shapes.pointnet_blocks", "PointNet sizes must be positive")
        check(_plane_order_ok(sc.cross_plane_order), "shapes.cross_plane_order", ORDER_WHY)
        check(_plane_order_ok(sc.stage1_latent_planes), "shapes.stage1_latent_planes", ORDER_WHY)

    def official_config(self, sections, cfg, official=None):
        """Overrides for official ``pointnet`` / ``vaemodel`` / ``mlp`` sections
        (:mod:`ddmi.domains.occupancy.official`)."""
        from ddmi.domains.occupancy import official as off
        return off.official_config(sections, cfg, official)

    def official_autoencoder_state(self, sections, cfg):
        from ddmi.domains.occupancy import official as off
        return off.official_state(sections, cfg)

    def build_autoencoder(self, cfg):
        return OccupancyAutoencoder(cfg)

    def training_dataset(self, cfg, log):
        return _shapes(cfg, cfg.data.dir, "train")

    def preview_items(self, cfg, train):
        try:  # held-out shapes for the reconstruction previews, if there are any
            preview = _shapes(cfg, cfg.data.test_dir or cfg.data.dir, "test")
        except DataError:
            preview = train
        return torch.stack([preview[i] for i in range(min(8, len(preview)))])

    def write_preview(self, ae, preview, path):
        """Meshes (32^3) of the reconstructions of up to 8 preview shapes, one view each."""
        points = split_item(preview.to(next(ae.parameters()).device), ae.num_points)[0]
        z = ae.reconstruction_latent(ae.encode(points).mode())
        found = meshes.extract_meshes(ae.decode(z), 32, threshold=ae.threshold, half_extent=ae.half_extent)
        return [write_png(path, meshes.preview_sheet(found, half_extent=ae.half_extent))]

    def probe(self, ae, preview):
        """``iou``: occupancy IoU of the preview shapes' reconstructions at their query points."""
        points, queries, occ = split_item(preview.to(next(ae.parameters()).device), ae.num_points)
        logits = ae.decode(ae.reconstruction_latent(ae.encode(points).mode())).query(ae.normalize(queries))[..., 0]
        return {"iou": float(occupancy_iou(logits, occ, ae.threshold_logit))}

    def encoder_dataset(self, cfg):
        return _shapes(cfg, cfg.data.dir, "train", num_queries=1)

    def write_latent_preview(self, ae, z, path):
        found = meshes.extract_meshes(ae.decode(z[:8]), 32, threshold=ae.threshold, half_extent=ae.half_extent)
        return [write_png(path, meshes.preview_sheet(found, half_extent=ae.half_extent))]

    sample_targets = staticmethod(meshes.sample_targets)
    write_samples = staticmethod(meshes.write_samples)
    evaluate_run = staticmethod(evaluation.evaluate_run)

    reconstruct_targets = staticmethod(meshes.reconstruct_targets)

    def reconstruct(self, args, ae, log):
        return meshes.reconstruct_shapes_command(ae, args, log=log)

    def synthesize(self, out, args):
        from ddmi.data.synthetic_shapes import synth_shapes
        points = 30_000 if args.points is None else args.points
        return synth_shapes(out, num=args.num, seed=args.seed, overwrite=args.overwrite, split_test=args.test,
                            num_points=points, num_surface=points)


ORDER_WHY = f"must be an order of the planes {list(PLANES)}"


def _plane_order_ok(names) -> bool:
    """An official-compatibility plane order: none, or the three planes in some order."""
    return names is None or sorted(names) == sorted(PLANES)
