"""Official image stage 1 (``Autoencoder`` + ``MLP``): the fixture checkpoints read into ddmi's
``ImageAutoencoder`` compute the official outputs (fixtures README 2.1, 3, 4.1, 4.2 and the image
part of 4.6), and the paper-size manifests map completely onto the paper presets.

Every size comes from ``config.json`` and the tensors. ddmi's own calls are used throughout:
``encode -> DiagonalGaussian``, ``decode -> Field``, ``Field.query(coords, si=...)``.
"""

from __future__ import annotations

import json

import pytest
import torch
from official_fixtures import assert_close, domain_fixture, official_root  # noqa: F401 (fixture)

from ddmi import domains
from ddmi.config import load_config, with_overrides
from ddmi.errors import CheckpointError
from ddmi.models import build_autoencoder

pytestmark = pytest.mark.official

IMAGE = domains.get("image")
# manifest -> the ddmi paper preset of the same architecture (there is no celebahq-gan preset: the
# official celebahq_gan.yaml fine-tunes the celebahq architecture)
MANIFESTS = {
    "d2c-vae--afhq.json": "afhq",
    "d2c-vae--afhq_gan.json": "afhq-gan",
    "d2c-vae--celebahq.json": "celebahq",
    "d2c-vae--celebahq_gan.json": "celebahq",
    "ldm--afhq.json": "afhq",
    "ldm--celebahq.json": "celebahq",
}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _imported(sections: dict, official: dict | None):
    """``(model, cfg)``: ddmi's image autoencoder with the official ``sections`` loaded strictly,
    built from the ``image-tiny`` preset plus :meth:`official_config`'s overrides."""
    base = load_config("image-tiny")
    cfg = load_config("image-tiny", IMAGE.official_config(sections, base, official))
    model = build_autoencoder(cfg).eval()
    state, unused = IMAGE.official_autoencoder_state(sections, cfg)
    assert unused == []
    model.load_state_dict(state, strict=True)
    return model, cfg


@pytest.fixture(scope="module")
def image(official_root):  # noqa: F811 (fixture)
    folder, config, tensors = domain_fixture(official_root, "image")
    ck = _load(folder / "model-last.pt")
    sections = {"model": ck["model"], "mlp": ck["mlp"]}
    model, cfg = _imported(sections, config["config"])
    return folder, config, tensors, sections, model, cfg


def _coords(tensors, query) -> tuple[torch.Tensor, tuple[int, int]]:
    """A fixture query's ``in.coords.*`` ``(1, 2, H, W)`` as ddmi's ``(N, 2)`` (x, y), row-major."""
    c = tensors[f"in.coords.grid{query['grid']}"] if "grid" in query else tensors[f"in.coords.points{query['points']}"]
    return c[0].permute(1, 2, 0).reshape(-1, 2), tuple(c.shape[2:])


def _query(field, coords, hw, si: float, **kw) -> torch.Tensor:
    """``field`` at ``coords (N, 2)`` with scale ``si`` -> ``(B, 3, H, W)`` as the official MLP writes it."""
    si_t = torch.full((field.batch_size,), si)
    out = field.query(coords, si=si_t, **kw)
    return out.transpose(1, 2).reshape(field.batch_size, -1, *hw)


def test_config_from_shapes(image):
    """The overrides follow from the shapes; the YAML adds only what shapes cannot tell."""
    _, config, _, sections, _, cfg = image
    dd = config["config"]["ddconfig"]
    assert cfg.data.resolution == dd["resolution"]
    assert list(cfg.vae.ch_mult) == dd["ch_mult"] and cfg.vae.ch == dd["ch"]
    assert cfg.vae.num_res_blocks == dd["num_res_blocks"] and cfg.vae.z_channels == dd["z_channels"]
    assert sorted(cfg.vae.hdbpe_resolutions) == sorted(dd["hdbf_resolutions"])
    assert cfg.vae.embed_dim == config["config"]["embed_dim"] and cfg.vae.plane_channels == dd["out_ch"]
    assert cfg.mlp.hidden == config["config"]["mlpconfig"]["ch"]
    assert cfg.mlp.scale_embed_dim == config["config"]["mlpconfig"]["ch"] // 4
    assert cfg.image.noise_injection
    base = load_config("image-tiny", {"data": {"resolution": dd["resolution"]}})
    assert IMAGE.official_config(sections, base) == IMAGE.official_config(sections, base, config["config"])


def test_config_from_official_args(image):
    """The official ``args`` entry (a plain dict in the fixture's ldm-last.pt; an ``argparse.Namespace``
    of omegaconf ``DictConfig`` values in official files) gives the same overrides as the YAML."""
    folder, config, _, sections, _, _ = image
    base = load_config("image-tiny")
    expected = IMAGE.official_config(sections, base, config["config"])
    assert IMAGE.official_config(sections, base, _load(folder / "ldm-last.pt")["args"]) == expected
    # a trusted fixture file written by the fixture generator: the official pickled Namespace
    namespace = torch.load(folder / "ldm-args-namespace-sample.pt", map_location="cpu", weights_only=False)["args"]
    assert IMAGE.official_config(sections, base, namespace) == expected


