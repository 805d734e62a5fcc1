"""The one validation step above the base: registries and data.

`fedsim.config` checks a config's structure; this adds what only the upper floors know:
the attack's name and its own requirements (`attacker/attacks`), each defense's params,
order and requirements (`clients/defenses`), and then what needs the data and the machine
(`fedsim.experiment.check_runnable`), and whether the captures it asks for fit on the output
folder's disk. `fedsim config check` and `fedsim run` call `validate` (and `fedsim attack`
the registry part), so they agree on every case; it returns the config unchanged or
raises one `ConfigError` line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from attacker.attacks import ATTACKS
from attacker.distances import DISTANCES
from attacker.engine import MODES
from attacker.problem import INITS
from clients.defenses import DEFENSES, validate_defense_list
from fedsim.config import ConfigError, ExperimentConfig
from fedsim.experiment import check_runnable


def check_registries(cfg: ExperimentConfig) -> ExperimentConfig:
    try:
        a = cfg.attack
        for field, value, allowed in (("name", a.name, ATTACKS), ("init", a.init, INITS),
                                      ("compile", a.compile, MODES),
                                      ("distance", a.distance, DISTANCES)):
            if value is not None and value not in allowed:
                raise ValueError(f"attack.{field} {value!r} is not one of {sorted(allowed)}")
            bad = [v for v in a.tuning.space.get(field, []) if v not in allowed]
            if bad:
                raise ValueError(f"attack.tuning.space.{field} {bad[0]!r} is not one of "
                                 f"{sorted(allowed)}")
        if cfg.attack.enabled:
            ATTACKS[cfg.attack.name].check_config(cfg)
        unknown = [d.name for d in cfg.defenses if d.name not in DEFENSES]
        if unknown:
            raise ValueError(f"defenses entry {unknown[0]!r} is not one of {sorted(DEFENSES)}")
        validate_defense_list(cfg)
    except ValueError as err:
        raise ConfigError(f"config error: {err}") from None
    return cfg


def capture_bytes(cfg: ExperimentConfig) -> int:
    """At least what the server's captures of a run take: per captured round, the global
    weights and one update per client of the round, each the size of the model's state."""
    from fedsim.models import structure_probe

    state = structure_probe(cfg.model, cfg.data.shape).state_dict().values()
    per_file = sum(t.numel() * t.element_size() for t in state)
    fed = cfg.federation
    rounds = fed.num_rounds if cfg.capture.rounds == "all" else len(set(cfg.capture.rounds))
    return per_file * (1 + (fed.clients_per_round or fed.num_clients)) * rounds


def check_capture_volume(cfg: ExperimentConfig) -> None:
    """Refuse captures that cannot fit on the output folder's disk: the run would fill it
    partway and stop there."""
    from rich.filesize import decimal

    need = capture_bytes(cfg)
    folder = Path(cfg.output_dir).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.is_dir())  # "/" at last
    free = shutil.disk_usage(existing).free
    if need > free:
        rounds = cfg.capture.rounds
        raise ConfigError(
            f"config error: capture.rounds = {rounds!r} over federation.num_rounds = "
            f"{cfg.federation.num_rounds} stores at least {decimal(need)} of captures (the "
            f"global weights and every client's update, per captured round), more than the "
            f"{decimal(free)} free on the disk of output_dir {cfg.output_dir!r}; list fewer "
            "capture.rounds or lower federation.num_rounds")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Registries, captures against the disk, then data and machine: everything a run
    needs, before any work."""
    check_capture_volume(check_registries(cfg))
    check_runnable(cfg)
    return cfg
