"""EMA: ema-pytorch warm-up semantics (copy phase, then decay), buffers, state round trip."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ddmi.training.ema import EMA


class Scalar(nn.Module):
    def __init__(self, value: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(value, dtype=torch.float64))
        self.register_buffer("stat", torch.tensor(0.0))


def _set(model: Scalar, value: float) -> None:
    with torch.no_grad():
        model.w.fill_(value)
        model.stat.fill_(10 * value)


def test_copy_phase_then_decay_hand_computed():
    online = Scalar()
    ema = EMA(online, beta=0.9999, update_every=2, update_after_step=4)
    seen = []
    for s in range(9):  # the online weight equals the call index s
        _set(online, float(s))
        ema.update(online)
        seen.append(ema.model.w.item())
    # Calls 0, 2, 4 copy (s <= update_after_step); odd calls do nothing.
    assert seen[:6] == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0]
    # Call 6: n = 6 - 4 = 2, decay = 1 - 3^(-2/3) = 0.5192501432.
    d6 = 1 - 0.4807498567691361
    e6 = d6 * 4.0 + (1 - d6) * 6.0
    assert seen[6] == pytest.approx(e6, abs=1e-12) and seen[7] == seen[6]
    # Call 8: n = 4, decay = 1 - 5^(-2/3) = 0.6580048107.
    d8 = 1 - 0.3419951893353394
    assert seen[8] == pytest.approx(d8 * e6 + (1 - d8) * 8.0, abs=1e-12)
    assert seen[6] == pytest.approx(4.961499713, abs=1e-8)
    # Buffers are copied, not averaged.
    assert ema.model.stat.item() == 80.0
    assert int(ema.step) == 9


def test_decay_is_capped_at_beta_and_respects_inv_gamma():
    ema = EMA(Scalar(), beta=0.5, update_every=1, update_after_step=0)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(1) == pytest.approx(1 - 2 ** (-2 / 3))  # 0.370 < beta
    assert ema.decay_at(100) == 0.5
    ema2 = EMA(Scalar(), inv_gamma=10.0, power=1.0, update_after_step=100)
    assert ema2.decay_at(130) == pytest.approx(1 - 1 / (1 + 30 / 10))
    # Official defaults: first blend at call 110 with decay 1 - 11^(-2/3); 0.9999 reached at ~1e6.
    ema3 = EMA(Scalar())
    assert ema3.decay_at(100) == 0.0
    assert ema3.decay_at(110) == pytest.approx(0.7978, abs=1e-4)
    assert ema3.decay_at(10**7) == 0.9999


def test_beta_blend_with_update_every_one():
    online = Scalar(1.0)
    ema = EMA(online, beta=0.9, update_every=1, update_after_step=0)
    ema.update(online)  # call 0: copy
    _set(online, 2.0)
    for _ in range(200):
        ema.update(online)
    # After many blends the gap to the constant online weight shrinks like prod(decay).
    assert 1.99 < ema.model.w.item() < 2.0
    _set(online, 3.0)
    before = ema.model.w.item()
    ema.update(online)
    assert ema.model.w.item() == pytest.approx(0.9 * before + 0.1 * 3.0, abs=1e-12)


def test_ema_model_is_frozen_copy_and_online_untouched():
    online = nn.Linear(3, 2)
    ema = EMA(online, update_every=1, update_after_step=0)
    assert ema.model is not online
    assert all(not p.requires_grad for p in ema.model.parameters())
    assert all(p.requires_grad for p in online.parameters())
    w = online.weight.detach().clone()
    ema.update(online)
    assert torch.equal(online.weight, w) and torch.equal(ema.model.weight, w)
    ema.train()
    assert not ema.model.training
    x = torch.randn(4, 3)
    assert torch.equal(ema(x), ema.model(x))
    with pytest.raises(AssertionError, match="parameter names"):
        ema.update(nn.Sequential(online))


def test_state_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(online, update_every=2, update_after_step=3)
    opt = torch.optim.SGD(online.parameters(), lr=0.1)
    for _ in range(11):
        online(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(online)
    sd = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert int(sd["step"]) == 11
    save_file(sd, str(tmp_path / "ema.safetensors"))

    fresh = EMA(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), update_every=2, update_after_step=3)
    fresh.load_state_dict(load_file(str(tmp_path / "ema.safetensors")))
    assert int(fresh.step) == 11
    for (k, a), b in zip(ema.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    # Both continue identically after the round trip.
    for _ in range(3):
        online(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(online)
        fresh.update(online)
    for (k, a), b in zip(ema.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