def test_config_contradicting_the_weights_is_refused(image):
    _, config, _, sections, _, _ = image
    base = load_config("image-tiny")
    dd = config["config"]["ddconfig"]
    for key, value in (("ch", dd["ch"] * 2), ("num_res_blocks", dd["num_res_blocks"] + 1),
                       ("hdbf_resolutions", dd["hdbf_resolutions"][:1]), ("out_ch", dd["out_ch"] + 1),
                       ("attn_type", "linear")):
        official = {**config["config"], "ddconfig": {**dd, key: value}}
        with pytest.raises(CheckpointError):
            IMAGE.official_config(sections, base, official)
    with pytest.raises(CheckpointError):
        IMAGE.official_config({"mlp": sections["mlp"]}, base)
    with pytest.raises(CheckpointError):
        IMAGE.official_config({"model": sections["model"]}, base)


def test_noise_weights_without_the_switch_are_reported_unused(image):
    _, config, _, sections, _, cfg = image
    plain = with_overrides(cfg, {"image": {"noise_injection": False}})
    _, unused = IMAGE.official_autoencoder_state(sections, plain)
    assert sorted(unused) == sorted(f"mlp.{k}" for k in config["noise_injection_params_kept_zero"])


def test_posterior(image):
    _, config, t, _, model, _ = image
    with torch.no_grad():
        moments = model.vae.encoder(t["in.x"])
        post = model.encode(t["in.x"])
        assert_close(moments, t["vae.moments"], "vae.moments")
        assert_close(post.mean, t["vae.mean"], "vae.mean")
        assert_close(post.logvar, t["vae.logvar"], "vae.logvar")
        assert_close(post.kl(), t["vae.kl"], "vae.kl")
        assert_close(post.mean + post.std * t["vae.sample_eps"], t["vae.sample"], "vae.sample (stored eps)")
        torch.manual_seed(config["sample_seed"])   # the official .sample(): the global RNG, re-seeded
        assert_close(post.sample(), t["vae.sample"], "vae.sample (global RNG)")


def test_decode_planes(image):
    _, _, t, _, model, _ = image
    with torch.no_grad():
        planes = model.decode(t["vae.mean"]).planes
    n = len([k for k in t if k.startswith("dec.")])
    assert len(planes) == n
    for i in range(n):
        assert_close(planes[i], t[f"dec.{i}"], f"dec.{i}")


def test_mlp_queries(image):
    _, config, t, _, model, _ = image
    with torch.no_grad():
        field = model.decode(t["vae.mean"])
        for q in config["config"]["queries"]:
            coords, hw = _coords(t, q)
            assert_close(_query(field, coords, hw, q["si"]), t[f"mlp.{q['name']}"], f"mlp.{q['name']}")


def test_noise_injection_is_explicit(image):
    """The official NoiseInjection (weights 0 in the fixture): a generator reproduces a draw, and
    zero weights leave the official output unchanged."""
    _, config, t, _, model, _ = image
    q = config["config"]["queries"][0]
    coords, hw = _coords(t, q)
    with torch.no_grad():
        field = model.decode(t["vae.mean"])
        quiet = _query(field, coords, hw, q["si"], noise=torch.Generator().manual_seed(1))
        assert_close(quiet, t[f"mlp.{q['name']}"], f"mlp.{q['name']} (zero noise weights, noise drawn)")
        layers = [m for m in model.mlp.modules() if getattr(m, "noise_weight", None) is not None]
        assert len(layers) == len(config["noise_injection_params_kept_zero"])
        for layer in layers:
            layer.noise_weight.fill_(0.1)
        try:
            a = _query(field, coords, hw, q["si"], noise=torch.Generator().manual_seed(1))
            b = _query(field, coords, hw, q["si"], noise=torch.Generator().manual_seed(1))
            n = coords.shape[0]
            g = torch.Generator().manual_seed(1)
            explicit = [torch.randn(field.batch_size, n, generator=g) for _ in layers]
            c = _query(field, coords, hw, q["si"], noise=explicit)
            silent = _query(field, coords, hw, q["si"])
        finally:
            for layer in layers:
                layer.noise_weight.zero_()
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.allclose(a, silent)


def test_ldm_generation_decode(image, official_root):  # noqa: F811 (fixture)
    """``ldm.gen.*``: the LDM file's ``vaemodel``/``mlp`` decode the stored DDIM output."""
    folder, config, t, _, _, _ = image
    ck = _load(folder / "ldm-last.pt")
    model, _ = _imported({"vaemodel": ck["vaemodel"], "mlp": ck["mlp"]}, config["config"])
    name = config["config"]["gen_query"]
    q = next(q for q in config["config"]["queries"] if q["name"] == name)
    coords, hw = _coords(t, q)
    with torch.no_grad():
        field = model.decode(t["ldm.ema.ddim.out"])
        for i, plane in enumerate(field.planes):
            assert_close(plane, t[f"ldm.gen.dec.{i}"], f"ldm.gen.dec.{i}")
        assert_close(_query(field, coords, hw, q["si"]), t["ldm.gen.rgb"], "ldm.gen.rgb")


