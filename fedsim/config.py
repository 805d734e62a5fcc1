"""The typed experiment config: one TOML file, every field defaulted, structure validated
here.

This is the base floor, so it checks what it can see: types, ranges, the names of models,
data sets and metrics (read from their registries, which live beside it), and the relations
between fields. Checks that need the registries above it (attacks, defenses) or the data
run in one step, `lab.validation.validate`, which `config check` and `run` share. Every
failure is one line naming the field and what it accepts.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from fedsim.data.datasets import LOADERS
from fedsim.metrics.image import METRICS
from fedsim.models import MODELS
from fedsim.models.layers import NORMS
from fedsim.observers import OBSERVERS as OBSERVER_REGISTRY

DATA_NAMES = tuple(LOADERS)
MAX_ROUNDS = 100_000     # federation.num_rounds: far beyond any experiment, and every
                         # per-round list (schedules, metrics rows) stays small
MAX_IMAGE_SIDE = 512     # data.image_shape height and width: a set and its model fit in memory
SEED_LIMIT = 2**32       # seeds below it: what numpy, scikit-learn and torch all accept
MODEL_NAMES = tuple(MODELS)
MATCH_METRICS = (*METRICS, "lpips")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field and what is allowed."""


class _Section(BaseModel):
    # strict: `num_rounds = true` or `seed = "1"` is an error, not a silent 1; no inf/nan
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)


class DataConfig(_Section):
    name: Literal[DATA_NAMES] = "digits"
    root: Optional[str] = Field(
        default=None,
        description="cifar10: the folder holding cifar-10-batches-py (or that folder itself); "
                    "fashion_mnist: the folder of its four idx .gz files (default "
                    "/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist); "
                    "folder: the image tree (root/<class>/<image>, or root/train and root/test)",
    )
    image_shape: Optional[list[int]] = Field(
        default=None, description="folder only: [channels (1 or 3), height, width] the images are "
                                  "resized to (default [3, 32, 32])")
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration (label skew)")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="digits: share held out")
    max_train: Optional[int] = Field(default=None, ge=1, description="cap on train examples")

    @model_validator(mode="after")
    def _shape_only_for_folder(self) -> "DataConfig":
        if self.image_shape is not None and self.name != "folder":
            raise ValueError(f"data.image_shape applies to data.name 'folder' only ({self.name!r} "
                             "has a fixed shape)")
        shape = self.image_shape
        if shape is not None and (len(shape) != 3 or shape[0] not in (1, 3)
                                  or not all(1 <= side <= MAX_IMAGE_SIDE for side in shape[1:])):
            raise ValueError(f"data.image_shape {shape} must be [channels, height, width] with "
                             f"channels 1 or 3 and height, width in 1..{MAX_IMAGE_SIDE}")
        if self.name == "folder" and not self.root:
            raise ValueError("data.root is required for data.name 'folder' (one sub-folder of "
                             "images per class)")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of this set's images, known before loading it."""
        from fedsim.data.datasets import image_shape_of

        return image_shape_of(self.name, self.image_shape)


class ModelConfig(_Section):
    name: Literal[MODEL_NAMES] = "lenet"
    norm: Literal[NORMS] = Field(
        default="batch", description="normalisation layers of convnet and resnet18"
    )
    width: int = Field(default=16, ge=1, le=512, description="base channel count (convnet, resnet)")


class FederationConfig(_Section):
    num_clients: int = Field(default=2, ge=1, le=1000)
    num_rounds: int = Field(default=3, ge=1, le=MAX_ROUNDS)
    clients_per_round: Optional[int] = Field(default=None, ge=1, description="default: all")
    algorithm: Literal["fedsgd", "fedavg"] = "fedavg"
    local_epochs: int = Field(default=1, ge=1)
    local_steps: Optional[int] = Field(
        default=None, ge=1, description="FedAvg: fixed local steps instead of local epochs"
    )
    lr: float = Field(default=0.1, gt=0)
    batch_size: int = Field(default=16, ge=1)
    connect_timeout_s: float = Field(
        default=120.0, gt=0, description="how long the server waits for num_clients nodes "
        "to connect before it stops with one line (deployments, `flwr run`)")
    min_results: int = Field(
        default=1, ge=1, description="a round with fewer successful client results stops the "
        "run with an error; failures above it are counted and make the exit status 3")

    @model_validator(mode="after")
    def _clients_fit(self) -> "FederationConfig":
        per_round = self.clients_per_round or self.num_clients
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be at most "
                f"num_clients ({self.num_clients})"
            )
        if self.min_results > per_round:
            raise ValueError(f"min_results ({self.min_results}) must be at most the clients "
                             f"of a round ({per_round})")
        return self


