"""Optimizers for gate logits.

Per-parameter Adam divides every logit's gradient by that logit's own RMS, so under a strong budget push all
gates move at about ``lr`` per step in lockstep: the differences that matter — how much a channel helps the
loss, how much it costs — are normalized away, and the final ranking is close to a tie.
:class:`SharedScaleAdam` keeps Adam's momentum and its robustness to the overall gradient scale, but divides
by one RMS over all gates of a parameter group, so a gate's step stays proportional to its own gradient.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from ..errors import DnasPruneError

GATE_OPTIMIZERS = ("shared_adam", "adam")


class SharedScaleAdam(torch.optim.Optimizer):
    """Adam with one second-moment estimate per parameter group instead of one per element."""

    def __init__(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if not lr > 0:
            raise DnasPruneError(f"gate lr must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            first = group["params"][0]
            shared = self.state[first]  # the group's step count and shared second moment
            if "step" not in shared:
                # In the parameter's dtype: Optimizer.load_state_dict casts state to it, and a resumed run must
                # compute exactly what an uninterrupted one does.
                shared["step"] = torch.zeros((), dtype=torch.float32)
                shared["shared_sq"] = torch.zeros((), dtype=first.dtype, device=first.device)
            shared["step"] += 1
            step = float(shared["step"])
            mean_sq = sum(p.grad.double().square().sum() for p in params) / sum(p.numel() for p in params)
            shared["shared_sq"].mul_(beta2).add_(mean_sq.to(first.dtype), alpha=1.0 - beta2)
            denom = float((shared["shared_sq"] / (1.0 - beta2 ** step)).sqrt()) + group["eps"]
            scale = group["lr"] / ((1.0 - beta1 ** step) * denom)
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                p.add_(state["exp_avg"], alpha=-scale)
        return loss


def make_gate_optimizer(kind: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    if kind == "shared_adam":
        return SharedScaleAdam(params, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    raise DnasPruneError(f"unknown gate optimizer {kind!r}; choose one of {', '.join(GATE_OPTIMIZERS)}")
