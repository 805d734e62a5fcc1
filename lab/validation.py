"""The one validation step above the base: registries and data.

`fedsim.config` checks a config's structure; this adds what only the upper floors know:
the attack's name and its own requirements (`attacker/attacks`), each defense's params,
order and requirements (`clients/defenses`), and then what needs the data and the machine
(`fedsim.experiment.check_runnable`). `fedsim config check`, `fedsim run` and `fedsim attack`
all call it, so they agree on every case; it returns the config unchanged or raises one
`ConfigError` line.
"""

from __future__ import annotations

from attacker.attacks import ATTACKS
from clients.defenses import DEFENSES, validate_defense_list
from fedsim.config import ConfigError, ExperimentConfig
from fedsim.experiment import check_runnable


def check_registries(cfg: ExperimentConfig) -> ExperimentConfig:
    try:
        if cfg.attack.name not in ATTACKS:
            raise ValueError(f"attack.name {cfg.attack.name!r} is not one of {sorted(ATTACKS)}")
        if cfg.attack.enabled:
            ATTACKS[cfg.attack.name].check_config(cfg)
        unknown = [d.name for d in cfg.defenses if d.name not in DEFENSES]
        if unknown:
            raise ValueError(f"defenses entry {unknown[0]!r} is not one of {sorted(DEFENSES)}")
        validate_defense_list(cfg)
    except ValueError as err:
        raise ConfigError(f"config error: {err}") from None
    return cfg


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Registries, then data and machine: everything a run needs, before any work."""
    check_runnable(check_registries(cfg))
    return cfg