class DefenseConfig(_Section):
    """One entry of the defense list: a name from `clients/defenses` and its params (both
    checked by `lab.validation`)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class KnowledgeConfig(_Section):
    """What the attacker is granted: the paper's explicit prior-knowledge settings."""

    bn_stats: Literal["exact", "inferred", "none"] = "none"
    labels: Literal["known", "restored", "optimised"] = "restored"
    batch_size: Union[Literal["known"], int] = "known"

    @model_validator(mode="after")
    def _batch_positive(self) -> "KnowledgeConfig":
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError("batch_size must be 'known' or a positive integer")
        if self.labels == "known" and self.batch_size != "known":
            raise ValueError("labels='known' implies the batch size: set batch_size = 'known'")
        return self


OBSERVERS = tuple(OBSERVER_REGISTRY)  # the observer registry's names (fedsim.observers)


class EveryN(_Section):
    """A schedule of every N-th round: `rounds = { every = 5 }` is rounds 5, 10, ..."""

    every: int = Field(ge=1)


# The attack optimiser's settings among AttackConfig's fields: the attacker's `Budget`
# (attacker.problem), `fedsim attack`'s options and the Python API are built from these
# fields, so each is defined once, here. The names `init`, `compile` and `distance` accept
# are the attacker's registries' (checked by `lab.validation`).
OPTIMISER_FIELDS = ("iterations", "lr", "tv_weight", "bn_weight", "restarts", "init",
                    "batch_restarts", "compile", "distance", "signed", "mixing")


TUNABLE = ("lr", "tv_weight", "bn_weight", "restarts", "init", "distance", "signed")


class TuningConfig(_Section):
    """The attacker's own search over its settings, per attacked update (attacker.tuning):
    every candidate is a full attack, the one with the lowest gradient-matching loss is
    kept; the private images are never consulted. `oracle` also records the candidate with
    the best true PSNR, in a file of its own (an upper bound, not an attack)."""

    search: Literal["off", "grid", "tpe"] = Field(
        default="off", description="off; grid: every point of the space (at most `trials`, "
        "drawn from the seed); tpe: Optuna's TPE sampler for `trials` trials")
    trials: int = Field(default=8, ge=1, le=256, description="attacks per update at most")
    space: dict[str, list[Union[bool, int, float, str]]] = Field(
        default_factory=lambda: {"lr": [0.03, 0.1, 0.3], "tv_weight": [0.0, 0.01, 0.1]},
        description="candidate values per attack setting: " + ", ".join(TUNABLE))
    oracle: bool = Field(default=True, description="also keep the best candidate by true "
                         "PSNR, as leakage_oracle.jsonl (labelled an upper bound)")

    @model_validator(mode="after")
    def _space(self):
        for name, values in self.space.items():
            if name not in TUNABLE:
                raise ValueError(f"attack.tuning.space key {name!r} is not one of "
                                 f"{list(TUNABLE)}")
            if not values:
                raise ValueError(f"attack.tuning.space.{name} is empty: give at least one value")
        if self.search != "off" and not self.space:
            raise ValueError("attack.tuning.space is empty: name at least one setting to search")
        return self


@functools.cache
def _field_adapter(name: str) -> TypeAdapter:
    """A validator of one `[attack]` field alone, with the sections' strictness."""
    field = AttackConfig.model_fields[name]
    return TypeAdapter(Annotated[field.annotation, field],
                       config=ConfigDict(strict=True, allow_inf_nan=False))


