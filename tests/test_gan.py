"""Adversarial fine-tuning: losses by hand, alternating updates, init from a phase-one run, resume."""

import pytest
import torch
from safetensors.torch import load_file

from ddmi import checkpoint as ckpt
from ddmi.cli import main
from ddmi.config import load_config
from ddmi.training.adversarial import phase
from ddmi.nn.discriminator import with_scale_channel
from ddmi.losses.adversarial import feature_matching_loss, generator_loss, hinge_d_loss
from ddmi.models import parameter_counts
from ddmi.nn.discriminator import PatchDiscriminator, ScaleConditionedDiscriminator

GAN = ["gan.disc_channels=8", "gan.disc_layers=2", "train.batch_size=4", "train.save_every=2",
       "train.sample_every=0", "--no-progress"]


def test_hinge_loss_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])      # relu(1 - r): 0, 0.5, 2   -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])      # relu(1 + f): 0, 1, 2     -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert generator_loss(fake).item() == pytest.approx(1 / 3)


def test_feature_matching_by_hand():
    real = [torch.zeros(2, 3), torch.ones(4)]
    fake = [torch.full((2, 3), 0.5), torch.tensor([1.0, 3.0, 1.0, 1.0])]
    assert feature_matching_loss(real, fake).item() == pytest.approx(0.5 + 0.5)
    fake[0].requires_grad_(True)
    feature_matching_loss(real, fake).backward()
    assert fake[0].grad is not None


def test_discriminator_shapes_and_the_scale_channel():
    d = PatchDiscriminator(4, 8, 2)
    x = with_scale_channel(torch.zeros(2, 3, 32, 32), torch.tensor([1.0, 0.5]))
    assert x.shape == (2, 4, 32, 32) and x[1, 3].unique().item() == 0.5
    logits, feats = d(x)
    assert logits.shape == (2, 1, 6, 6) and len(feats) == 3


def test_paper_discriminator_size_and_phases():
    counts = parameter_counts(load_config("afhq-gan"), include_ldm=False)
    assert counts["discriminator"] == 2_766_657            # 4->64->128->256->512->1, 4x4 convs
    assert counts["vae_total"] == parameter_counts(load_config("afhq"), include_ldm=False)["vae_total"]
    gc = load_config("image-tiny-gan", ["gan.start_step=3"]).gan
    assert [phase(gc, s) for s in range(7)] == ["generator"] * 4 + ["discriminator", "generator", "discriminator"]


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, tiny_overrides, vae_run):
    run = tmp_path_factory.mktemp("gan") / "gan"
    assert main(["train", "vae", "image-tiny-gan", *tiny_overrides, f"init={vae_run}", f"run_dir={run}",
                 "train.steps=4", *GAN]) == 0
    return run


def test_init_loads_phase_one_weights_and_updates_alternate(gan_run, vae_run):
    start = load_file(str(ckpt.latest_checkpoint(vae_run) / "model.safetensors"))
    step2 = ckpt.list_checkpoints(gan_run)[0]
    assert step2.name == "step-00000002"
    a, d2 = load_file(str(step2 / "model.safetensors")), load_file(str(step2 / "discriminator.safetensors"))
    b, d4 = (load_file(str(ckpt.latest_checkpoint(gan_run) / f"{n}.safetensors")) for n in ("model", "discriminator"))
    # step 0 (generator) moved the VAE away from the phase-one weights; step 1 (discriminator) moved D
    assert any(not torch.equal(start[k], a[k]) for k in start)
    assert any(not torch.equal(d2[k], d4[k]) for k in d2)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    logs = (gan_run / "logs" / "metrics.jsonl").read_text()
    assert "d_hinge" in logs and "g_adv" in logs and "g_fm" in logs


def test_resume_restores_the_discriminator_and_its_optimiser(tmp_path, tiny_overrides, vae_run, gan_run):
    run = tmp_path / "gan"
    base = ["train", "vae", "image-tiny-gan", *tiny_overrides, f"init={vae_run}", f"run_dir={run}", *GAN]
    assert main(base + ["train.steps=2"]) == 0
    assert main(base + ["train.steps=4"]) == 0
    for name in ("model", "discriminator"):
        x = load_file(str(ckpt.latest_checkpoint(run) / f"{name}.safetensors"))
        y = load_file(str(ckpt.latest_checkpoint(gan_run) / f"{name}.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in x), name
    state = ckpt.load_state(ckpt.latest_checkpoint(run))
    assert len(state["optimizer"]["param_groups"]) == 2
    assert tuple(state["optimizer"]["param_groups"][1]["betas"]) == (0.5, 0.9)


def test_init_from_the_wrong_kind_of_run_is_refused(tmp_path, tiny_overrides, ldm_run, capsys):
    rc = main(["train", "vae", "image-tiny-gan", *tiny_overrides, f"init={ldm_run}", f"run_dir={tmp_path / 'g'}",
               "train.steps=1", *GAN])
    assert rc == 2 and "must be a `ddmi train vae` run" in capsys.readouterr().err
    rc = main(["train", "vae", "shapes-tiny", "gan.enabled=true", f"run_dir={tmp_path / 'h'}"])
    assert rc == 2 and "gan.enabled" in capsys.readouterr().err


def test_each_phase_sends_gradients_to_its_own_network_only(tiny_overrides):
    from ddmi.training.adversarial import AdversarialForward
    from ddmi.models import build_autoencoder
    cfg = load_config("image-tiny-gan", [o for o in tiny_overrides if not o.startswith("data.dir")] + GAN[:2])
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    disc = ScaleConditionedDiscriminator(8, 2)
    fwd = AdversarialForward(ae, disc, None, 1.0, cfg.gan)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    rand = ae.random_inputs(torch.Generator().manual_seed(0), 2, hflip=True)
    for name, owner, other in (("generator", ae, disc), ("discriminator", disc, ae)):
        loss, logs = fwd(images, rand, phase=name, adversarial=True, kl_weight=1e-4, sn_weight=0.01)
        loss.backward()
        assert all(p.grad is None for p in other.parameters()), name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in owner.parameters()), name
        for p in (*ae.parameters(), *disc.parameters()):
            p.grad = None


def test_training_with_local_lpips_weights(tmp_path, tiny_overrides, capsys):
    """The perceptual term runs from a local file (here a randomly initialised LPIPS, saved)."""
    from ddmi.losses import LPIPS
    torch.manual_seed(0)
    weights = tmp_path / "lpips.safetensors"
    LPIPS().save_combined(weights)
    run = tmp_path / "run"
    assert main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={run}", "train.steps=2",
                 f"loss.lpips_weights={weights}", "--no-progress"]) == 0
    assert "LPIPS on" in capsys.readouterr().err
    assert '"lpips"' in (run / "logs" / "metrics.jsonl").read_text()
    rc = main(["train", "vae", "image-tiny", *tiny_overrides, f"run_dir={tmp_path / 'r2'}", "train.steps=1",
               f"loss.lpips_weights={tmp_path / 'missing.pt'}", "--no-progress"])
    assert rc == 2 and "missing.pt" in capsys.readouterr().err
