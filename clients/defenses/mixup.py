"""MixUp as a privacy defense: train on mixes of k private examples (see `mixing`)."""

from clients.defenses.base import Defense
from clients.defenses.mixing import MixParams, declared_mixing, mix


class MixUp(Defense):
    name = "mixup"
    stage = "data"
    Params = MixParams

    def effects(self):
        return declared_mixing(self.params)

    def transform_batch(self, x, y, num_classes, rng, pool):
        m = mix(x, y, *pool, num_classes, self.params, rng)
        return m.x, m.y
