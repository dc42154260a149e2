"""Finalization: the stage that turns a searched supernet into the plain, smaller model it describes.

The search's hard decisions are folded into the weights (:func:`~dnas_prune.search.fold.fold`); with
``round_to`` every channel count is first made a multiple of ``round_to`` by re-projecting the decisions onto
the supernet's budget, since hardware runs such widths faster.
"""

from __future__ import annotations

import torch
from torch import nn

from .search.budget import project_to_budget
from .search.fold import fold
from .search.supernet import Supernet


@torch.no_grad()
def finalize(net: Supernet, round_to: int | None = None) -> nn.Module:
    """The plain pruned model (eval mode) computing exactly what ``net.eval()`` computes.

    With ``round_to`` the gate state is first re-projected onto the supernet's budget (or, without one,
    onto its current cost) with every channel count a multiple of ``round_to``.
    """
    if round_to:
        metric, target = ("macs", net.hard_cost().macs / net.dense_cost.macs)
        if net.budget:
            metric, target = net.budget["metric"], net.budget["target"]
        project_to_budget(net, metric, target, round_to=round_to)
    return fold(net)
