"""Finalization: the plain, smaller model a searched supernet describes.

The search's hard decisions are folded into the weights (:func:`~dnas_prune.search.fold.fold`); with
``round_to`` every channel count is first made a multiple of ``round_to`` by re-projecting the decisions onto
the supernet's budget, since hardware runs such widths faster. Finalizing never changes the supernet, so one
search can be finalized several ways (rounded or not) and keeps computing what it computed.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .errors import DnasPruneError
from .search.budget import budget_state, cost_ratios, far_from_target
from .search.fold import fold
from .search.latency import table_for_settings
from .search.supernet import Supernet


@torch.no_grad()
def finalize(net: Supernet, round_to: int | None = None) -> nn.Module:
    """The plain pruned model (eval mode) computing exactly what ``net.eval()`` computes; ``net`` is not changed.

    With ``round_to`` the model is that of the gate state re-projected onto the supernet's budget (or, without
    one, onto its current cost) with every channel count a multiple of ``round_to`` (see :func:`final_decisions`).
    """
    with final_decisions(net, round_to):
        return fold(net)


@contextmanager
def final_decisions(net: Supernet, round_to: int | None = None) -> Iterator[Supernet]:
    """Within this block ``net`` holds the decisions :func:`finalize` folds: its own, or with ``round_to`` those
    re-projected onto its budget with every width a multiple of ``round_to``. Afterwards it is as before."""
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise DnasPruneError(f"round_to must be a positive whole number of channels (or None), got {round_to!r}")
    if not round_to:
        yield net
        return
    metric, target = ("macs", net.hard_cost().macs / net.dense_cost.macs)
    if net.budget and net.budget["metric"] == "latency":
        # The search landed on a measured latency by moving the projection's target; round around where it
        # landed, on the same latency model.
        if net.latency is None:
            net.latency = table_for_settings(net.budget["latency_table"]).for_supernet(net)
        metric, target = "latency", cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"]
    elif net.budget:
        metric, target = net.budget["metric"], net.budget["target"]
    with net.pinned(budget_state(net, metric, target, round_to=round_to, strict=metric != "latency")):
        far = far_from_target(metric, cost_ratios(net, *net.counts_and_blocks(hard=True))[metric], target,
                              f"one step of round_to={round_to} channels (a smaller one lands closer)")
        if far:
            warnings.warn(far, stacklevel=3)
        yield net
