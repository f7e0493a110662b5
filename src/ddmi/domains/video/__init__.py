"""The video domain: frame folders or video files; three space-time latent planes; clips at any
size and any frame count."""

from __future__ import annotations

from pathlib import Path

import torch

from ddmi.data.videos import VIDEO_EXTENSIONS, VideoFolderDataset
from ddmi.domains.base import Domain, unet_arguments
from ddmi.domains.video import outputs
from ddmi.domains.video.config import VideoConfig
from ddmi.domains.video.model import VideoAutoencoder, latent_order, video_spec
from ddmi.errors import DataError
from ddmi.nn.discriminator import VideoDiscriminator
from ddmi.render.video import contact_sheet
from ddmi.vae.spacetime import PLANES


def _clips(cfg, root, split: str, *, skip_bad: bool, log=print) -> VideoFolderDataset:
    return VideoFolderDataset(root, split=split, frames=cfg.video.frames, resolution=cfg.data.resolution,
                              seed=cfg.seed, skip_bad=skip_bad, log=log)


class VideoDomain(Domain):
    name = "video"
    input_suffixes = VIDEO_EXTENSIONS
    command_options = {
        "synth": {"frames": {"type": int, "help": "frames per video (default 16)"}},
        "sample": {"frames": {"type": int, "action": "append", "help": "frame count to render (continuous time: any "
                              "count, e.g. 2x the training clip length); repeat for several"}},
        "reconstruct": {"frames": {"type": int, "action": "append",
                                   "help": "frame count to render (default: the training clip length)"}},
    }
    section = "video"
    section_schema = VideoConfig
    description = "video: frame folders or video files; clips at any size and frame count"
    run_metrics = ("fvd", "rfvd", "psnr", "ssim")
    default_metrics = {"ldm": ("fvd",), "vae": ("psnr", "ssim")}
    adversarial = True
    data_hint = " (frame folders; see `ddmi synth video`)"

    def validate(self, cfg, check):
        vc = cfg.video
        f = 2 ** (len(cfg.vae.ch_mult) - 1)     # the encoder's downsampling factor
        check(vc.frames >= 1, "video.frames", "must be >= 1")
        check(vc.fps >= 1, "video.fps", "must be >= 1")
        check(vc.enc_head_dim % 4 == 0, "video.enc_head_dim", "must be a multiple of 4 (axial rotary embedding)")
        for key in ("enc_dim", "enc_depth", "enc_heads", "collapse_depth", "collapse_heads",
                    "collapse_head_dim", "collapse_mlp", "cross_heads", "unet_cross_heads", "enc_ff_mult"):
            check(vc[key] >= 1, f"video.{key}", "must be >= 1")
        check(sorted(latent_order(vc.latent_order)) == sorted(PLANES), "video.latent_order",
              f"must name each of {', '.join(PLANES)} once, comma-separated")
        check(vc.collapse_readout in ("token", "first"), "video.collapse_readout", "must be 'token' or 'first'")
        uf = 2 ** (len(cfg.ldm.unet.channel_mult) - 1)
        check(vc.frames % uf == 0 and (cfg.data.resolution // f) % uf == 0, "ldm.unet.channel_mult",
              f"the tri-plane UNet downsamples by {uf}: video.frames ({vc.frames}) and the latent size "
              f"({cfg.data.resolution // f}) must be multiples of it")

    def official_config(self, sections, cfg, official=None):
        """Sizes from the official ``vaemodel`` / ``mlp`` shapes and the official switches of
        ``video.*`` on (:mod:`ddmi.domains.video.official`)."""
        from ddmi.domains.video.official import official_config
        return official_config(sections, cfg, official)

    def official_autoencoder_state(self, sections, cfg):
        from ddmi.domains.video.official import official_state
        return official_state(sections, cfg)

    def build_autoencoder(self, cfg):
        return VideoAutoencoder(cfg)

    def build_denoiser(self, cfg, latent_shape):
        """(B, C, N) tokens of three planes: the tri-plane UNet."""
        from ddmi.nn.triplane_unet import TriplaneUNet
        return TriplaneUNet(plane_shapes=video_spec(cfg).latent_shapes(), cross_heads=cfg.video.unet_cross_heads,
                            **unet_arguments(cfg, latent_shape))

    def official_denoiser_state(self, diffusion, cfg):
        from ddmi.official.denoiser import triplane_ddpm_state  # the tri-plane UNet of the official video LDM
        return triplane_ddpm_state(diffusion, cfg)

    def build_discriminator(self, cfg):
        return VideoDiscriminator(cfg.gan.disc_channels, cfg.gan.disc_layers)

    def training_dataset(self, cfg, log):
        self._log = log
        return _clips(cfg, cfg.data.dir, "train", skip_bad=cfg.data.skip_bad, log=log)

    def preview_items(self, cfg, train):
        try:  # held-out videos for the reconstruction previews, if there are any
            preview = _clips(cfg, cfg.data.test_dir or cfg.data.dir, "val", skip_bad=True,
                             log=getattr(self, "_log", print))
        except DataError:
            preview = train
        return torch.stack([preview[i] for i in range(min(4, len(preview)))])

    def uses_perceptual_loss(self, cfg):
        return True

    def write_preview(self, ae, preview, path: Path):
        """Rows: each preview clip, then its reconstruction at 2x the frame count (every other
        column is an in-between frame) shown at the same size."""
        x = preview.to(next(ae.parameters()).device)
        rec = ae.render(ae.encode(x).mode(), ae.resolution, 2 * ae.frames)
        rows = torch.stack([x.repeat_interleave(2, dim=2), rec], dim=1).flatten(0, 1)
        return [contact_sheet(rows.cpu(), path)]

    def probe(self, ae, preview):
        """``psnr``: reconstructions (posterior mean) of the preview clips, over all frames, in dB."""
        from ddmi.metrics.image_quality import psnr
        x = preview.to(next(ae.parameters()).device)
        rec = ae.render(ae.encode(x).mode(), ae.resolution, ae.frames).clamp(-1, 1)
        return {"psnr": float(psnr(rec, x).mean())}

    def encoder_dataset(self, cfg):
        return VideoFolderDataset(cfg.data.dir, split="train", frames=cfg.video.frames,
                                  resolution=cfg.data.resolution, seed=cfg.seed, skip_bad=cfg.data.skip_bad)

    def write_latent_preview(self, ae, z, path):
        return [contact_sheet(ae.render(z[:8]).cpu(), path)]

    sample_targets = staticmethod(outputs.sample_targets)
    write_samples = staticmethod(outputs.write_samples)
    evaluate_run = staticmethod(outputs.evaluate_run)

    def reconstruct_inputs(self, paths):
        """A frame folder (images directly in it) is one input; any other folder stands for the
        video files and frame folders in it."""
        from ddmi.data.images import IMAGE_EXTENSIONS
        out = []
        for p in map(Path, paths):
            frames = p.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.iterdir())
            if p.is_dir() and not frames:
                found = sorted(f for f in p.iterdir() if not f.name.startswith(".") and (
                    f.suffix.lower() in VIDEO_EXTENSIONS or (f.is_dir() and any(
                        g.suffix.lower() in IMAGE_EXTENSIONS for g in f.iterdir()))))
                if not found:
                    raise DataError(f"{p} holds no videos or frame folders")
                out += found
            else:
                out.append(p)
        return out

    reconstruct_targets = staticmethod(outputs.reconstruct_targets)

    def reconstruct(self, args, ae, log):
        return outputs.reconstruct_videos_command(ae, args, log=log)

    def synthesize(self, out, args):
        from ddmi.data.synthetic_videos import synth_videos
        return synth_videos(out, num=args.num, frames=args.frames or 16, resolution=args.resolution, seed=args.seed,
                            overwrite=args.overwrite, split_val=args.test or None)
