"""ddmi computes the official NeRF stage 1 (``LocalPoolPointnet(dim=6)`` + ``Autoencoder3D`` +
``MLPNeRF`` + positional encoding + ``render_rays``) of an imported official checkpoint (fixtures
README sections 2, 3, 4.1, 4.4, 4.6).

Every size comes from ``config.json`` and the tensors; the model is ddmi's ``nerf-tiny`` preset
with the importer's overrides, and the outputs go through ddmi's public calls (``encode`` ->
``DiagonalGaussian``, ``decode`` -> ``Field``, ``field_query`` + :func:`ddmi.render.volume.render_rays`,
:func:`~ddmi.render.volume.camera_rays`).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from official_fixtures import (
    assert_close,
    domain_fixture,
    official_root,  # noqa: F401 (fixture)
)

from ddmi import domains
from ddmi.config import load_config
from ddmi.domains.nerf import official as nerf_official
from ddmi.domains.nerf.model import positional_encoding
from ddmi.errors import CheckpointError
from ddmi.render.volume import camera_rays, focal_from_fov, render_rays
from ddmi.vae.posterior import DiagonalGaussian
from ddmi.vae.triplane_coords import PLANES

pytestmark = pytest.mark.official

SECTIONS = ("pointnet", "vaemodel", "mlp")
#: the official latent stacks the planes [xy, yz, xz] (both stages): the position of each plane
OFFICIAL_SLOT = {"xy": 0, "yz": 1, "xz": 2}


def official_yaml(config: dict) -> dict:
    """The official YAML values of ``config.json`` as one dict: the d2c-vae keys (``ddconfig``,
    ``embed_dim``, ``mlpconfig``) and the ConvONet ones (``data``, ``model`` with ``TN``)."""
    return {**config["config"], **config["config"]["convonet"]}


def build(ckpt: dict, config: dict):
    domain = domains.get("nerf")
    sections = {k: ckpt[k] for k in SECTIONS}
    overrides = domain.official_config(sections, load_config("nerf-tiny"), official_yaml(config))
    cfg = load_config("nerf-tiny", overrides)
    ae = domain.build_autoencoder(cfg).eval()
    state, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == []
    ae.load_state_dict(state, strict=True)
    return ae


@pytest.fixture(scope="module")
def nerf(official_root):  # noqa: F811 (fixture)
    folder, config, tensors = domain_fixture(official_root, "nerf")
    ckpt = torch.load(folder / "model-last.pt", map_location="cpu", weights_only=True)
    return build(ckpt, config), config, tensors, folder


def rays(t: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and (unnormalised) directions ``(1, H*W, 3)`` of the official ray batch."""
    batch = t["in.render.ray_batch"]
    return batch[None, :, 0:3], batch[None, :, 3:6]


def test_sizes_come_from_the_checkpoint(nerf):
    ae, config, t, _ = nerf
    c, mlp = config["config"], config["config"]["mlpconfig"]
    tn = c["convonet"]["model"]["TN"]
    assert ae.resolution == c["ddconfig"]["resolution"] and ae.spec.plane_channels == c["ddconfig"]["out_ch"]
    assert ae.spec.num_res_blocks == c["ddconfig"]["num_res_blocks"] and ae.spec.embed_dim == c["embed_dim"]
    assert len(ae.mlp.layers) == mlp["D"] and ae.mlp.layers[0].out_features == mlp["W"]
    assert list(ae.mlp.skips) == mlp["skips"]
    assert (ae.mlp.multires, ae.mlp.multires_views) == (tn["multires"], tn["multires_views"])
    assert ae.render_kwargs(train=False)["num_samples"] == tn["N_samples"] == t["in.render.z_vals"].shape[1]


