"""Adversarial fine-tuning of the video D2C-VAE: the 2-D frame + 3-D clip discriminators, the
alternating updates, detached reconstructions in the discriminator step, init from a phase-one
video run, resume, presets."""

import pytest
import torch
from safetensors.torch import load_file

from ddmi import checkpoint as ckpt
from ddmi.cli import main
from ddmi.config import load_config
from ddmi.errors import ConfigError
from ddmi.models import parameter_counts
from ddmi.nn.discriminator import PatchDiscriminator3D, VideoDiscriminator

# a still smaller video-tiny (as in test_video_runs.py) and a tiny discriminator pair
FAST = ["video.enc_depth=1", "vae.ch=8", "mlp.hidden=32", "train.batch_size=2", "train.sample_every=0",
        "train.log_every=1", "--no-progress"]
GAN = ["gan.disc_channels=8", "gan.disc_layers=2", "train.save_every=1", "train.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def video_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("video") / "data"
    assert main(["synth", "video", str(data), "--num", "3", "--frames", "10", "--resolution", "32",
                 "--seed", "1"]) == 0
    return data


@pytest.fixture(scope="module")
def video_vae_run(tmp_path_factory, video_data):
    run = tmp_path_factory.mktemp("vvae") / "vae"
    assert main(["train", "vae", "video-tiny", f"data.dir={video_data}", f"run_dir={run}", "train.steps=2",
                 *FAST]) == 0
    return run


def gan_args(data, vae, run):
    return ["train", "vae", "video-tiny-gan", f"data.dir={data}", f"init={vae}", f"run_dir={run}", *FAST, *GAN]


@pytest.fixture(scope="module")
def video_gan_run(tmp_path_factory, video_data, video_vae_run):
    run = tmp_path_factory.mktemp("vgan") / "gan"
    assert main(gan_args(video_data, video_vae_run, run) + ["train.steps=4"]) == 0
    return run


def test_clip_discriminator_shapes():
    logits, feats = PatchDiscriminator3D(3, 8, 2)(torch.zeros(2, 3, 8, 32, 32))
    assert logits.shape == (2, 1, 5, 11, 11)
    assert [f.shape[1:] for f in feats] == [(8, 5, 17, 17), (16, 3, 9, 9), (32, 4, 10, 10)]
    with torch.device("meta"):                                   # paper size: 16 x 256^2, 3 layers
        logits, feats = PatchDiscriminator3D(3, 64, 3)(torch.zeros(1, 3, 16, 256, 256))
    assert logits.shape == (1, 1, 5, 35, 35) and len(feats) == 4


def test_the_frame_discriminator_sees_the_chosen_frame():
    torch.manual_seed(0)
    d = VideoDiscriminator(8, 2)
    clips = torch.randn(2, 3, 8, 32, 32)
    frame = torch.tensor([3, 6])
    (l2, l3), feats = d(clips, frame)
    assert l2.shape == (2, 1, 6, 6) and l3.shape == (2, 1, 5, 11, 11) and len(feats) == 6
    assert torch.allclose(l2[1], d.frame(clips[1:, :, 6])[0][0])
    assert torch.allclose(l3, d.clip(clips)[0])


def test_presets_carry_the_paper_weights():
    cfg = load_config("skytimelapse-gan")
    g = cfg.gan
    assert cfg.domain == "video" and g.enabled
    assert (g.disc_weight, g.feature_weight, g.generator_factor) == (0.5, 4.0, 500.0)
    assert (g.disc_channels, g.disc_layers) == (64, 3)
    assert cfg.loss.kl_anneal is False and cfg.loss.kl_max == 0.1 and cfg.loss.sn_anneal is False
    assert cfg.train.cosine is False and cfg.train.batch_size == 2 and cfg.train.lr == 1e-4
    counts = parameter_counts(cfg, include_ldm=False)
    assert counts["vae_total"] == parameter_counts(load_config("skytimelapse"), include_ldm=False)["vae_total"]
    # 2-D (3 input channels) 2,765,633 + 3-D (4x4x4 kernels) 11,056,961
    assert counts["discriminator"] == 2_765_633 + 11_056_961
    tiny = load_config("video-tiny-gan")
    assert tiny.gan.enabled and (tiny.gan.disc_weight, tiny.gan.feature_weight) == (0.5, 4.0)


def test_gan_is_refused_for_occupancy_and_nerf():
    for preset in ("shapes-tiny", "nerf-tiny"):
        with pytest.raises(ConfigError, match="gan.enabled.*image and video domains only"):
            load_config(preset, ["gan.enabled=true"])


def test_each_phase_sends_gradients_to_its_own_network_only():
    from ddmi.training.adversarial import AdversarialForward
    from ddmi.models import build_discriminator
    from ddmi.models import build_autoencoder
    cfg = load_config("video-tiny-gan", [o for o in FAST + GAN if not o.startswith("--")])
    torch.manual_seed(0)
    ae, disc = build_autoencoder(cfg), build_discriminator(cfg)
    fwd = AdversarialForward(ae, disc, None, 1.0, cfg.gan)
    clips = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    rand = ae.random_inputs(torch.Generator().manual_seed(0), 2, hflip=True)
    for name, owners, other in (("generator", [ae], disc), ("discriminator", [disc.frame, disc.clip], ae)):
        loss, logs = fwd(clips, rand, phase=name, adversarial=True, kl_weight=1e-4, sn_weight=0.01)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None for p in other.parameters()), name          # detached / frozen
        for owner in owners:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in owner.parameters()), name
        for p in (*ae.parameters(), *disc.parameters()):
            p.grad = None
    assert {"g_adv", "g_fm", "l1"} <= set(fwd(clips, rand, phase="generator", adversarial=True, kl_weight=0,
                                              sn_weight=0)[1])