class AttackConfig(_Section):
    enabled: bool = False
    name: str = "inverting_gradients"
    observers: list[Literal[OBSERVERS]] = Field(
        default_factory=lambda: ["server"],
        description="who attacks: " + "; ".join(
            f"`{o.name}`, {o.description}" + (" (fedsim deploy only)" if o.deploy_only else "")
            for o in OBSERVER_REGISTRY.values()))
    observer_client: int = Field(default=0, ge=0,
                                 description="the partition of the honest-but-curious client")
    rounds: Union[Literal["all"], list[int], EveryN] = Field(
        default_factory=lambda: [1], description='attacked rounds: a list, "all", or {every = N}')
    clients: Union[Literal["all"], list[int]] = Field(
        default_factory=lambda: [0], description='attacked clients: a list or "all"')
    when: Literal["during", "after"] = Field(
        default="during", description="attack while training goes on (Ray tasks beside the "
        "rounds) or after the last round")
    iterations: int = Field(default=10_000, ge=1)
    lr: float = Field(default=0.1, gt=0)
    tv_weight: float = Field(default=0.1, ge=0)
    bn_weight: float = Field(default=1e-2, ge=0)
    restarts: int = Field(default=1, ge=1)
    init: str = Field(default="randn", description="initial guess (attacker.problem.INITS)")
    batch_restarts: Literal["auto", "on", "off"] = Field(
        default="auto", description="vmap all restarts in one call (auto: CUDA or small models)")
    compile: str = Field(
        default="auto", description="how attack steps run (attacker.engine.MODES; auto: "
        "cudagraph on CUDA, inductor for small models over long runs, graph otherwise)")
    distance: Optional[str] = Field(
        default=None, description="gradient distance (attacker.distances.DISTANCES); unset: "
        "the attack's own (l2 for dlg/idlg, one cosine over all parameters otherwise)")
    signed: Optional[bool] = Field(
        default=None, description="step on the sign of the image gradient; unset: the "
        "attack's own (no)")
    mixing: Literal["mixes", "sources"] = Field(
        default="mixes", description="against a declared mix (MixUp, Intra-InstaHide): "
        "mixes: reconstruct the B training inputs (the mixes) and pair them to the originals; "
        "sources: reconstruct k x B source images mixed by the declared mean coefficients, "
        "and pair the originals among them (attacker.mixing)")
    group_size: Optional[int] = Field(
        default=None, ge=1, le=1024, description="at most this many captures of one problem "
        "shape inverted together in one optimisation (attacker.groups; 1: one at a time; "
        "unset: from a memory estimate of the device, at most 64)")
    match_on: Literal[MATCH_METRICS] = Field(
        default="psnr", description="metric that pairs originals with reconstructions")
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)

    @model_validator(mode="after")
    def _tuning_values(self):
        """Every candidate of the search is a valid value of its own field (its type and
        bounds, checked as the field checks them)."""
        for name, values in self.tuning.space.items():
            for value in values:
                try:
                    _field_adapter(name).validate_python(value)
                except ValidationError as err:
                    msg = err.errors()[0]["msg"]
                    raise ValueError(f"attack.tuning.space.{name} value {value!r}: {msg}") \
                        from None
        return self

    def one_at_a_time(self) -> bool:
        """Attacks are not grouped: asked for, or tuned (every candidate its own attack)."""
        return self.group_size == 1 or self.tuning.search != "off"

    def scheduled_rounds(self, num_rounds: int) -> list[int]:
        if self.rounds == "all":
            return list(range(1, num_rounds + 1))
        if isinstance(self.rounds, EveryN):
            return list(range(self.rounds.every, num_rounds + 1, self.rounds.every))
        return sorted(set(self.rounds))

    def scheduled_clients(self, num_clients: int) -> list[int]:
        return list(range(num_clients)) if self.clients == "all" else sorted(set(self.clients))


class CaptureConfig(_Section):
    """Which rounds the honest-but-curious server writes every client update for."""

    rounds: Union[Literal["all"], list[int]] = "all"


class EvaluationConfig(_Section):
    every: int = Field(default=1, ge=1, description="evaluate the global model every N rounds")
    lpips_net: Literal["vgg", "alex"] = "vgg"


class SimulationConfig(_Section):
    ray_address: Optional[str] = Field(default=None, description="attach to a running Ray cluster")
    cpus_per_client: float = Field(default=1.0, gt=0)
    gpus_per_client: float = Field(default=0.0, ge=0)
    cpus_per_attack: float = Field(default=1.0, gt=0, description="Ray CPUs per attack task")
    gpus_per_attack: float = Field(default=0.0, ge=0, description="Ray GPUs per attack task")
    attack_slots: Optional[int] = Field(
        default=None, ge=1, le=1024,
        description="attack tasks at once beside a local run (default: its CPUs / "
                    "cpus_per_attack)")


