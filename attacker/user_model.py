"""Your own model as the attacker's target: `module:factory` returns a `torch.nn.Module`
that takes the inputs your data pipeline makes. When that pipeline normalises
((x - mean) / std), the normalisation is put in front of the model as a forward pre-hook, so
the attack works on pixels in the declared range and the parameter names stay yours.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn


class UserModelError(ValueError):
    """The factory cannot be found or called, or its model does not fit the capture."""


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """'package.module:name' (importable, the current folder included; resolved by
    `pkgutil.resolve_name`) or 'path/to/file.py:name'."""
    if ":" not in spec:
        raise UserModelError(f"--model {spec!r} must be 'module:factory' (or 'file.py:factory')")
    target, name = spec.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise UserModelError(f"--model {spec!r}: no file {path}")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
            factory = getattr(module, name, None)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            factory = pkgutil.resolve_name(spec)
    except UserModelError:
        raise
    except AttributeError:
        factory = None
    except Exception as err:  # noqa: BLE001 - an import that fails: one line naming it
        raise UserModelError(f"--model {spec!r}: cannot import {target!r} "
                             f"({type(err).__name__}: {err})") from None
    if not callable(factory):
        raise UserModelError(f"--model {spec!r}: {target!r} has no callable {name!r}")
    return factory


def _shape(t: Optional[torch.Tensor]) -> str:
    return "absent" if t is None else str(tuple(t.shape))


def check_fits(spec: str, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose state does not have the capture's names and shapes, naming
    the first mismatches with both shapes."""
    own = model.state_dict()
    names = sorted(set(own) | set(weights))
    wrong = [n for n in names if n not in own or n not in weights
             or tuple(own[n].shape) != tuple(weights[n].shape)]
    if wrong:
        detail = "; ".join(f"{n}: {_shape(own.get(n))} in the model, {_shape(weights.get(n))} "
                           "in the capture" for n in wrong[:3])
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise UserModelError(f"the model from {spec!r} does not match the capture: "
                             f"{detail}{more}")


def normalising(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """`model` fed (x - mean) / std: the attack then optimises pixels."""
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    model.register_buffer("_fedsim_mean", m, persistent=False)
    model.register_buffer("_fedsim_std", s, persistent=False)

    def pre_hook(module, args):
        return ((args[0] - module._fedsim_mean) / module._fedsim_std, *args[1:])

    model.register_forward_pre_hook(pre_hook)
    return model


def user_model(spec: str, weights: dict[str, torch.Tensor], facts,
               mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> nn.Module:
    """The factory's model with the capture's weights before the round, fed pixels.
    `mean`/`std` override the capture's declared normalisation."""
    try:
        model = load_factory(spec)()
    except UserModelError:
        raise
    except Exception as err:  # noqa: BLE001 - the factory itself raised
        raise UserModelError(f"--model {spec!r}: the factory raised {type(err).__name__}: "
                             f"{err}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"--model {spec!r} returned {type(model).__name__}, not a "
                             "torch.nn.Module")
    check_fits(spec, model, weights)
    model.load_state_dict(weights)
    if mean is None and facts.normalised_input:
        mean, std = facts.mean, facts.std
    if mean is not None:
        normalising(model, mean, std)
    return model