@torch.no_grad()
def test_pointnet_and_posteriors(nerf):
    ae, _, t, _ = nerf
    planes = ae.pointnet(ae.encoder_input(t["in.points"]))
    for k, name in enumerate(PLANES):
        assert_close(planes[:, k], t[f"pointnet.{name}"], f"pointnet.{name}")
    posterior = ae.encode(t["in.points"])
    assert_close(posterior.mean, t["latent.s1order"], "latent.s1order (ddmi's stage-2 latent)")
    e = ae.spec.embed_dim
    kl = 0
    for name, k in OFFICIAL_SLOT.items():
        mean, raw_logvar = posterior.params[:, k * e:(k + 1) * e], posterior.params[:, (3 + k) * e:(4 + k) * e]
        plane = DiagonalGaussian(torch.cat([mean, raw_logvar], dim=1))
        assert_close(plane.params, t[f"vae.{name}.moments"], f"vae.{name}.moments")
        assert_close(plane.mean, t[f"vae.{name}.mean"], f"vae.{name}.mean")
        assert_close(plane.logvar, t[f"vae.{name}.logvar"], f"vae.{name}.logvar")
        assert_close(plane.kl(), t[f"vae.{name}.kl"], f"vae.{name}.kl")
        assert_close(plane.sample(noise=t[f"vae.{name}.sample_eps"]), t[f"vae.{name}.sample"], f"vae.{name}.sample")
        kl = kl + t[f"vae.{name}.kl"]
    assert_close(posterior.kl(), kl, "kl (sum of the three planes)")


@torch.no_grad()
def test_decode(nerf):
    ae, _, t, _ = nerf
    field = ae.decode(ae.encode(t["in.points"]).mean)
    assert len(field.planes) == 1
    for k, name in enumerate(PLANES):
        assert_close(field.planes[0][:, k], t[f"dec.s1order.{name}.0"], f"dec.s1order.{name}.0")
    field = ae.decode(t["latent.s1order"])
    for k, name in enumerate(PLANES):
        assert_close(field.planes[0][:, k], t[f"dec.s1order.{name}.0"], f"dec.s1order.{name}.0 (stored latent)")


def test_positional_encoding(nerf):
    ae, _, t, _ = nerf
    for key, freqs in (("xyz", ae.mlp.multires), ("dir", ae.mlp.multires_views)):
        ours = positional_encoding(t[f"in.embed.{key}"], freqs)
        assert_close(ours, t[f"embed.{key}"][:, nerf_official.pe_columns(freqs)], f"embed.{key} (ddmi layout)")


@torch.no_grad()
def test_mlp_direct(nerf):
    ae, _, t, _ = nerf
    x, pe_dir = nerf_official.official_mlp_input(t["in.mlp_direct"], ae.spec.plane_channels,
                                                 ae.mlp.multires, ae.mlp.multires_views)
    sigma, rgb = ae.mlp.network(x, pe_dir)
    assert_close(torch.cat([rgb, sigma[..., None]], dim=-1), t["mlp.direct"], "mlp.direct")


@torch.no_grad()
def test_raw_field_and_rendering(nerf):
    ae, _, t, _ = nerf
    field = ae.decode(t["latent.s1order"])
    o, d = rays(t)
    n, s = t["in.render.z_vals"].shape
    pts = t["in.render.pts"].reshape(1, n * s, 3)
    dirs = F.normalize(d, dim=-1)[:, :, None].expand(1, n, s, 3).reshape(1, n * s, 3)
    raw = ae.mlp(field.planes, torch.cat([ae.normalize(pts), dirs], dim=-1), raw=True).reshape(n, s, 4)
    assert_close(torch.cat([raw[..., 1:], raw[..., :1]], dim=-1), t["render.raw"], "render.raw")
    out = render_rays(ae.field_query(field), o, d, **ae.render_kwargs(train=False))
    for ours, theirs in (("rgb", "rgb_map"), ("disp", "disp_map"), ("acc", "acc_map")):
        assert_close(out[ours][0], t[f"render.{theirs}"], f"render.{theirs}")


