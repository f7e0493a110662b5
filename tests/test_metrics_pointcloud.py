import pytest
import torch

from ddmi.metrics.pointcloud import chamfer_distance_matrix, mmd_cov_1nna, normalize_to_unit_sphere


def test_chamfer_hand_computed():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [0, 2, 0]]])
    # a->b: point (0,0,0) -> 0; (1,0,0) -> nearest (0,0,0) at 1      => mean 0.5
    # b->a: (0,0,0) -> 0; (0,2,0) -> nearest (0,0,0) at 4            => mean 2.0
    d = chamfer_distance_matrix(a, b)
    assert d.shape == (1, 1)
    assert d.item() == pytest.approx(2.5, abs=1e-6)

    c = torch.tensor([[[0.0, 0, 0], [0, 0, 3], [1, 1, 1]]])
    e = torch.tensor([[[0.0, 0, 1], [0, 0, 2], [1, 1, 0]]])
    # c->e: 1 (to (0,0,1)), 1 (to (0,0,2)), 1 (to (1,1,0)) -> mean 1
    # e->c: (0,0,1)->(0,0,0):1 ; (0,0,2)->(0,0,3):1 ; (1,1,0)->(1,1,1):1 -> mean 1
    assert chamfer_distance_matrix(c, e).item() == pytest.approx(2.0, abs=1e-6)


def test_chamfer_matrix_matches_brute_force_and_chunking():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 17, 3, generator=g)
    y = torch.randn(4, 13, 3, generator=g)
    brute = torch.empty(5, 4)
    for i in range(5):
        for j in range(4):
            d = torch.cdist(x[i].double(), y[j].double()) ** 2
            brute[i, j] = d.min(1).values.mean() + d.min(0).values.mean()
    full = chamfer_distance_matrix(x, y)
    tiny_chunks = chamfer_distance_matrix(x, y, chunk=17 * 13)  # one pair per block
    odd_chunks = chamfer_distance_matrix(x, y, chunk=3 * 17 * 13)
    torch.testing.assert_close(full, brute, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_chunks, full)
    torch.testing.assert_close(odd_chunks, full)


def test_normalize_to_unit_sphere():
    g = torch.Generator().manual_seed(1)
    pc = torch.rand(3, 100, 3, generator=g) * 5 + 7
    out = normalize_to_unit_sphere(pc)
    mid = (out.amax(1) + out.amin(1)) / 2
    torch.testing.assert_close(mid, torch.zeros(3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1).amax(1), torch.ones(3))


def _clouds(n, p, seed, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, 3, generator=g) * 0.3 + offset


def test_identical_sets():
    s = normalize_to_unit_sphere(_clouds(12, 64, 0))
    r = mmd_cov_1nna(s, s.clone())
    assert r["mmd"] == pytest.approx(0.0, abs=1e-5)
    assert r["cov"] == 1.0
    # every cloud's nearest other cloud is its exact twin in the other set: classifier always wrong
    assert r["nna"] == 0.0


def test_same_distribution_gives_nna_near_half():
    s = _clouds(40, 48, 1)
    r = _clouds(40, 48, 2)
    out = mmd_cov_1nna(s, r)
    assert 0.3 <= out["nna"] <= 0.7
    assert 0 < out["cov"] <= 1 and out["mmd"] > 0


def test_separated_sets():
    s = _clouds(10, 32, 3, offset=0.0)
    r = _clouds(8, 32, 4, offset=5.0)
    out = mmd_cov_1nna(s, r)
    assert out["nna"] == 1.0
    assert out["mmd"] > 20  # ~ 2 * 5^2
    # all samples are equally far: their nearest refs are few -> low coverage
    assert out["cov"] < 1.0


def test_mmd_and_cov_definitions():
    # 1-point clouds make Chamfer = 2 * squared distance; refs at 0, 10, 20; samples near 0 and 10
    ref = torch.tensor([[[0.0, 0, 0]], [[10.0, 0, 0]], [[20.0, 0, 0]]])
    sample = torch.tensor([[[1.0, 0, 0]], [[9.0, 0, 0]], [[2.0, 0, 0]]])
    out = mmd_cov_1nna(sample, ref)
    # per-ref min CD: ref0 <- sample0 (2*1), ref10 <- sample1 (2*1), ref20 <- sample1 (2*121)
    assert out["mmd"] == pytest.approx((2 + 2 + 242) / 3, rel=1e-5)
    assert out["cov"] == pytest.approx(2 / 3)
