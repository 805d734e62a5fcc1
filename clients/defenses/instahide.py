"""Intra-InstaHide (Huang et al. 2020): MixUp within the client's own data, then a fresh
random per-pixel (per channel) sign flip of each mixed image. Images then lie in [-1, 1]."""

import torch

from clients.defenses.base import Defense
from clients.defenses.mixing import MixParams, declared_mixing, mix


def sign_mask(shape, rng) -> torch.Tensor:
    return torch.from_numpy(rng.choice([-1.0, 1.0], size=shape)).float()


class IntraInstaHide(Defense):
    name = "instahide"
    stage = "data"
    Params = MixParams

    def effects(self):
        return {**declared_mixing(self.params), "sign_flipped": True, "pixel_box": [-1.0, 1.0]}

    def transform_batch(self, x, y, num_classes, rng, pool):
        m = mix(x, y, *pool, num_classes, self.params, rng)
        return sign_mask(tuple(m.x.shape), rng) * m.x, m.y
