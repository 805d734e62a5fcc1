"""DP-SGD through Opacus: per-example clipping and Gaussian noise on every local step.

The batches are Poisson-sampled (`fedsim.data.batches`, rate q = batch_size / partition
size, one independent draw per step, so a batch may be empty: that step is noise only, as
with Opacus' own Poisson data loader), which is what the RDP accountant assumes: the
epsilon at `delta` that each client reports is a guarantee, over all DP steps of the
rounds it took part in (the step count lives in the client's persistent state). As in
Opacus, a step's gradient is the sum of clipped per-example gradients plus noise, divided
by the expected batch size. Opacus cannot compute per-example gradients through
BatchNorm: such a model is refused at config time with the setting that fixes it
(`model.norm = 'group'`), so every process builds the same model from the same file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from clients.defenses.base import Defense, DefenseParams
from fedsim.accuracy import accuracy
from fedsim.data.batches import poisson_rate
from fedsim.privacy import rdp_epsilon
from fedsim.record_keys import DP_DELTA, DP_EPSILON


class DPSGD(Defense):
    name = "dpsgd"
    stage = "training"
    differentially_private = True
    accounting = ("record-level (one example of the client's data), RDP accountant "
                  "(Opacus), Poisson sample rate q = batch_size / partition size per step")

    class Params(DefenseParams):
        noise_multiplier: float = Field(default=1.0, ge=0)
        max_grad_norm: float = Field(default=1.0, gt=0)
        delta: float = Field(default=1e-5, gt=0, lt=1)

    def effects(self):
        return {"poisson_batches": True, "sum_over_batch_size": True}

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
        from opacus import GradSampleModule  # here: Opacus costs seconds to import, and
        from opacus.optimizers import DPOptimizer  # only DP-SGD clients need it

        gsm = GradSampleModule(model)
        opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=fed.lr),
                          noise_multiplier=p.noise_multiplier, max_grad_norm=p.max_grad_norm,
                          expected_batch_size=fed.batch_size)
        total_loss, total_correct, seen = 0.0, 0.0, 0
        update = None
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            # NCHW strides: Opacus' conv grad sampler (`unfold2d`) reads activations as
            # NCHW, and a 1-channel batch with channels-last strides (the digits tensors)
            # makes CPU convolutions pass channels-last activations on, whose per-example
            # gradients it then computed as zero
            logits = gsm(x.clone(memory_format=torch.contiguous_format))
            loss = F.cross_entropy(logits, y)
            loss.backward()  # an empty batch: per-example gradients of size 0, noise only
            if len(x):
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
        state["dp_steps"] = int(state.get("dp_steps", 0)) + len(batches)
        gsm.to_standard_module()  # Opacus' hooks and per-example attributes removed
        # a client that drew no example reports 0 (its weight in the aggregate is 0 too)
        return update, total_loss / max(seen, 1), total_correct / max(seen, 1), seen, {}

    def account(self, state: dict, fed) -> dict[str, float]:
        """Epsilon over every DP step this client has taken, at the configured delta."""
        p = self.params
        q = poisson_rate(int(state["partition_size"]), fed.batch_size)
        steps = int(state.get("dp_steps", 0))
        return {DP_EPSILON: rdp_epsilon([(p.noise_multiplier, q, steps)], p.delta),
                DP_DELTA: p.delta}
