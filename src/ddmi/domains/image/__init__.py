"""The image domain: a folder of image files; one latent plane; PNG samples at any resolution."""

from __future__ import annotations

import torch

from ddmi.data.images import IMAGE_EXTENSIONS, ImageFolderDataset, save_grid
from ddmi.domains.base import Domain
from ddmi.domains.image import evaluation, outputs
from ddmi.domains.image import official as image_official
from ddmi.domains.image.config import ImageConfig
from ddmi.domains.image.model import ImageAutoencoder, fresh_spectral_state, vae_spec
from ddmi.nn.discriminator import ScaleConditionedDiscriminator


class ImageDomain(Domain):
    name = "image"
    input_suffixes = IMAGE_EXTENSIONS
    command_options = {"synth": {"style": {"choices": ["scenes", "simple"], "help": "'scenes' (1-3 textured "
                                           "shapes with shadows on a gradient, the default) or 'simple' (one flat "
                                           "shape on a flat background; the demo's data)"}}}
    section = "image"
    section_schema = ImageConfig
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
    reconstruct_targets = staticmethod(outputs.reconstruct_targets)
    reconstruct = staticmethod(outputs.reconstruct)
    evaluate_run = staticmethod(evaluation.evaluate_run)

    def official_config(self, sections, cfg, official=None):
        """Sizes from the official ``model``/``vaemodel`` and ``mlp`` shapes; ``data.resolution``
        and the mid-attention heads from ``official`` (``ddconfig.resolution``, ``attn_type``) or
        ``cfg``; the ``image.*`` switches (:mod:`ddmi.domains.image.official`)."""
        return image_official.official_config(sections, cfg, official)

    def official_autoencoder_state(self, sections, cfg):
        """Every official key onto :class:`ImageAutoencoder`'s state dict; the spectral
        regulariser's buffers (ddmi training state) are those of a fresh model."""
        spec = vae_spec(cfg)
        state, unused = image_official.official_state(
            sections, spec, num_scales=len(spec.plane_resolutions), noise=cfg.image.noise_injection)
        if cfg.loss.sn_reg:
            state.update({f"spectral.{k}": v for k, v in fresh_spectral_state(spec, cfg.loss.sn_power_iters).items()})
        return state, unused

    def synthesize(self, out, args):
        from ddmi.data.synthetic import synth_images
        return synth_images(out, num=args.num, resolution=args.resolution, seed=args.seed,
                            overwrite=args.overwrite, split_test=args.test, style=args.style or "scenes")
