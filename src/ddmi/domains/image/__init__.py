"""The image domain: a folder of image files; one latent plane; PNG samples at any resolution."""

from __future__ import annotations

import torch

from ddmi.data.images import ImageFolderDataset, save_grid
from ddmi.domains.base import Domain
from ddmi.domains.image import evaluation, outputs
from ddmi.domains.image.model import ImageAutoencoder
from ddmi.nn.discriminator import ScaleConditionedDiscriminator


class ImageDomain(Domain):
    name = "image"
    description = "images: a folder of image files (nested folders allowed)"
    run_metrics = ("fid", "kid", "rfid", "psnr", "ssim")
    default_metrics = {"ldm": ("fid", "kid"), "vae": ("rfid", "psnr", "ssim")}
    adversarial = True

    def build_autoencoder(self, cfg):
        return ImageAutoencoder(cfg)

    def build_discriminator(self, cfg):
        return ScaleConditionedDiscriminator(cfg.gan.disc_channels, cfg.gan.disc_layers)

    def training_dataset(self, cfg, log):
        r = cfg.data.resolution
        return ImageFolderDataset(cfg.data.dir, resolution=2 * r if cfg.loss.multiscale else r, hflip=False,
                                  skip_bad=cfg.data.skip_bad)

    def preview_items(self, cfg, train):
        preview = ImageFolderDataset(cfg.data.test_dir or cfg.data.dir, resolution=2 * cfg.data.resolution,
                                     skip_bad=True)
        return torch.stack([preview[i] for i in range(min(8, len(preview)))])

    def uses_perceptual_loss(self, cfg):
        return True

    write_preview = staticmethod(outputs.write_preview)
    probe = staticmethod(outputs.probe)

    def encoder_dataset(self, cfg):
        return ImageFolderDataset(cfg.data.dir, resolution=cfg.data.resolution, skip_bad=cfg.data.skip_bad)

    def write_latent_preview(self, ae, z, path):
        save_grid(ae.render(z, 2 * ae.resolution).cpu(), path, nrow=8)
        return [path]

    sample_targets = staticmethod(outputs.sample_targets)
    sample_groups = staticmethod(outputs.sample_groups)
    write_samples = staticmethod(outputs.write_samples)
    reconstruct = staticmethod(outputs.reconstruct)
    evaluate_run = staticmethod(evaluation.evaluate_run)

    def synthesize(self, out, args):
        from ddmi.data.synthetic import synth_images
        return synth_images(out, num=args.num, resolution=args.resolution, seed=args.seed,
                            overwrite=args.overwrite, split_test=args.test, style=args.style)