def _weights(run, step, name):
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / f"{name}.safetensors"))


def _changed(a, b, prefix=""):
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_cli_run_alternates_and_updates_both_networks(video_gan_run, video_vae_run):
    assert [c.name for c in ckpt.list_checkpoints(video_gan_run)][-1] == "step-00000004"
    start = load_file(str(ckpt.latest_checkpoint(video_vae_run) / "model.safetensors"))
    m1, m2 = _weights(video_gan_run, 1, "model"), _weights(video_gan_run, 2, "model")
    d1, d2 = _weights(video_gan_run, 1, "discriminator"), _weights(video_gan_run, 2, "discriminator")
    # step 0 is a generator step: the VAE leaves the phase-one weights
    assert set(start) == set(m1) and _changed(start, m1)
    # step 1 is a discriminator step: both discriminators move, the VAE does not
    assert _changed(d1, d2, "frame.") and _changed(d1, d2, "clip.")
    assert not _changed(m1, m2)
    # step 2 (generator) moves the VAE and leaves the discriminators alone
    m3, d3 = _weights(video_gan_run, 3, "model"), _weights(video_gan_run, 3, "discriminator")
    assert _changed(m2, m3) and not _changed(d2, d3)
    logs = (video_gan_run / "logs" / "metrics.jsonl").read_text()
    assert "d_hinge" in logs and "g_adv" in logs and "g_fm" in logs


def test_start_step_delays_the_adversarial_term(tmp_path, video_data, video_vae_run):
    run = tmp_path / "gan"
    assert main(gan_args(video_data, video_vae_run, run) + ["train.steps=2", "gan.start_step=2"]) == 0
    d0 = _weights(run, 1, "discriminator")
    assert not _changed(d0, _weights(run, 2, "discriminator"))     # two generator steps, D untouched
    assert "d_hinge" not in (run / "logs" / "metrics.jsonl").read_text()


def test_resume_restores_both_discriminators_and_the_optimiser(tmp_path, video_data, video_vae_run, video_gan_run):
    run = tmp_path / "gan"
    base = gan_args(video_data, video_vae_run, run)
    assert main(base + ["train.steps=2"]) == 0
    assert main(base + ["train.steps=4"]) == 0
    for name in ("model", "discriminator"):
        x, y = _weights(run, 4, name), _weights(video_gan_run, 4, name)
        assert all(torch.equal(x[k], y[k]) for k in x), name
    state = ckpt.load_state(ckpt.latest_checkpoint(run))
    assert len(state["optimizer"]["param_groups"]) == 2
    assert tuple(state["optimizer"]["param_groups"][1]["betas"]) == (0.5, 0.9)
