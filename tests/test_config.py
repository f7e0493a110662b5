import pytest

from ddmi.config import list_presets, load_config
from ddmi.errors import ConfigError


def test_every_preset_loads():
    names = list_presets()
    assert {"afhq", "celebahq", "image-tiny"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name


def test_overrides_apply_with_types():
    cfg = load_config("image-tiny", ["train.steps=7", "data.dir=/x", "vae.ch_mult=[1,2]", "vae.hdbpe_resolutions=[16]", "seed=3"])
    assert cfg.train.steps == 7 and cfg.data.dir == "/x" and list(cfg.vae.ch_mult) == [1, 2] and cfg.seed == 3


@pytest.mark.parametrize("override, key", [
    ("trian.steps=3", "trian"),
    ("train.stepz=3", "train.stepz"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=-1", "train.steps"),
    ("data.resolution=30", "data.resolution"),          # not divisible by f = 4
    ("ldm.sampler=euler", "ldm.sampler"),
    ("vae.hdbpe_resolutions=[12]", "vae.hdbpe_resolutions"),
])
def test_bad_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("image-tiny", [override])


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="image-tiny"):
        load_config("no-such-preset")


def test_yaml_file_with_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  folder: x\n")
    with pytest.raises(ConfigError, match="data.folder"):
        load_config(str(path))


def test_mixed_precision_no_on_the_command_line_means_fp32():
    """YAML reads a bare `no` as false: `train.mixed_precision=no` must still mean no."""
    cfg = load_config("image-tiny", ["train.mixed_precision=no", "ldm_train.mixed_precision=fp16"])
    assert cfg.train.mixed_precision == "no" and cfg.ldm_train.mixed_precision == "fp16"


def test_an_unknown_key_names_the_closest_valid_ones():
    import pytest

    from ddmi.errors import ConfigError
    with pytest.raises(ConfigError, match=r"unknown config key 'vae.chmult'; did you mean 'vae.ch_mult'"):
        load_config("image-tiny", ["vae.chmult=[1,2]"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'; did you mean 'train'"):
        load_config("image-tiny", ["trian.steps=3"])


def test_a_list_without_brackets_says_how_to_write_it():
    import pytest

    from ddmi.errors import ConfigError
    with pytest.raises(ConfigError, match=r"'vae.ch_mult': it takes a list; write it in brackets"):
        load_config("image-tiny", ["vae.ch_mult=1,2,4"])
