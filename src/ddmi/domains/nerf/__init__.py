"""The NeRF domain: srn-cars objects (coloured point clouds + posed views); three latent planes;
volume-rendered turntables at any resolution."""

from __future__ import annotations

import torch

from ddmi.domains.base import Domain
from ddmi.domains.nerf import outputs
from ddmi.domains.nerf.config import NeRFConfig
from ddmi.domains.nerf.model import NeRFAutoencoder
from ddmi.errors import ConfigError
from ddmi.vae.triplane_coords import PLANES


class NeRFDomain(Domain):
    name = "nerf"
    input_suffixes = (".npz",)
    command_options = {
        "synth": {"views": {"type": int, "help": "posed views per object, rendered at --resolution (default 50)"},
                  "points": {"type": int, "help": "coloured points per object (default 2048)"}},
        "sample": {"frames": {"type": int, "action": "append",
                              "help": "turntable frames (default: the run's nerf.turntable_frames)"},
                   "radius": {"type": float, "help": "turntable camera distance from the centre "
                              "(default: the run's nerf.turntable_radius)"},
                   "elevation": {"type": float, "help": "turntable camera elevation in degrees "
                                 "(default: the run's nerf.turntable_elevation)"}},
        "reconstruct": {"views": {"type": int, "help": "how many of each object's views to render, evenly "
                                  "spaced, with PSNR (default 8)"}},
    }
    section = "nerf"
    section_schema = NeRFConfig
    description = "NeRF: srn-cars objects (coloured point clouds + posed views), volume rendering"
    run_metrics = ("fid", "kid", "psnr", "ssim")
    default_metrics = {"ldm": ("fid", "kid"), "vae": ("psnr", "ssim")}
    point_clouds = True
    data_hint = " (srn-cars layout; see `ddmi synth nerf`)"

    def render(self, ae, z, *, resolution: int = 128, poses=None, frames: int | None = None,
               radius: float | None = None, elevation: float | None = None):
        """Views ``(B, V, 3, R, R)`` in [-1, 1] of the latents' radiance fields at ``resolution``
        from camera-to-world ``poses`` ``(V, 4, 4)`` (OpenGL convention, the data's world frame);
        without poses, the run's turntable (``frames``, ``radius``, ``elevation`` in degrees: the
        options of ``ddmi sample``)."""
        if poses is None:
            poses = outputs.turntable(ae, frames, radius=radius, elevation=elevation)
        poses = torch.as_tensor(poses, dtype=torch.float32)
        if poses.ndim != 3 or tuple(poses.shape[1:]) != (4, 4):
            raise ConfigError(f"poses must be (V, 4, 4) camera-to-world matrices, got {tuple(poses.shape)}")
        return outputs.render_latents(ae, z, poses, resolution) * 2 - 1

    def validate(self, cfg, check):
        nc = cfg.nerf
        check(nc.num_points > 0, "nerf.num_points", "must be > 0")
        check(nc.num_rays > 0 and nc.ray_views > 0, "nerf.num_rays", "num_rays and ray_views must be > 0")
        check(0 < nc.near < nc.far, "nerf.near", f"need 0 < near < far, got {nc.near}, {nc.far}")
        check(nc.num_samples >= 2 and nc.render_samples >= 2, "nerf.num_samples", "need >= 2 samples per ray")
        check(nc.num_importance >= 0, "nerf.num_importance", "must be >= 0")
        check(nc.half_extent > 0 and nc.points_scale > 0, "nerf.half_extent",
              "half_extent and points_scale must be > 0")
        check(nc.field_frame in ("box", "world"), "nerf.field_frame", "must be box or world")
        check(nc.activation in ("relu", "identity"), "nerf.activation", "must be relu or identity")
        check(nc.depth_spacing in ("bins", "linspace"), "nerf.depth_spacing", "must be bins or linspace")
        check(nc.fov is None or 0 < nc.fov < 3.14, "nerf.fov", "must be in (0, pi) radians")
        check(0 <= nc.val_fraction < 1, "nerf.val_fraction", "must be in [0, 1)")
        check(nc.render_chunk > 0 and nc.turntable_frames > 0, "nerf.render_chunk", "must be > 0")
        check(nc.mlp_depth >= 1 and all(0 < k < nc.mlp_depth for k in nc.skips), "nerf.skips",
              f"skip layers must be in 1..{nc.mlp_depth - 1}")
        check(nc.multires >= 0 and nc.multires_views >= 0, "nerf.multires", "must be >= 0")
        check(nc.rgb_weight > 0, "nerf.rgb_weight", "must be > 0")
        check(nc.point_rgb_weight >= 0, "nerf.point_rgb_weight", "must be >= 0")
        check(-30 <= nc.posterior_logvar_init <= 20, "nerf.posterior_logvar_init", "must be in [-30, 20]")
        check(nc.pointnet_blocks >= 1 and nc.pointnet_hidden > 0 and nc.pointnet_channels > 0,
              "nerf.pointnet_blocks", "PointNet sizes must be positive")
        check(_plane_order_ok(nc.cross_plane_order), "nerf.cross_plane_order", ORDER_WHY)
        check(_plane_order_ok(nc.latent_planes), "nerf.latent_planes", ORDER_WHY)

    def official_config(self, sections, cfg, official=None):
        """Overrides for official ``pointnet`` / ``vaemodel`` / ``mlp`` sections
        (:mod:`ddmi.domains.nerf.official`)."""
        from ddmi.domains.nerf import official as off
        return off.official_config(sections, cfg, official)

    def official_autoencoder_state(self, sections, cfg):
        from ddmi.domains.nerf import official as off
        return off.official_state(sections, cfg)

    def build_autoencoder(self, cfg):
        return NeRFAutoencoder(cfg)

    def training_dataset(self, cfg, log):
        return outputs.nerf_dataset(cfg, "train")

    def preview_items(self, cfg, train):
        return outputs.preview_objects(cfg)

    def start_notice(self, cfg):
        return outputs.colour_notice(cfg)

    write_preview = staticmethod(outputs.write_preview)
    probe = staticmethod(outputs.probe)

    def encoder_dataset(self, cfg):
        return outputs.nerf_dataset(cfg, "train", num_rays=0)

    def write_latent_preview(self, ae, z, path):
        return [outputs.ldm_sample_sheet(ae, z, path)]

    sample_targets = staticmethod(outputs.sample_targets)
    write_samples = staticmethod(outputs.write_samples)
    evaluate_run = staticmethod(outputs.evaluate_run)

    reconstruct_targets = staticmethod(outputs.reconstruct_targets)

    def reconstruct(self, args, ae, log):
        return outputs.reconstruct_nerf_command(ae, args, log=log)

    def synthesize(self, out, args):
        from ddmi.data.synthetic_nerf import synth_nerf
        return synth_nerf(out, num=args.num, seed=args.seed, overwrite=args.overwrite, split_test=args.test,
                          resolution=args.resolution, views=args.views or 50,
                          num_points=2048 if args.points is None else args.points)


ORDER_WHY = f"must be an order of the planes {list(PLANES)}"


def _plane_order_ok(names) -> bool:
    """An official-compatibility plane order: none, or the three planes in some order."""
    return names is None or sorted(names) == sorted(PLANES)
