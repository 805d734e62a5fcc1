"""One place that turns the `device` setting into a torch device."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a fallback."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        from fedsim.config import ConfigError

        raise ConfigError("config error: field 'device': 'cuda' was asked for but no CUDA "
                          "device is available; allowed here: 'auto' or 'cpu'")
    return torch.device(setting)
