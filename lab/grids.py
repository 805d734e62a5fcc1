"""The one image grid fedsim writes beside every attack (attacks/<stem>.png): rows of up to
16 originals, each above its best-matched reconstruction, or the reconstructions alone when
no originals are known (a foreign app's capture attacked without them). Small images are
scaled up, nearest-neighbour, so a 8x8 digit stays legible."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

MIN_SIDE = 32  # pixels a grid cell is scaled up to, at least


def save_grid(path: Path, reconstructions: torch.Tensor,
              originals: Optional[torch.Tensor] = None, per_row: int = 16) -> Path:
    """`reconstructions` in the order they pair with `originals` (when given)."""
    if originals is None:
        tiles, columns = reconstructions, len(reconstructions)
    else:
        rows = []
        for start in range(0, len(originals), per_row):
            o, r = originals[start:start + per_row], reconstructions[start:start + per_row]
            pad = per_row - len(o) if len(originals) > per_row else 0
            blank = torch.ones((pad, *o.shape[1:]))
            rows += [o, blank, r, blank]
        tiles, columns = torch.cat(rows), len(originals)
    tiles = tiles.detach().cpu().clamp(0, 1)
    if tiles.shape[-1] < MIN_SIDE:
        tiles = F.interpolate(tiles, scale_factor=MIN_SIDE // tiles.shape[-1], mode="nearest")
    save_image(make_grid(tiles, nrow=min(per_row, columns), padding=2, pad_value=1.0), path)
    return Path(path)
