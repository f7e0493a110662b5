"""ddmi computes the official occupancy stage 1 (``LocalPoolPointnet`` + ``Autoencoder3D`` +
``MLP3D``) of an imported official checkpoint (fixtures README sections 2, 3, 4.1, 4.3, 4.6).

Every size comes from ``config.json`` and the tensors; the model is ddmi's ``shapes-tiny`` preset
with the importer's overrides, and every output goes through ddmi's public calls (``encode`` ->
``DiagonalGaussian``, ``decode`` -> ``Field``, ``Field.query``).
"""

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
from ddmi.vae.posterior import DiagonalGaussian
from ddmi.vae.triplane_coords import PLANES

pytestmark = pytest.mark.official

SECTIONS = ("pointnet", "vaemodel", "mlp")


def official_yaml(config: dict) -> dict:
    """The official YAML values of ``config.json`` as one dict: the d2c-vae keys (``ddconfig``,
    ``embed_dim``, ``mlpconfig``) and the ConvONet ones (``data``, ``model``)."""
    return {**config["config"], **config["config"]["convonet"]}


def build(ckpt: dict, config: dict):
    domain = domains.get("occupancy")
    sections = {k: ckpt[k] for k in SECTIONS}
    overrides = domain.official_config(sections, load_config("shapes-tiny"), official_yaml(config))
    cfg = load_config("shapes-tiny", overrides)
    ae = domain.build_autoencoder(cfg).eval()
    state, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == []
    ae.load_state_dict(state, strict=True)
    return ae


@pytest.fixture(scope="module")
def occupancy(official_root):  # noqa: F811 (fixture)
    folder, config, tensors = domain_fixture(official_root, "occupancy")
    ckpt = torch.load(folder / "model-last.pt", map_location="cpu", weights_only=True)
    return build(ckpt, config), config, tensors, folder


def test_sizes_come_from_the_checkpoint(occupancy):
    ae, config, t, _ = occupancy
    dd, conv = config["config"]["ddconfig"], config["config"]["convonet"]["model"]
    assert ae.resolution == dd["resolution"] == conv["encoder_kwargs"]["plane_resolution"]
    assert ae.spec.ch == dd["ch"] and list(ae.spec.ch_mult) == dd["ch_mult"]
    assert ae.spec.num_res_blocks == dd["num_res_blocks"] and ae.spec.z_channels == dd["z_channels"]
    assert ae.spec.embed_dim == config["config"]["embed_dim"] and ae.spec.plane_channels == dd["out_ch"]
    assert sorted(ae.spec.hdbpe_resolutions) == sorted(dd["hdbf_resolutions"])
    assert sorted(ae.spec.inter_attn_resolutions) == sorted(dd["inter_attn_resolutions"])
    assert len(ae.pointnet.blocks) == conv["encoder_kwargs"]["n_blocks"]
    assert ae.pointnet.out_channels == conv["c_dim"]
    assert ae.mlp.fc_p.out_features == config["config"]["mlpconfig"]["ch"]


@torch.no_grad()
def test_pointnet_and_posteriors(occupancy):
    ae, _, t, _ = occupancy
    planes = ae.pointnet(t["in.points"])                                        # (B, 3, C, R, R)
    for k, name in enumerate(PLANES):
        assert_close(planes[:, k], t[f"pointnet.{name}"], f"pointnet.{name}")
    posterior = ae.encode(t["in.points"])
    e = ae.spec.embed_dim
    # ddmi's latent (the stage-2 tensor) is in the order the official occupancy LDM was trained on
    assert_close(posterior.mean, t["latent.s2order"], "latent.s2order")
    assert_close(ae.reconstruction_latent(posterior.mean), t["latent.s1order"], "latent.s1order")
    kl = 0
    for k, name in enumerate(PLANES):
        mean, raw_logvar = posterior.params[:, k * e:(k + 1) * e], posterior.params[:, (3 + k) * e:(4 + k) * e]
        plane = DiagonalGaussian(torch.cat([mean, raw_logvar], dim=1))
        assert_close(plane.params, t[f"vae.{name}.moments"], f"vae.{name}.moments")
        assert_close(plane.mean, t[f"vae.{name}.mean"], f"vae.{name}.mean")
        assert_close(plane.logvar, t[f"vae.{name}.logvar"], f"vae.{name}.logvar")
        assert_close(plane.kl(), t[f"vae.{name}.kl"], f"vae.{name}.kl")
        assert_close(plane.sample(noise=t[f"vae.{name}.sample_eps"]), t[f"vae.{name}.sample"], f"vae.{name}.sample")
        kl = kl + t[f"vae.{name}.kl"]
    assert_close(posterior.kl(), kl, "kl (sum of the three planes)")
    eps = torch.cat([t[f"vae.{name}.sample_eps"] for name in PLANES], dim=1)
    assert_close(posterior.sample(noise=eps), torch.cat([t[f"vae.{name}.sample"] for name in PLANES], dim=1),
                 "vae.*.sample (stacked)")


