"""Paper presets reproduce the official architectures (docs/official-code.md §10), counted on meta."""

import pytest

from ddmi.config import load_config
from ddmi.models import parameter_counts


@pytest.mark.parametrize("preset, vae, enc, dec, mlp, unet", [
    ("afhq", 57.2e6, 23.5e6, 33.7e6, 1.88e6, 519.2e6),
    ("celebahq", 69.6e6, 29.7e6, 39.9e6, 1.88e6, 1015.0e6),
])
def test_paper_parameter_counts(preset, vae, enc, dec, mlp, unet):
    c = parameter_counts(load_config(preset))
    for got, want in [(c["vae_total"], vae), (c["encoder"], enc), (c["decoder"], dec),
                      (c["mlp"], mlp), (c["denoiser"], unet)]:
        assert abs(got - want) / want < 0.01, (preset, got, want)