@torch.no_grad()
def test_render_from_the_camera(nerf):
    ae, config, t, _ = nerf
    h, w = config["config"]["render"]["H"], config["config"]["render"]["W"]
    k = t["in.render.K"]
    assert float(k[0, 2]) == w / 2 and float(k[1, 2]) == h / 2 and float(k[0, 0]) == float(k[1, 1])
    assert abs(focal_from_fov(w, ae.fov) - float(k[0, 0])) <= 1e-9 * float(k[0, 0])
    o, d = camera_rays(t["in.render.c2w"], h, w, float(k[0, 0]), pixel_offset=ae.pixel_offset)
    ro, rd = rays(t)
    assert_close(o.reshape(1, -1, 3), ro, "rays_o")
    assert_close(d.reshape(1, -1, 3), rd, "rays_d")
    field = ae.decode(t["latent.s1order"])
    out = render_rays(ae.field_query(field), o.reshape(1, -1, 3), d.reshape(1, -1, 3), **ae.render_kwargs(train=False))
    assert_close(out["rgb"][0], t["render.rgb_via_render_c2w"], "render.rgb_via_render_c2w")


@torch.no_grad()
def test_generation_from_the_ldm_checkpoint(nerf):
    _, config, t, folder = nerf
    ckpt = torch.load(folder / "ldm-last.pt", map_location="cpu", weights_only=True)
    ae = build(ckpt, config)
    field = ae.decode(t["ldm.ema.ddim.out"][:1])
    for k, name in enumerate(PLANES):
        assert_close(field.planes[0][:, k], t[f"ldm.gen.dec.{name}.0"], f"ldm.gen.dec.{name}.0")
    o, d = rays(t)
    out = render_rays(ae.field_query(field), o, d, **ae.render_kwargs(train=False))
    assert_close(out["rgb"][0], t["ldm.gen.render.rgb_map"], "ldm.gen.render.rgb_map")


# --- paper-size manifests (shape only, meta device) ------------------------------------------

SWITCHES = {"convonet_padding", "field_frame", "half_extent", "align_corners", "activation", "mask_outside_box",
            "cross_plane_order", "latent_planes", "depth_spacing", "last_delta", "pixel_offset", "fov"}


def manifest_sections(path, names=SECTIONS, vae="vaemodel") -> dict:
    d = json.loads(path.read_text())
    out = {s: {k: torch.empty(v["shape"], device="meta") for k, v in d["sections"][s].items()} for s in names}
    out["vaemodel"] = {k: torch.empty(v["shape"], device="meta") for k, v in d["sections"][vae].items()}
    return out


@pytest.mark.parametrize("manifest", ["d2c-vae--srn_cars", "ldm--srn_cars"])
def test_paper_manifest_maps_onto_the_srn_cars_preset(official_root, manifest):  # noqa: F811 (fixture)
    from omegaconf import OmegaConf
    path = official_root / "manifests" / f"{manifest}.json"
    if not path.is_file():
        pytest.skip(f"no {path}")
    domain = domains.get("nerf")
    sections = manifest_sections(path)
    preset = load_config("srn_cars")
    overrides = domain.official_config(sections, preset)
    changes = {}
    for sec, values in overrides.items():            # the architecture is the preset's: only switches change
        for key, value in values.items():
            have = OmegaConf.select(preset, f"{sec}.{key}")
            have = OmegaConf.to_container(have) if OmegaConf.is_config(have) else have
            if not (sec == "nerf" and key in SWITCHES) and have != value:
                changes[f"{sec}.{key}"] = (have, value)
    assert changes == {}
    cfg = load_config("srn_cars", overrides)
    with torch.device("meta"):
        ae = domain.build_autoencoder(cfg)
    state, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == []
    mine = ae.state_dict()
    assert sorted(state) == sorted(mine)
    bad = [k for k in mine if tuple(mine[k].shape) != tuple(state[k].shape)]
    assert not bad, bad
    assert sum(len(s) for s in sections.values()) == len([k for k in state if not k.startswith("spectral.")])


def test_the_shipped_stage2_2d_autoencoder_is_refused(official_root):  # noqa: F811 (fixture)
    path = official_root / "manifests" / "ldm--srn_cars.json"
    if not path.is_file():
        pytest.skip(f"no {path}")
    sections = manifest_sections(path, vae="vaemodel_as_built_by_shipped_stage2")
    with pytest.raises(CheckpointError, match="2-D Autoencoder"):
        domains.get("nerf").official_config(sections, load_config("srn_cars"))