@torch.no_grad()
@pytest.mark.parametrize("order", ["s1order", "s2order"])
def test_decode_and_field(occupancy, order):
    ae, _, t, _ = occupancy
    field = ae.decode(t[f"latent.{order}"])
    scales = sorted({int(k.split(".")[-1]) for k in t if k.startswith(f"dec.{order}.xy.")})
    assert len(field.planes) == len(scales)
    for s in scales:
        for k, name in enumerate(PLANES):
            assert_close(field.planes[s][:, k], t[f"dec.{order}.{name}.{s}"], f"dec.{order}.{name}.{s}")
    logits = field.query(ae.normalize(t["in.query"]))[..., 0]
    assert_close(logits, t[f"mlp.{order}.logits"], f"mlp.{order}.logits")


@torch.no_grad()
def test_stage1_reconstruction_decodes_the_official_stage1_latent(occupancy):
    ae, _, t, _ = occupancy
    z = ae.reconstruction_latent(ae.encode(t["in.points"]).mode())
    assert_close(ae.decode(z).query(ae.normalize(t["in.query"]))[..., 0], t["mlp.s1order.logits"],
                 "mlp.s1order.logits via encode -> reconstruction_latent -> decode")


@torch.no_grad()
def test_generation_from_the_ldm_checkpoint(occupancy):
    _, config, t, folder = occupancy
    ckpt = torch.load(folder / "ldm-last.pt", map_location="cpu", weights_only=True)
    ae = build(ckpt, config)
    field = ae.decode(t["ldm.ema.ddim.out"][:1])
    logits = field.query(ae.normalize(t["in.ldm.gen_points"]))[..., 0]
    assert_close(logits, t["ldm.gen.logits"], "ldm.gen.logits")


# --- paper-size manifests (shape only, meta device) ------------------------------------------

SWITCHES = {"convonet_coords", "align_corners", "cross_plane_order", "stage1_latent_planes", "mlp_output_relu"}


def architecture_changes(preset, overrides: dict, section: str, switches: set[str]) -> dict:
    """``{key: (preset value, override)}`` of the overrides that are not compatibility switches
    and differ from the preset."""
    from omegaconf import OmegaConf
    changes = {}
    for sec, values in overrides.items():
        for key, value in values.items():
            if sec == section and key in switches:
                continue
            have = OmegaConf.select(preset, f"{sec}.{key}")
            have = OmegaConf.to_container(have) if OmegaConf.is_config(have) else have
            if have != value:
                changes[f"{sec}.{key}"] = (have, value)
    return changes


def manifest_sections(path, names=SECTIONS) -> dict:
    d = json.loads(path.read_text())
    return {s: {k: torch.empty(v["shape"], device="meta") for k, v in d["sections"][s].items()} for s in names}


@pytest.mark.parametrize("manifest", ["d2c-vae--shapenet", "ldm--shapenet"])
def test_paper_manifest_maps_onto_the_shapenet_preset(official_root, manifest):  # noqa: F811 (fixture)
    path = official_root / "manifests" / f"{manifest}.json"
    if not path.is_file():
        pytest.skip(f"no {path}")
    domain = domains.get("occupancy")
    sections = manifest_sections(path)
    preset = load_config("shapenet")
    overrides = domain.official_config(sections, preset)
    # the architecture the manifest implies is the preset's: only compatibility switches change
    assert architecture_changes(preset, overrides, "shapes", SWITCHES) == {}
    cfg = load_config("shapenet", overrides)
    with torch.device("meta"):
        ae = domain.build_autoencoder(cfg)
    state, unused = domain.official_autoencoder_state(sections, cfg)
    assert unused == []
    mine = ae.state_dict()
    assert sorted(state) == sorted(mine)
    bad = [k for k in mine if tuple(mine[k].shape) != tuple(state[k].shape)]
    assert not bad, bad
    assert sum(len(s) for s in sections.values()) == len([k for k in state if not k.startswith("spectral.")])


def test_official_yaml_layouts_and_contradictions(official_root):  # noqa: F811 (fixture)
    """The official dict may be the ``args`` layout or the YAML layout (``model.params.ddconfig``,
    ``model.embed_dim``, merged with the ConvONet ``data`` / ``model``); a value that contradicts
    the weights is an error."""
    from ddmi.errors import CheckpointError
    folder, config, _ = domain_fixture(official_root, "occupancy")
    ckpt = torch.load(folder / "model-last.pt", map_location="cpu", weights_only=True)
    sections = {k: ckpt[k] for k in SECTIONS}
    domain, base = domains.get("occupancy"), load_config("shapes-tiny")
    c = config["config"]
    yaml = {"data": c["convonet"]["data"],
            "model": {**c["convonet"]["model"], "params": {"ddconfig": c["ddconfig"], "mlpconfig": c["mlpconfig"]},
                      "embed_dim": c["embed_dim"]}}
    assert domain.official_config(sections, base, yaml) == domain.official_config(sections, base, official_yaml(config))
    wrong = {**official_yaml(config), "ddconfig": {**c["ddconfig"], "ch": c["ddconfig"]["ch"] * 2}}
    with pytest.raises(CheckpointError, match="ddconfig.ch"):
        domain.official_config(sections, base, wrong)
