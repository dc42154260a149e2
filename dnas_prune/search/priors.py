"""Where the search starts, and which channels of a group stay: the gates' priors and the filter-norm order.

The offset only thresholds logits, so their starting order is the first cut the search makes. ``"gamma"`` ranks
each group's channels by |BN gamma| (every group then loses the same fraction first, a uniform L1 cut);
``"taylor"`` sums each channel gate's squared gradient over the warm-up and ranks all groups at once by that
saliency per unit of marginal cost, as a global Taylor/Fisher pruning would cut. With ``channel_order="l1"`` the
gates set how many channels a group keeps and the L1 norms of the filters they scale set which
(:class:`~dnas_prune.search.pruner.Pruner` says why). Each function reads or writes the logits of a supernet's
gates; the Pruner calls them at warm-up's start and end and after every gate step.
"""

from __future__ import annotations

import torch

from .supernet import Supernet


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Each score's rank, spread evenly from -1 (lowest) to +1 (highest); ties keep their order."""
    rank = torch.empty(scores.numel(), dtype=torch.float64)
    rank[torch.argsort(scores.cpu(), stable=True)] = torch.linspace(-1.0, 1.0, scores.numel(), dtype=torch.float64)
    return rank


def _per_gate(net: Supernet, name: str, per_channel: torch.Tensor) -> torch.Tensor:
    """A per-channel score of group ``name`` summed over the channels each of its gates scales."""
    assign = net.channel_assignment(name).to(per_channel.device)
    return torch.zeros(net.gate(name).size, dtype=torch.float64, device=assign.device).index_add_(0, assign, per_channel)


@torch.no_grad()
def set_gamma_prior(net: Supernet, spread: float) -> None:
    """Logits at ``init_logit`` plus ``spread`` times each gate's |BN gamma| rank within its group, from -1
    (weakest) to +1; block gates (and single gates) start at the top. The whole prior of ``prior="gamma"``; with
    ``"taylor"`` only the start of warm-up, which closes nothing, replaced at its end."""
    importance = net.channel_importance()
    for name, info in net.groups.items():
        if not info.gated:
            continue
        gate = net.gate(name)
        if info.kind == "block" or gate.size < 2:
            gate.logits.fill_(net.init_logit + spread)
            continue
        gate.logits.copy_((net.init_logit + spread * _rank(_per_gate(net, name, importance[name]))).to(gate.logits))


@torch.no_grad()
def add_saliency(net: Supernet, saliency: dict[str, torch.Tensor]) -> None:
    """Add to ``saliency`` each channel gate's squared gradient with respect to its value (the logit's gradient
    divided by d P(open) / d logit): the second-order estimate of what closing it would cost the loss. Block gates
    keep their logits and need none."""
    for name, info in net.groups.items():
        if not info.gated or info.kind == "block":
            continue
        gate = net.gate(name)
        if gate.logits.grad is None:
            continue
        with torch.enable_grad():  # autograd.grad returns the slope without touching .grad
            slope, = torch.autograd.grad(gate.probability().sum(), gate.logits)
        value_grad = gate.logits.grad.double() / slope.double().clamp_min(1e-6)
        saliency[name] = saliency.get(name, 0.0) + value_grad.square()


@torch.no_grad()
def set_taylor_prior(net: Supernet, saliency: dict[str, torch.Tensor], costs: dict[str, float],
                     spread: float) -> list[str]:
    """Restart every channel gate's logit at ``init_logit`` plus ``spread`` times its rank, from -1 to +1, over
    all groups at once, by ``saliency`` per unit of marginal cost (``costs``: each gate's, relative). Block gates
    keep their logits. Returns the channel groups no saliency reached, which keep what they had."""
    gated = [n for n, info in net.groups.items() if info.gated and info.kind != "block"]
    names = [n for n in gated if n in saliency and n in costs]
    if names:
        rank = _rank(torch.cat([saliency[n].cpu() / max(costs[n], 1e-12) for n in names]))
        start = 0
        for name in names:
            gate = net.gate(name)
            gate.logits.copy_((net.init_logit + spread * rank[start:start + gate.size]).to(gate.logits))
            start += gate.size
    return sorted(set(gated) - set(names))


@torch.no_grad()
def l1_channel_order(net: Supernet) -> dict[str, torch.Tensor]:
    """Each channel group's gate indices by ascending L1 norm of the filters they scale, as the filters are now."""
    filters = net.channel_importance("l1")
    order = {}
    for name, info in net.groups.items():
        if info.gated and info.kind != "block" and net.gate(name).size >= 2:
            order[name] = torch.argsort(_per_gate(net, name, filters[name]).cpu(), stable=True)
    return order


@torch.no_grad()
def hold_channel_order(net: Supernet, order: dict[str, torch.Tensor]) -> None:
    """Re-sort each ordered group's logits so that a channel with a larger filter norm never has the smaller
    logit: the gradients still move the group's logits, so the group still widens or narrows (its set of logits,
    hence the cost and the offset, unchanged), but which of its channels stay is the filter-norm order's."""
    for name, indices in order.items():
        logits = net.gate(name).logits
        flat = logits.detach().flatten()
        held = torch.empty_like(flat)
        held[indices.to(flat.device)] = torch.sort(flat).values
        logits.copy_(held.view_as(logits))