class ExperimentConfig(_Section):
    name: str = Field(default="experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      max_length=100, description="run folder prefix: letters, digits, _ . -")
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT,
                      description="below 2**32: numpy, scikit-learn and torch all take it")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=1, ge=1, le=256, description="torch threads per process")
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    defenses: list[DefenseConfig] = Field(default_factory=list)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        from fedsim.models.resnet import MIN_SIDE

        side = min(self.data.shape[1:])
        if self.model.name == "resnet18" and side < MIN_SIDE:
            raise ValueError(f"model.name 'resnet18' needs images of at least {MIN_SIDE}x{MIN_SIDE}; "
                             f"data.name {self.data.name!r} has {side}x{side} (use lenet or convnet)")
        if self.data.name == "cifar10" and not self.data.root:
            raise ValueError("data.root is required for cifar10 (the folder with cifar-10-batches-py)")
        a, fed = self.attack, self.federation
        for r in (a.rounds if isinstance(a.rounds, list) else []):
            if not 1 <= r <= self.federation.num_rounds:
                raise ValueError(
                    f"attack.rounds entry {r} is outside 1..{self.federation.num_rounds} "
                    "(federation.num_rounds)"
                )
        if a.observer_client >= fed.num_clients:
            raise ValueError(f"attack.observer_client {a.observer_client} is outside "
                             f"0..{fed.num_clients - 1}")
        if a.enabled and not a.observers:
            raise ValueError("attack.observers must name at least one of "
                             f"{list(OBSERVERS)} when attack.enabled")
        for c in (a.clients if isinstance(a.clients, list) else []):
            if not 0 <= c < self.federation.num_clients:
                raise ValueError(
                    f"attack.clients entry {c} is outside 0..{self.federation.num_clients - 1}"
                )
        if a.enabled and not (a.scheduled_rounds(fed.num_rounds)
                              and a.scheduled_clients(fed.num_clients)):
            raise ValueError("attack.rounds and attack.clients must each name at least one "
                             "entry when attack.enabled (or set enabled = false)")
        if self.capture.rounds != "all":
            for r in self.capture.rounds:
                if not 1 <= r <= self.federation.num_rounds:
                    raise ValueError(f"capture.rounds entry {r} is outside "
                                     f"1..{self.federation.num_rounds} (federation.num_rounds)")
        if a.enabled and self.capture.rounds != "all":
            missing = sorted(set(a.scheduled_rounds(fed.num_rounds)) - set(self.capture.rounds))
            if missing:
                raise ValueError(f"attack.rounds {missing} are not in capture.rounds "
                                 f"{self.capture.rounds}: the server keeps nothing to attack")
        return self

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        return _drop_none(self.model_dump(mode="python"))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p not in ("function-after",))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        return f"config error: unknown field '{loc}'"
    if first["type"] == "literal_error":
        return f"config error: field '{loc}': {msg}"
    prefix = f"field '{loc}': " if loc else ""
    msg = msg.removeprefix("Value error, ")
    return f"config error: {prefix}{msg}"


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load(path: Union[str, Path, None] = None) -> ExperimentConfig:
    """Load and validate an experiment file; ``None`` gives the embedded default experiment."""
    path = Path(path) if path is not None else default_experiment_path()
    if path.is_dir():
        raise ConfigError(f"config error: {str(path)!r} is a folder; give an experiment TOML file")
    if not path.is_file():
        raise ConfigError(f"config error: experiment file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config error: {path} is not UTF-8 text (byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config error: {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"config error: {path} cannot be read ({err.strerror})") from None
    if not data:
        import logging

        logging.getLogger("fedsim").warning("%s is empty: running the default of every field", path)
    return from_dict(data)


def default_experiment_path() -> Path:
    """experiments/quick.toml of the source checkout that fedsim is installed from."""
    path = Path(__file__).resolve().parent.parent / "experiments" / "quick.toml"
    if not path.is_file():
        raise ConfigError(f"config error: the default experiment {path} was not found; "
                          "give an experiment file")
    return path
