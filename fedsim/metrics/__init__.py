"""Leakage metrics in [0, 1] pixel space, best-match pairing, and label accuracy.

A registry like the defenses and attacks: each metric is `fn(original, reconstruction)` on
single images (C, H, W) with a direction (higher or lower is more leakage). LPIPS comes from
`lpips_distance` (batches, one value per pair), which needs the verified backbones of
`fedsim lpips install`.
"""

from fedsim.metrics.image import METRICS, Metric, psnr, rmse, ssim
from fedsim.metrics.lpips_metric import LPIPSUnavailable, lpips_distance, lpips_metric
from fedsim.metrics.matching import MatchingError, label_accuracy, match, score_reconstruction

# direction of every reported leakage metric: True where a higher value leaks more
HIGHER_LEAKS = {**{name: m.higher_is_better for name, m in METRICS.items()}, "lpips": False}

__all__ = ["HIGHER_LEAKS", "METRICS", "Metric", "psnr", "ssim", "rmse", "lpips_distance",
           "lpips_metric", "LPIPSUnavailable", "match", "MatchingError", "score_reconstruction",
           "label_accuracy"]
