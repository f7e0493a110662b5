"""The official video stage 1 (``VITAutoencoder`` + ``VideoDecoder_light`` + ``MLPVideo``) read
into ddmi computes the official function (fixtures README sections 2, 3, 4.1, 4.5, 4.6
``ldm.gen.video``), through ddmi's own calls: ``encode`` -> posterior, ``decode`` -> Field,
``Field.query`` / ``render``. Every size comes from ``config.json`` and the tensors."""

from __future__ import annotations

import json

import pytest
import torch
from official_fixtures import (
    assert_close,
    domain_fixture,
    official_root,  # noqa: F401 (fixture)
)

from ddmi import domains
from ddmi.config import load_config
from ddmi.domains.video.model import grid_points
from ddmi.errors import CheckpointError
from ddmi.vae.spacetime import PLANES

pytestmark = pytest.mark.official

#: ddmi plane -> the official name of the same plane (the official yt collapses h: axes (t, x))
OFFICIAL_NAME = {"xy": "xy", "xt": "yt", "yt": "xt"}
SWITCHES = {"official_rotary", "collapse_readout", "collapse_norm", "latent_order", "official_query"}
MANIFESTS = [("d2c-vae--skytimelapse.json", "skytimelapse"), ("d2c-vae--skytimelapse_gan.json", "skytimelapse-gan"),
             ("ldm--skytimelapse.json", "skytimelapse")]


def imported(sections: dict, official: dict | None, preset: str = "video-tiny"):
    """``(cfg, autoencoder)``: ddmi's video model with the importer's overrides on top of
    ``preset`` and the official ``sections`` loaded strict."""
    domain = domains.get("video")
    over = domain.official_config(sections, load_config(preset), official)
    cfg = load_config(preset, over)
    ae = domain.build_autoencoder(cfg).eval()
    state, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == [], f"official keys with no place in ddmi: {unused}"
    ae.load_state_dict(state, strict=True)
    return cfg, ae


@pytest.fixture(scope="module")
def video(official_root):  # noqa: F811 (fixture)
    folder, config, tensors = domain_fixture(official_root, "video")
    ck = torch.load(folder / "model-last.pt", map_location="cpu", weights_only=True)
    cfg, ae = imported({"vaemodel": ck["vaemodel"], "mlp": ck["mlp"]}, config["config"])
    return folder, config, tensors, cfg, ae


def _clip(field, tensors) -> torch.Tensor:
    """The field at the official coordinate grids ``in.coords.*``, as ``(B, 3, T, H, W)``."""
    xy, xt = tensors["in.coords.xy"], tensors["in.coords.xt"]
    rgb = field.query(grid_points(xy, xt, tensors["in.coords.yt"]))
    frames, (h, w) = xt.shape[2], xy.shape[2:]
    return rgb.reshape(field.batch_size, frames, h, w, 3).permute(0, 4, 1, 2, 3)


def test_sizes_follow_the_official_config(video):
    _, config, tensors, cfg, _ = video
    dd = config["config"]["ddconfig"]
    assert cfg.data.resolution == dd["resolution"] and cfg.video.frames == config["config"]["frames"]
    assert cfg.vae.embed_dim == config["config"]["embed_dim"] and cfg.vae.plane_channels == dd["out_ch"]
    assert cfg.video.enc_dim == dd["timesformer_channels"] and list(cfg.vae.ch_mult) == dd["ch_mult"]
    assert cfg.mlp.hidden == config["config"]["mlpconfig"]["ch"]
    assert tuple(tensors["in.x"].shape[2:]) == (cfg.video.frames, cfg.data.resolution, cfg.data.resolution)


def test_posteriors_of_every_plane(video):
    _, _, tensors, _, ae = video
    with torch.no_grad():
        planes = ae.plane_posteriors(ae.encode(tensors["in.x"]))
    for name in PLANES:
        p, q = planes[name], f"vae.{OFFICIAL_NAME[name]}"
        assert_close(p.params, tensors[f"{q}.moments"], f"{q}.moments")
        assert_close(p.mean, tensors[f"{q}.mean"], f"{q}.mean")
        assert_close(p.logvar, tensors[f"{q}.logvar"], f"{q}.logvar")
        assert_close(p.kl(), tensors[f"{q}.kl"], f"{q}.kl")
        assert_close(p.sample(noise=tensors[f"{q}.sample_eps"]), tensors[f"{q}.sample"], f"{q}.sample")


