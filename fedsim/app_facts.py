"""What an observer of *your* Flower app cannot see on the wire, declared once.

A capture holds what crosses the wire: the weights sent, the update returned, the train
config sent and the reply's metrics. An attacker also needs facts the wire does not carry:
the input (shape, classes, the normalisation your data pipeline applies, the pixel range)
and how your clients train (optimiser, epochs, batch size where the train config does not
say). fedsim's own runs derive them from the experiment config; a foreign app declares them
with `AppFacts`, and every capture written for it keeps them.
"""

from __future__ import annotations

import math
import numbers
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from fedsim.record_keys import NUM_EXAMPLES, PARTITION_ID

DEFAULT_KEYS = {"lr": "lr", "local_epochs": "local-epochs", "batch_size": "batch-size"}


class FactsError(ValueError):
    """A declaration that cannot describe a training run; the message names the field."""


@dataclass(frozen=True)
class AppFacts:
    """The app's public facts. `lr`, `local_epochs` and `batch_size` are read from the train
    config the server sent (under `config_keys`) and fall back to the values given here."""

    image_shape: Sequence[int]                     # (channels, height, width) of one input
    num_classes: int
    mean: Union[float, Sequence[float], None] = None  # the pipeline's Normalize(mean, std),
    std: Union[float, Sequence[float], None] = None   # if any (x - mean) / std; a number: every
                                                      # channel
    pixel_range: Sequence[float] = (0.0, 1.0)      # of x before normalisation
    lr: Optional[float] = None
    local_epochs: Optional[int] = None
    batch_size: Optional[int] = None
    momentum: float = 0.0                          # torch.optim.SGD's settings
    weight_decay: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    shuffle: bool = True                           # the client's loader shuffles each epoch
    config_keys: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_KEYS))
    partition_key: str = PARTITION_ID              # reply metric naming the client, if any
    examples_key: str = NUM_EXAMPLES               # reply metric: examples in the partition
    model: Optional[str] = None                    # "module:factory": shown to whoever attacks
                                                   # the captures as a suggestion, never imported

    def __post_init__(self):
        shape = tuple(self.image_shape)
        if len(shape) != 3 or any(not isinstance(v, int) or v < 1 for v in shape):
            raise FactsError(f"AppFacts.image_shape {list(shape)} must be three positive "
                             "integers (channels, height, width)")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise FactsError(f"AppFacts.num_classes {self.num_classes!r} must be an integer >= 2")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:  # frozen: the checked per-channel values replace the given
                object.__setattr__(self, name, per_channel(f"AppFacts.{name}", value,
                                                           shape[0], positive=name == "std"))
        if (self.mean is None) != (self.std is None):
            raise FactsError("AppFacts.mean and AppFacts.std go together (the pipeline's "
                             "Normalize(mean, std)); give both or neither")
        if len(tuple(self.pixel_range)) != 2:
            raise FactsError(f"AppFacts.pixel_range {list(self.pixel_range)} must be (low, high)")
        lo, hi = self.pixel_range
        if not lo < hi:
            raise FactsError(f"AppFacts.pixel_range {list(self.pixel_range)} must be (low, high) "
                             "with low < high")
        self._check("lr", lambda v: v > 0 and math.isfinite(v), "a positive number")
        self._check("local_epochs", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        self._check("batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        if not 0 <= self.momentum < 1:
            raise FactsError(f"AppFacts.momentum {self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise FactsError(f"AppFacts.weight_decay {self.weight_decay} must be >= 0")
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise FactsError("AppFacts.nesterov needs momentum > 0 and dampening 0 (as "
                             "torch.optim.SGD)")
        unknown = set(self.config_keys) - set(DEFAULT_KEYS)
        if unknown:
            raise FactsError(f"AppFacts.config_keys: {sorted(unknown)} not among "
                             f"{sorted(DEFAULT_KEYS)}")
        if self.model is not None and ":" not in self.model:
            raise FactsError(f"AppFacts.model {self.model!r} must be 'module:factory'")

    def _check(self, name: str, ok, allowed: str) -> None:
        value = getattr(self, name)
        if value is not None and not ok(value):
            raise FactsError(f"AppFacts.{name} {value!r} must be {allowed}")

    @classmethod
    def from_toml(cls, path: Path) -> "AppFacts":
        """The declaration as a TOML file (the same field names)."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise FactsError(f"{path}: not a readable TOML declaration ({err})") from None
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise FactsError(f"{path}: unknown field(s) {sorted(unknown)}; allowed: "
                             f"{sorted(f.name for f in fields(cls))}")
        return cls(**data)

    def resolve(self, train_config: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict:
        """The capture's metadata for one reply: the declared facts with the values the
        server actually sent (its train config) in place of the declared fallbacks."""
        keys = {**DEFAULT_KEYS, **self.config_keys}

        def sent(name: str):
            value = train_config.get(keys[name])
            return value if value is not None else getattr(self, name)

        c = self.image_shape[0]
        examples = metrics.get(self.examples_key)
        return {
            "app": "foreign", "model": self.model or "user",
            "image_shape": list(self.image_shape), "num_classes": self.num_classes,
            "mean": list(self.mean) if self.mean is not None else [0.0] * c,
            "std": list(self.std) if self.std is not None else [1.0] * c,
            "normalised_input": self.mean is not None,
            "lr": sent("lr"), "local_epochs": sent("local_epochs") or 1,
            "batch_size": sent("batch_size"), "local_steps": None,
            "optimizer": {"momentum": self.momentum, "weight_decay": self.weight_decay,
                          "dampening": self.dampening, "nesterov": self.nesterov},
            "shuffle": self.shuffle,
            "distinct_examples": int(examples) if examples is not None else 0,
            "effects": {"pixel_box": [float(v) for v in self.pixel_range]},
            "train_config": {k: _plain(v) for k, v in train_config.items()},
            "app_facts": {k: _plain(v) for k, v in asdict(self).items()},
        }


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


def per_channel(name: str, value, channels: int, positive: bool = False) -> tuple:
    """A Normalize mean or std: one number for every channel, or one per channel. The same
    rule and line for `AppFacts` and for `fedsim attack --mean/--std`."""
    if _number(value):
        values = [float(value)] * channels
    elif (not isinstance(value, (str, bytes)) and isinstance(value, Iterable)
          and all(_number(v) for v in list(value))):
        values = [float(v) for v in value]
    else:
        raise FactsError(f"{name} {value!r} must be a number (for every channel) or one "
                         f"number per channel")
    if len(values) != channels:
        raise FactsError(f"{name} has {len(values)} values; the images have {channels} "
                         "channel(s): give one per channel, or one number for every channel")
    if positive and min(values) <= 0:
        raise FactsError(f"{name} {values} must be positive")
    return tuple(values)


def _plain(value):
    """JSON-friendly: Flower's record values are scalars, strings or lists of them."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value
