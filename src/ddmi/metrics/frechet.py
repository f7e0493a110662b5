"""Fréchet distance between Gaussians and the kernel inception distance (KID).

Both work on feature matrices (N, D) produced by any embedding network (Inception-v3 pool
features for FID/KID, I3D logits for FVD).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_of_features", "kid"]


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of a feature matrix (N, D), in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, D), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

    ``method="sqrtm"`` (default) is the pytorch-fid / clean-fid computation: scipy's ``sqrtm`` of
    the product; when that is non-finite (singular product), ``eps`` is added to both diagonals
    and the root recomputed; imaginary parts from round-off are discarded (a large imaginary
    component raises, since it means the inputs are not covariance matrices).

    ``method="eigh"`` computes the same trace as sum(sqrt(eig(A sigma2 A))) with A = sigma1^{1/2}
    (A sigma2 A is symmetric PSD and similar to sigma1 sigma2), using two symmetric
    eigendecompositions: equal to ``sqrtm`` to ~1e-9 relative, 3-10x faster for D = 2048 on a CPU
    (seconds instead of tens of seconds) and needs no eps for singular covariances.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"covariances {sigma1.shape}, {sigma2.shape} do not match mean dimension {mu1.shape[0]}"
        )
    diff = mu1 - mu2

    if method == "eigh":
        w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = root1 @ sigma2 @ root1
        trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    elif method == "sqrtm":
        with warnings.catch_warnings():  # singular products are expected (N < D) and handled below
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
            if not np.isfinite(covmean).all():
                offset = np.eye(sigma1.shape[0]) * eps
                covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            imag = np.abs(np.diagonal(covmean).imag).max()
            if imag > 1e-3:
                raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
            covmean = covmean.real
        trace_covmean = np.trace(covmean)
    else:
        raise ValueError(f"unknown method {method!r}; use 'sqrtm' or 'eigh'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def frechet_distance_of_features(feats1: np.ndarray, feats2: np.ndarray, *, method: str = "auto") -> float:
    """Fréchet distance between the Gaussians fitted to two feature matrices (N1, D), (N2, D).

    ``method="auto"`` (default) picks the cheapest exact computation: when one set has fewer
    vectors than dimensions its covariance is ``S1 = X1c^T X1c / (N1 - 1)`` (rank < N1), and
    ``Tr (S1 S2)^{1/2} = sum sqrt(eig(X1c S2 X1c^T / (N1 - 1)))``, an (N1, N1) symmetric
    eigenproblem instead of a (D, D) one (milliseconds instead of tens of seconds for a few
    hundred samples of 2048-d features); otherwise ``"eigh"``. ``"sqrtm"`` and ``"eigh"`` are
    passed to :func:`frechet_distance`.
    """
    if method != "auto":
        return frechet_distance(*feature_stats(feats1), *feature_stats(feats2), method=method)
    f1 = np.asarray(feats1, dtype=np.float64)
    f2 = np.asarray(feats2, dtype=np.float64)
    if f1.shape[0] > f2.shape[0]:
        f1, f2 = f2, f1  # the trace term is symmetric in the two sets
    mu1, _ = feature_stats(f1)
    mu2, sigma2 = feature_stats(f2)
    if f1.shape[0] >= f1.shape[1]:
        return frechet_distance(mu1, np.cov(f1, rowvar=False), mu2, sigma2, method="eigh")
    x1 = (f1 - mu1) / np.sqrt(f1.shape[0] - 1)
    m = x1 @ sigma2 @ x1.T
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.einsum("ij,ij->", x1, x1) + np.trace(sigma2) - 2.0 * trace_covmean)


def kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al., 2018): mean and std over random subsets.

    Each subset estimate is the unbiased MMD^2 with the polynomial kernel
    k(x, y) = (x.y / d + 1)^3 between ``m = min(subset_size, N1, N2)`` vectors drawn without
    replacement from each set (as in clean-fid / StyleGAN2-ADA / torch-fidelity). Unbiased means
    identically distributed sets give values scattered around 0, possibly negative.
    """
    x_all = np.asarray(feats1, dtype=np.float64)
    y_all = np.asarray(feats2, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"feature matrices must be (N, D) with equal D: {x_all.shape}, {y_all.shape}")
    if num_subsets < 1:
        raise ValueError("num_subsets must be >= 1")
    d = x_all.shape[1]
    m = min(subset_size, x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {x_all.shape[0]} and {y_all.shape[0]}")

    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        estimates[i] = within - 2.0 * kxy.sum() / (m * m)
    return float(estimates.mean()), float(estimates.std())