# ------------------------------------------------------------------------------------------
# paper-size manifests (shapes only, on the meta device)


def _meta_sections(manifest: dict) -> dict:
    names = [n for n in ("model", "vaemodel") if n in manifest["sections"]][:1] + ["mlp"]
    return {n: {k: torch.empty(v["shape"], device="meta") for k, v in manifest["sections"][n].items()}
            for n in names}


@pytest.mark.parametrize("manifest_name", sorted(MANIFESTS))
def test_paper_manifest_maps_completely(official_root, manifest_name):  # noqa: F811 (fixture)
    manifest = json.loads((official_root / "manifests" / manifest_name).read_text())
    sections = _meta_sections(manifest)
    preset = load_config(MANIFESTS[manifest_name])
    overrides = IMAGE.official_config(sections, preset)
    cfg = with_overrides(preset, overrides)
    arch = {k: v for k, v in overrides.items() if k in ("vae", "mlp", "data")}
    for section, values in arch.items():   # the paper preset already has the official architecture
        for key, value in values.items():
            assert cfg[section][key] == preset[section][key], f"{manifest_name}: {section}.{key}"
    with torch.device("meta"):
        model = build_autoencoder(cfg)
    state, unused = IMAGE.official_autoencoder_state(sections, cfg)
    assert unused == []
    mine = model.state_dict()
    assert sorted(state) == sorted(mine), (sorted(set(mine) - set(state)), sorted(set(state) - set(mine)))
    bad = {k: (tuple(state[k].shape), tuple(mine[k].shape)) for k in mine if state[k].shape != mine[k].shape}
    assert not bad
    official_keys = sum(len(s) for s in sections.values())   # one ddmi key per official key
    assert len([k for k in state if not k.startswith("spectral.")]) == official_keys


@pytest.mark.parametrize("vae", [
    {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16], "hdbpe_resolutions": [16, 8]},
    {"ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 3, "attn_resolutions": [8, 4], "hdbpe_resolutions": [8, 4]},
])
def test_vae_names_cover_other_architectures(vae):
    """Without fixtures: for other level/block/attention layouts, the official module names (the LDM
    Encoder/Decoder layout, written out here independently) map one to one onto ddmi's modules."""
    from ddmi.domains.image import official
    from ddmi.domains.image.model import vae_spec
    cfg = load_config("image-tiny", {"data": {"resolution": 32}, "vae": vae})
    spec = vae_spec(cfg)
    names = official._conv_vae_names(spec)
    levels, nrb = len(vae["ch_mult"]), vae["num_res_blocks"]
    expected = {"quant_conv", "post_quant_conv"} | {f"{n}.{p}" for n in ("encoder", "decoder")
                                                   for p in ("conv_in", "norm_out", "conv_out", "mid.block_1",
                                                             "mid.attn_1", "mid.block_2")}
    for level in range(levels):
        res = 32 // 2 ** level
        for j in range(nrb):
            expected.add(f"encoder.down.{level}.block.{j}")
            if res in vae["attn_resolutions"]:
                expected.add(f"encoder.down.{level}.attn.{j}")
        for j in range(nrb + 1):
            expected.add(f"decoder.up.{level}.block.{j}")
            if res in vae["attn_resolutions"]:
                expected.add(f"decoder.up.{level}.attn.{j}")
        if res in vae["hdbpe_resolutions"]:
            expected.add(f"decoder.up.{level}.hdbf.0")
        if level != levels - 1:
            expected.add(f"encoder.down.{level}.downsample")
        if level != 0:
            expected.add(f"decoder.up.{level}.upsample")
    assert set(names) == expected
    assert len(set(names.values())) == len(names)
    with torch.device("meta"):
        model = build_autoencoder(cfg)
    modules = {f"vae.{n}" for n in names.values()}
    for key in model.vae.state_dict():
        prefix = f"vae.{key}".rsplit(".", 1)[0]
        owner = prefix if prefix in modules else prefix.rsplit(".", 1)[0]   # ResnetBlock.shortcut
        assert owner in modules, key
    # each official block lands on a ddmi module of the same kind
    kinds = {"block": "ResnetBlock", "block_1": "ResnetBlock", "block_2": "ResnetBlock", "attn": "AttnBlock",
             "attn_1": "AttnBlock", "downsample": "Downsample", "upsample": "Upsample", "hdbf": "Conv2d"}
    ddmi_modules = dict(model.vae.named_modules())
    for off, mine in names.items():
        parts = off.split(".")
        kind = parts[-2] if parts[-1].isdigit() else parts[-1]
        if kind in kinds:
            assert type(ddmi_modules[mine]).__name__ == kinds[kind], (off, mine)
