"""Leakage metrics in [0, 1] pixel space, best-match pairing, and label accuracy.

A registry like the defenses and attacks: each metric is `fn(original, reconstruction)` on
single images (C, H, W) with a direction (higher or lower is more leakage).
"""

from fedsim.metrics.image import METRICS, Metric, psnr, rmse, ssim
from fedsim.metrics.lpips_metric import LPIPSUnavailable, lpips_metric
from fedsim.metrics.matching import label_accuracy, match, score_reconstruction

__all__ = ["METRICS", "Metric", "psnr", "ssim", "rmse", "lpips_metric", "LPIPSUnavailable",
           "match", "score_reconstruction", "label_accuracy"]
