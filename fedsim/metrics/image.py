"""PSNR, SSIM (scikit-image) and max-normalised RMSE on single images in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

PSNR_CAP = 100.0  # dB: identical images score this instead of infinity (keeps JSON and means finite)


def _np(img: torch.Tensor) -> np.ndarray:
    return img.detach().cpu().double().clamp(0, 1).numpy()


def psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    from skimage.metrics import peak_signal_noise_ratio  # here: it imports scipy.stats

    a, b = _np(original), _np(reconstruction)
    if np.array_equal(a, b):
        return PSNR_CAP
    return float(min(peak_signal_noise_ratio(a, b, data_range=1.0), PSNR_CAP))


def ssim(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    a, b = _np(original), _np(reconstruction)
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=win))


def rmse(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Root mean squared error divided by the original's maximum (GradAttack's RMSE)."""
    a, b = _np(original), _np(reconstruction)
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.abs(a).max(), 1e-12))


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool  # "better" = closer to the original = more leakage


METRICS: dict[str, Metric] = {
    "psnr": Metric("psnr", psnr, True),
    "ssim": Metric("ssim", ssim, True),
    "rmse": Metric("rmse", rmse, False),
}
