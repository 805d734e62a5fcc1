"""DP-SGD through Opacus: per-example clipping and Gaussian noise on every local step.

The privacy budget epsilon at `delta` is tracked per client across rounds (Opacus' RDP
accountant over all DP steps the client has taken, kept in the client's persistent state)
and reported with every update. Opacus cannot compute per-example gradients through
BatchNorm: such a model is refused at config time with the setting that fixes it
(`model.norm = 'group'`), so every process builds the same model from the same file.
"""

from __future__ import annotations

import logging

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from pydantic import Field

from clients.defenses.base import Defense, DefenseParams
from fedsim.accuracy import accuracy, classification_loss

log = logging.getLogger("fedsim")


class DPSGD(Defense):
    name = "dpsgd"
    stage = "training"

    class Params(DefenseParams):
        noise_multiplier: float = Field(default=1.0, ge=0)
        max_grad_norm: float = Field(default=1.0, gt=0)
        delta: float = Field(default=1e-5, gt=0, lt=1)

    def check_config(self, cfg) -> None:
        """Opacus' own validator, run on the configured model, says whether it can train
        it (it rejects BatchNorm: per-example gradients do not exist through it)."""
        from opacus.validators import ModuleValidator

        from fedsim.models import structure_probe

        errors = ModuleValidator.validate(structure_probe(cfg.model, cfg.data.shape))
        if errors:
            raise ValueError(f"defenses entry 'dpsgd': Opacus cannot train this model "
                             f"({str(errors[0]).split('. ')[0]}); set model.norm = 'group' "
                             "or 'none'")

    def train(self, model, batches, fed, state: dict):
        """One FedSGD step or the FedAvg local steps, each clipped and noised per example."""
        p = self.params
        gsm = GradSampleModule(model)
        opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=fed.lr),
                          noise_multiplier=p.noise_multiplier, max_grad_norm=p.max_grad_norm,
                          expected_batch_size=fed.batch_size)
        total_loss, total_correct, seen = 0.0, 0.0, 0
        update = None
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            logits = gsm(x)
            loss = classification_loss(logits, y)
            loss.backward()
            total_loss += loss.item() * len(x)
            total_correct += accuracy(logits, y) * len(x)
            seen += len(x)
            if fed.algorithm == "fedsgd":
                opt.pre_step()  # clip per example, add noise, average: the private gradient
                update = {n: q.grad.detach().clone()
                          for n, q in zip(dict(model.named_parameters()), gsm.parameters())}
            else:
                opt.step()
        if update is None:
            update = {k: v.detach().clone() for k, v in model.state_dict().items()}
        epsilon = self._account(state, len(batches), fed.batch_size, state.get("partition_size", seen))
        gsm._close()
        return update, total_loss / seen, total_correct / seen, seen, {"dp-epsilon": epsilon}

    def _account(self, state: dict, steps: int, batch_size: int, partition_size: int) -> float:
        state["dp_steps"] = int(state.get("dp_steps", 0)) + steps
        if self.params.noise_multiplier == 0:
            return float("inf")
        acc = RDPAccountant()
        acc.history = [(self.params.noise_multiplier,
                        min(batch_size / max(partition_size, 1), 1.0), state["dp_steps"])]
        return float(acc.get_epsilon(delta=self.params.delta))
