"""The public facts of one captured update: a typed, versioned record.

Every observer writes them through `CaptureFacts` (the one builder: fedsim's server, its
eavesdropper and client observers, SecAgg+, your own app's `AppFacts`), and every attack
reads them as attributes of it (the one reader, `CaptureFacts.read`), so a fact has one
name, one type and one default. They travel in a capture header's `meta` object with the
version of this layout (`facts_version`): a header without one was written before the
record was typed and loads as version 0 (the same fields; unknown keys ignored, the
declared `AppFacts` under their old key `facts`), and one from a newer fedsim is refused in
one line. Nothing here is ever imported or run: a foreign app's model name is shown as a
hint, never resolved.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FACTS_VERSION = 1
SHA256 = r"^[0-9a-f]{64}$"
MAX_PIXELS = 2**24  # values in one declared image: a header cannot make an attack allocate more


class CaptureFacts(BaseModel):
    """What an attacker may know of one update besides its tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    facts_version: int = FACTS_VERSION
    # the task: the images' shape, the classes, the pixels the model takes
    image_shape: tuple[int, int, int]   # channels, height, width
    num_classes: int = Field(ge=2, le=10**6)
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    normalised_input: bool = False   # a foreign model that normalises its input itself
    # the model: one of fedsim's, by registry name; a foreign app's comes from its user
    app: Literal["fedsim", "foreign"] = "fedsim"
    model: Optional[str] = None
    model_norm: Optional[str] = None
    model_width: Optional[int] = None
    dataset: Optional[str] = None
    # the local training the update came from
    algorithm: Optional[str] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    local_epochs: Optional[int] = 1
    local_steps: Optional[int] = None
    optimizer: dict[str, Any] = {}
    shuffle: Optional[bool] = None
    batch_sizes: Optional[tuple[int, ...]] = None   # each local step's, as the client recorded
    distinct_examples: Optional[int] = None
    effects: dict[str, Any] = {}                    # the defenses' declared effects
    client_metrics: dict[str, float] = {}
    train_config: dict[str, Any] = {}               # a foreign app's train config as sent
    app_facts: dict[str, Any] = {}                  # a foreign app's AppFacts as declared
    # who sent it and who saw it
    run_id: Optional[int] = None
    node_id: Optional[int] = None
    partition: Optional[int] = None
    keyed_by: Optional[Literal["partition", "node"]] = None
    partitions: Optional[tuple[int, ...]] = None    # an aggregate's members
    secure_aggregation: bool = False
    observed_by: Optional[str] = None
    note: Optional[str] = None
    weights_sha256: Optional[str] = Field(default=None, pattern=SHA256)

    @field_validator("image_shape")
    @classmethod
    def _bounded(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(shape) < 1 or shape[0] * shape[1] * shape[2] > MAX_PIXELS:
            raise ValueError(f"three positive integers (channels, height, width), at most "
                             f"{MAX_PIXELS} values")
        return shape

    def with_(self, **changes) -> "CaptureFacts":
        """A copy with `changes`, validated as a new record is."""
        return build({**self.to_meta(), **changes})

    def to_meta(self) -> dict[str, Any]:
        """The header's `meta` object (JSON types only)."""
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, meta: Any, where: str) -> "CaptureFacts":
        """The facts of a header's `meta`, or FactsFormatError naming the field."""
        if not isinstance(meta, dict):
            raise FactsFormatError(f"{where}: meta is not a JSON object")
        version = meta.get("facts_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise FactsFormatError(f"{where}: meta.facts_version {version!r} is not a "
                                   "version number")
        if version > FACTS_VERSION:
            raise FactsFormatError(f"{where}: written by a newer fedsim (capture facts "
                                   f"version {version}; this one reads up to "
                                   f"{FACTS_VERSION}): upgrade fedsim to attack it")
        if version == 0:
            meta = _from_version_0(meta)
        return build(meta, where)


class FactsFormatError(ValueError):
    """A capture's facts that are not what fedsim writes; the message names the field."""


def build(fields: dict[str, Any], where: str = "capture facts") -> CaptureFacts:
    """The one builder: `fields` validated into a record, or one line naming the field."""
    try:
        return CaptureFacts.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise FactsFormatError(f"{where}: unknown fact meta.{loc} (capture facts "
                                   f"version {FACTS_VERSION} hold only "
                                   f"{sorted(CaptureFacts.model_fields)})") from None
        if first["type"] == "missing":
            raise FactsFormatError(f"{where}: meta.{loc} is missing (a capture states its "
                                   "image_shape and num_classes)") from None
        value = repr(first.get("input"))[:80]
        raise FactsFormatError(f"{where}: meta.{loc} {value} is not allowed: "
                               f"{first['msg'].removeprefix('Value error, ')}") from None


def _from_version_0(meta: dict[str, Any]) -> dict[str, Any]:
    """A header written before the facts were typed: the same names, except the declared
    AppFacts (`facts`); keys no reader knows any more are dropped."""
    known = set(CaptureFacts.model_fields)
    old = {k: v for k, v in meta.items() if k in known}
    if isinstance(meta.get("facts"), dict):
        old["app_facts"] = meta["facts"]
    old["facts_version"] = FACTS_VERSION
    return old
