import numpy as np
import pytest

from ddmi.metrics.frechet import feature_stats, frechet_distance, kid


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_full_covariance_rotation_invariant_and_symmetric():
    rng = np.random.default_rng(1)
    d = 5
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.5, 2.0, size=d), rng.uniform(0.5, 2.0, size=d)
    # commuting covariances (same eigenbasis) keep the diagonal closed form
    sig1, sig2 = q @ np.diag(s1) @ q.T, q @ np.diag(s2) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, sig1, mu2, sig2) == pytest.approx(expected, rel=1e-8)
    a = rng.normal(size=(d, d))
    b = rng.normal(size=(d, d))
    sa, sb = a @ a.T, b @ b.T
    assert frechet_distance(mu1, sa, mu2, sb) == pytest.approx(frechet_distance(mu2, sb, mu1, sa), rel=1e-8)


def test_frechet_identical_and_singular():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(10, 64))  # rank-deficient covariance (10 samples in 64-d)
    mu, sigma = feature_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-3
    assert frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(64.0, abs=1e-3)


def test_feature_stats_matches_numpy():
    x = np.random.default_rng(3).normal(size=(50, 4))
    mu, sigma = feature_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.T))
    with pytest.raises(ValueError):
        feature_stats(x[:1])


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 32))
    b = rng.normal(size=(300, 32))
    mean_same, std_same = kid(a, b, num_subsets=20, subset_size=200)
    mean_shift, _ = kid(a, b + 0.5, num_subsets=20, subset_size=200)
    # (a set against itself is not ~0: overlapping subsets make the cross term see k(x, x))
    assert abs(mean_same) < 0.01
    assert std_same >= 0
    assert mean_shift > 10 * max(abs(mean_same), 1e-3)
    # larger shift -> larger KID
    assert kid(a, b + 1.0, num_subsets=20, subset_size=200)[0] > mean_shift


def test_kid_matches_direct_formula_single_subset():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.3
    d, m = 3, 7

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    expected = (xx + yy) / (m * (m - 1)) - 2 * xy / m**2
    # with subset_size == N the subset is a permutation: the estimate is exact and deterministic
    mean, std = kid(x, y, num_subsets=3, subset_size=7)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n, d", [(50, 8), (10, 64)])  # full-rank and singular covariances
def test_eigh_method_matches_sqrtm(n, d):
    rng = np.random.default_rng(6)
    a = np.abs(rng.normal(size=(n, d)))
    b = np.abs(rng.normal(size=(n, d))) * 1.3 + 0.1
    stats = (*feature_stats(a), *feature_stats(b))
    ref = frechet_distance(*stats)
    assert frechet_distance(*stats, method="eigh") == pytest.approx(ref, rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(*stats, method="svd")


@pytest.mark.parametrize("n1,n2", [(12, 40), (40, 12), (80, 90)])
def test_feature_distance_auto_matches_sqrtm(n1, n2):
    """The low-rank/eigh shortcut equals scipy's sqrtm on the same features (D = 64)."""
    from ddmi.metrics.frechet import frechet_distance_of_features
    rng = np.random.default_rng(n1 + n2)
    a = rng.normal(size=(n1, 64))
    b = rng.normal(size=(n2, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.2
    ref = frechet_distance(*feature_stats(a), *feature_stats(b), method="sqrtm")
    assert frechet_distance_of_features(a, b) == pytest.approx(ref, rel=1e-6)