def test_latent_is_the_official_token_layout(video):
    _, _, tensors, _, ae = video
    with torch.no_grad():
        posterior = ae.encode(tensors["in.x"])
    assert_close(posterior.mode(), tensors["latent"], "latent")
    assert tuple(posterior.mode().shape[1:]) == ae.latent_shape


def test_decoded_planes(video):
    _, _, tensors, _, ae = video
    with torch.no_grad():
        field = ae.decode(tensors["latent"])
    scales = len(field.planes) // len(PLANES)
    stored = {k for k in tensors if k.startswith("dec.")}
    assert len(stored) == len(field.planes), f"ddmi decodes {len(field.planes)} planes, the fixture has {len(stored)}"
    for k in range(scales):
        for j, name in enumerate(PLANES):
            key = f"dec.{OFFICIAL_NAME[name]}.{k}"
            assert_close(field.planes[len(PLANES) * k + j], tensors[key], key)


def test_mlp_video_at_the_official_coordinates(video):
    _, _, tensors, cfg, ae = video
    with torch.no_grad():
        field = ae.decode(tensors["latent"])
        assert_close(_clip(field, tensors), tensors["mlp.video"], "mlp.video")
        # ddmi's own grid at the training size is the official train/eval grid (clamped render)
        assert_close(ae.render(tensors["latent"]), tensors["mlp.video"].clamp(-1, 1), "render")


def test_ldm_generation_decoded_from_the_stored_ddim_output(video):
    folder, config, tensors, _, _ = video
    ck = torch.load(folder / "ldm-last.pt", map_location="cpu", weights_only=True)
    _, ae = imported({"vaemodel": ck["vaemodel"], "mlp": ck["mlp"]}, config["config"])
    with torch.no_grad():
        field = ae.decode(tensors["ldm.ema.ddim.out"][:1])
        assert_close(_clip(field, tensors), tensors["ldm.gen.video"], "ldm.gen.video")


@pytest.mark.parametrize("manifest, preset", MANIFESTS)
def test_paper_manifest_maps_onto_the_preset(official_root, manifest, preset):  # noqa: F811 (fixture)
    """Shape-only (meta device): every official key of the stage-1 sections has a ddmi key of the
    same shape, every ddmi key is filled, and the preset's sizes are the official ones (the
    importer changes only the compatibility switches)."""
    m = json.loads((official_root / "manifests" / manifest).read_text())
    sections = {s: {k: torch.empty(v["shape"], device="meta") for k, v in m["sections"][s].items()}
                for s in ("vaemodel", "mlp")}
    domain = domains.get("video")
    base = load_config(preset)
    over = domain.official_config(sections, base)
    for section in over:
        for key, value in over[section].items():
            if key in SWITCHES:
                continue
            have = base[section][key]
            assert (list(have) if isinstance(value, list) else have) == value, f"{preset}: {section}.{key}"
    cfg = load_config(preset, over)
    with torch.device("meta"):
        ae = domain.build_autoencoder(cfg)
    state, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == []
    want = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k for k in want if want[k] != got[k]} == set()
    assert len(state) - sum(k.startswith("spectral.") for k in state) == sum(len(s) for s in sections.values()) - 2


def test_unplaced_keys_and_contradicting_official_values_are_reported(video):
    folder, config, _, _, _ = video
    ck = torch.load(folder / "model-last.pt", map_location="cpu", weights_only=True)
    domain = domains.get("video")
    vaemodel = dict(ck["vaemodel"], **{"decoder.up.0.inter_attn.1.q.weight": torch.zeros(1)})
    sections = {"vaemodel": vaemodel, "mlp": ck["mlp"]}
    cfg = load_config("video-tiny", domain.official_config(sections, load_config("video-tiny"), config["config"]))
    _, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == ["vaemodel.decoder.up.0.inter_attn.1.q.weight"]
    wrong = json.loads(json.dumps(config["config"]))
    wrong["ddconfig"]["out_ch"] += 1
    with pytest.raises(CheckpointError, match="out_ch"):
        domain.official_config(sections, load_config("video-tiny"), wrong)
