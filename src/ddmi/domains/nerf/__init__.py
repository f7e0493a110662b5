"""The NeRF domain: srn-cars objects (coloured point clouds + posed views); three latent planes;
volume-rendered turntables at any resolution."""

from __future__ import annotations

from ddmi.domains.base import Domain
from ddmi.domains.nerf import outputs
from ddmi.domains.nerf.model import NeRFAutoencoder


class NeRFDomain(Domain):
    name = "nerf"
    description = "NeRF: srn-cars objects (coloured point clouds + posed views), volume rendering"
    run_metrics = ("fid", "kid", "psnr", "ssim")
    default_metrics = {"ldm": ("fid", "kid"), "vae": ("psnr", "ssim")}
    data_hint = " (srn-cars layout; see `ddmi synth nerf`)"

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

    def reconstruct(self, args, ae, log):
        return outputs.reconstruct_nerf_command(ae, args, log=log)

    def synthesize(self, out, args):
        from ddmi.data.synthetic_nerf import synth_nerf
        return synth_nerf(out, num=args.num, seed=args.seed, overwrite=args.overwrite, split_test=args.test,
                          resolution=args.resolution, views=args.views,
                          num_points=2048 if args.points is None else args.points)
