"""Cost budgets: validating a target, holding the search on it, and landing on it exactly.

- :func:`solve_offset` finds, before every search step, the one logit offset at which the hard decisions cost
  what the current target allows: the budget is a constraint met at every step, not a penalty chased by a
  multiplier (see :mod:`~dnas_prune.search.pruner` for why).
- :func:`budget_state` turns the search's soft preferences into a hard state whose finalized cost is
  within ``tolerance`` of the target (never above ``target + tolerance``), optionally with channel
  counts rounded to multiples of ``round_to``; :func:`project_to_budget` pins it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import BudgetError
from ..models.cost import Cost
from .gates import gate_threshold
from .supernet import Supernet

METRICS = ("macs", "params", "latency")  # latency: ms per batch from the supernet's attached latency model
PROJECTION_WARN = 0.05  # a projection pinned further than this from its target (relative) is warned of


def far_from_target(metric: str, reached: float, target: float, why: str) -> str | None:
    """The warning for a projection that pinned ``reached`` more than :data:`PROJECTION_WARN` from ``target``
    (``why``: what made the step so coarse), else None."""
    if abs(reached / target - 1.0) <= PROJECTION_WARN:
        return None
    return (f"the projection pinned {reached:.4g} of dense {metric}, {100 * (reached / target - 1):+.0f} % from the "
            f"target {target:.4g}: at this size {why} is a large part of the budget")


def check_target(metric: str, target: float) -> None:
    if metric not in METRICS:
        raise BudgetError(f"unknown budget metric {metric!r}; use one of {', '.join(METRICS)}")
    if not (isinstance(target, (int, float)) and 0.0 < float(target) <= 1.0):
        raise BudgetError(f"--target-{metric} must be a fraction of the dense cost in (0, 1], got {target}")


def channel_step(net: Supernet, name: str, round_to: int | None) -> int:
    """The channels a gated group's width moves by: a multiple of ``round_to`` and of the channels one gate
    spans (their least common multiple), at most the whole group."""
    return min(net.groups[name].size, math.lcm(round_to or 1, net.channels_per_gate_of(name)))


def can_be_thin(net: Supernet, name: str, round_to: int | None) -> bool:
    """Whether a block's inner group ``name`` one step wide makes the block thin (close_thin_blocks).

    ``net.budget["thin_branch"]`` says which branches are thin: ``"gate"``, only while the width moves by one
    gate's channels, since a branch one gate wide is a rank-one update paying most of a block's time, while one
    whole SIMD block of channels (``round_to``) is not, and closing it would leave few widths to search; ``"step"``,
    also one ``round_to`` step wide: at several threads such a branch on a wider stream spends most of its time in
    memory-bound ops (BN, the add) that a shared host's busy spells slow most (busy_spells.md)."""
    if not net.groups[name].gated:
        return False
    if (net.budget or {}).get("thin_branch", "gate") == "step":
        return True
    return channel_step(net, name, round_to) == net.channels_per_gate_of(name)


def min_width(net: Supernet, name: str, round_to: int | None) -> int:
    """The narrowest a gated group may get: an inner group may empty (its block goes), a stream keeps one step
    (a stream closed whole would cut the network in two)."""
    info = net.groups[name]
    return 0 if info.kind == "inner" else channel_step(net, name, round_to)


def cost_floor(net: Supernet, metric: str, round_to: int | None = None) -> float:
    """The smallest reachable cost ratio: every gated block closed, every gated inner group empty,
    every gated stream one step (a channel, ``round_to`` or one gate's channels) wide. Stem, fc and projections
    always remain."""
    counts = []
    for name in net.channel_groups:
        info = net.groups[name]
        counts.append(float(min_width(net, name, round_to) if info.gated
                            else info.size))
    blocks = [0.0 if name in net.groups else 1.0 for name in net.branch_blocks]
    cost = net.metric_from_counts(metric, torch.tensor(counts, dtype=torch.float64),
                                  torch.tensor(blocks, dtype=torch.float64))
    return float(cost) / net.dense_metric(metric)


def check_feasible(net: Supernet, metric: str, target: float, round_to: int | None = None,
                   dense_ms: float | None = None) -> None:
    """Raise before any training when the target is below what cannot be pruned. ``dense_ms``: the dense model's
    measured ms that a target in ms was resolved against, so the refusal speaks in ms, as the user did."""
    check_target(metric, target)
    floor = cost_floor(net, metric, round_to)
    if target < floor and dense_ms is not None:
        raise BudgetError(f"--target-latency-ms {target * dense_ms:g} is below what this model can reach: "
                          f"{floor * dense_ms:.3g} ms per batch, its floor, with the dense model measured at "
                          f"{dense_ms:.3g} ms here now (timings on a busy machine run high); choose a target >= "
                          f"{math.ceil(floor * dense_ms * 100) / 100:g} ms")
    if target < floor:
        raise BudgetError(
            f"target {metric} {target:g} is below the floor {floor:.4f} of this model (stem, fc, projections, ungated "
            f"groups and one step, a channel or one gate's channels, per gated stream cannot be pruned); choose a target >= {math.ceil(floor * 1e4) / 1e4:g}"
        )


class Threshold(NamedTuple):
    """What :func:`solve_offset` decides for one step: ``offset`` shifts every logit; ``held`` shifts the logits of
    whole gate modules (a block, or a channel group's units from the first one that did not fit) that rank above it
    but would overshoot the target if opened, so they stay closed this step; ``ratios`` are the hard cost ratios of
    the result."""

    offset: float
    ratios: dict[str, float]
    held: dict[str, float]


HOLD_SLACK = 0.01  # solve_offset fills by holding units while more than this fraction of the target is unspent


@torch.no_grad()
def solve_offset(net: Supernet, metric: str, target: float, margin: float = 1.0) -> Threshold:
    """The one logit offset ``b`` whose hard decisions (``logit + b > 0``, or above the gate kind's
    :attr:`~dnas_prune.search.gates.Gate.threshold`) cost as much as ``target`` allows.

    Free gates are ranked by logit; the largest top-k whose hard cost ratio is ``<= target`` stays open, and ``b``
    sits halfway between the k-th and the (k+1)-th logit (k stops short of a run of tied logits, which open or
    close together). Cost only grows as gates open, so a binary search over k finds it in ``log2(gates)`` cost
    evaluations. The unit that does not fit can be large: a whole block (its inner channels, ranked above it, cost
    nothing while it is closed), or a channel of a wide early layer, a fifth of a small budget. While the budget
    left unspent is more than :data:`HOLD_SLACK` of the target, that unit's gate module (the block, or the group
    from that unit down) is held closed by a shift of its own and the units ranked below it fill the rest, as a
    greedy knapsack would; a module is held once, so this ends within one pass over the modules. Pinned gates and
    ungated groups count as they are. With every gate open (or closed), ``b`` lies ``margin`` beyond the last
    logit. Returns the :class:`Threshold`: ``b``, the hard cost ratios it gives (``"macs"``, ``"params"``, and
    ``"latency"`` when the supernet has a latency model) and the held modules' shifts, by group or block name.
    """
    names = net.channel_groups
    counts = torch.tensor([0.0 if net.groups[n].gated else float(net.groups[n].size) for n in names],
                          dtype=torch.float64)
    blocks = torch.tensor([0.0 if b in net.groups else 1.0 for b in net.branch_blocks], dtype=torch.float64)
    logits, slots, widths, is_block, modules = [], [], [], [], []  # per free unit; modules: its gate's name
    for i, name in enumerate(names):
        if not net.groups[name].gated:
            continue
        gate = net.gate(name)
        per_gate = float(net.channels_per_gate_of(name))
        forced = gate.forced.cpu()
        counts[i] += per_gate * float((forced == 1).sum())
        free = forced < 0
        logits.append(gate.logits.detach().double().cpu()[free])
        n = int(free.sum())
        slots.append(torch.full((n,), i)), widths.append(torch.full((n,), per_gate))
        is_block.append(torch.zeros(n, dtype=torch.bool)), modules.extend([name] * n)
    for b, name in enumerate(net.branch_blocks):
        if name not in net.groups:
            continue
        forced = int(net.gate(name).forced[0])
        if forced >= 0:
            blocks[b] = float(forced)
            continue
        logits.append(net.gate(name).logits.detach().double().cpu().reshape(1))
        slots.append(torch.tensor([b])), widths.append(torch.ones(1)), is_block.append(torch.ones(1, dtype=torch.bool))
        modules.append(name)
    if sum(len(x) for x in logits) == 0:  # every gate pinned: nothing to decide
        return Threshold(0.0, cost_ratios(net, counts, blocks), {})
    logit = torch.cat(logits)
    order = torch.argsort(logit, descending=True, stable=True)
    logit, slot = logit[order], torch.cat(slots)[order]
    width, block = torch.cat(widths).double()[order], torch.cat(is_block)[order]
    module_names = sorted(set(modules))
    index_of = {name: i for i, name in enumerate(module_names)}
    module = torch.tensor([index_of[m] for m in modules])[order]
    position = torch.arange(len(logit))
    held = torch.zeros(len(logit), dtype=torch.bool)  # units above the threshold that stay closed

    def ratios(k: int) -> dict[str, float]:
        c, f = counts.clone(), blocks.clone()
        opened = (position < k) & ~held
        c.index_add_(0, slot[opened & ~block], width[opened & ~block])
        f[slot[opened & block]] = 1.0
        return cost_ratios(net, c, f)

    def ratio(k: int) -> float:
        return ratios(k)[metric]

    def largest_fit(lo: int) -> int:
        """The largest k >= lo whose top-k (less the held) fits, given that ``lo``'s does (or ``lo == 0``)."""
        hi = len(logit)  # invariant: ratio(lo) <= target or lo == 0; ratio(hi + 1) > target
        if ratio(hi) <= target:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ratio(mid) <= target else (lo, mid)
        return lo

    k = largest_fit(0)
    while k < len(logit):
        unspent = target - ratio(k)  # unit k does not fit (or the pinned alone overshoot: unspent < 0)
        if not HOLD_SLACK * target < unspent:
            break
        # too much is left: hold k's module from its logit down (its ties included, so one shift separates the
        # module's open units from its held ones), then fill with the units below it
        held |= (module == module[k]) & (logit <= logit[k])
        k = largest_fit(k + 1)
    while 0 < k < len(logit) and logit[k - 1] == logit[k]:  # tied gates open or close together
        k -= 1
    held &= position < k
    if k == len(logit):
        offset = margin - float(logit[-1])
    elif k == 0:
        offset = -float(logit[0]) - margin
    else:
        offset = -0.5 * float(logit[k - 1] + logit[k])
    below = min(float(logit[k]) + offset if k < len(logit) else -margin, -1e-6)  # where the first closed unit sits
    shifts = {}
    for m in module[held].unique().tolist():
        top_held = float(logit[held & (module == m)].max())
        still_open = (position < k) & ~held & (module == m)
        if bool(still_open.any()):  # halfway between the module's last open unit and its first held one
            shifts[module_names[m]] = -offset - 0.5 * (float(logit[still_open].min()) + top_held)
        else:
            shifts[module_names[m]] = below - top_held - offset
    return Threshold(offset + gate_threshold(net.gate_kind), ratios(k), shifts)


def cost_ratios(net: Supernet, counts: Tensor, blocks: Tensor) -> dict[str, float]:
    """Every cost ratio the supernet counts (macs, params, and latency with a latency model) at the inputs of
    ``Supernet.cost_from_counts``."""
    macs, params = net.cost_from_counts(counts, blocks)
    ratios = {"macs": float(macs) / net.dense_cost.macs, "params": float(params) / net.dense_cost.params}
    if net.latency is not None:
        ratios["latency"] = float(net.metric_from_counts("latency", counts, blocks)) / net.dense_metric("latency")
    return ratios


@torch.no_grad()
def project_to_budget(
    net: Supernet, metric: str, target: float, round_to: int | None = None, tolerance: float = 0.01,
    strict: bool = True,
) -> Cost:
    """Pin the hard gate state of :func:`budget_state` (cost ratio within ``tolerance`` of ``target``); returns
    the cost it pins."""
    net.set_gate_state(budget_state(net, metric, target, round_to, tolerance, strict))
    return net.hard_cost()


@torch.no_grad()
def budget_state(
    net: Supernet, metric: str, target: float, round_to: int | None = None, tolerance: float = 0.01,
    strict: bool = True,
) -> dict[str, Tensor]:
    """A hard gate state (as :meth:`~dnas_prune.search.supernet.Supernet.set_gate_state` takes) whose cost ratio
    lies in ``[target - tolerance, target + tolerance]``; ``net`` is left as it is.

    Starts from the current hard decisions. While over budget it closes the lowest-scored unit (a step of
    ``round_to`` channels of a group, or of one gate's channels, or a whole block); then it reopens the
    highest-scored units that still fit. Within a group the channels kept are always those of the top-scored
    gates; equal scores shrink groups evenly. A measured cost (latency) need not grow with every unit, so it
    may not reach the window: ``strict=False`` then returns the state reached instead of raising. How blocks one
    channel step wide are treated follows ``net.budget["close_thin_blocks"]`` (see the comment below).
    """
    check_feasible(net, metric, target, round_to)
    dense = net.dense_metric(metric)
    decided = net.decisions()
    hard = decided.masks
    names = net.channel_groups
    order: dict[int, Tensor] = {}
    scores: dict[int, Tensor] = {}
    widths: list[int] = []
    steps: list[int] = []
    lows: list[int] = []
    for i, name in enumerate(names):
        info = net.groups[name]
        if not info.gated:
            widths.append(info.size), steps.append(0), lows.append(info.size)
            continue
        gate = net.gate(name)
        score = gate.score().cpu().double()  # per gate
        by_score = torch.argsort(score, descending=True, stable=True)
        gate_order = by_score[torch.argsort(gate.hard_open().cpu()[by_score].to(torch.int8), descending=True,
                                            stable=True)]  # currently open gates first, each part by descending score
        rank = torch.empty_like(gate_order)
        rank[gate_order] = torch.arange(len(gate_order))
        assign = net.channel_assignment(name).cpu()
        order[i] = torch.argsort(rank[assign], stable=True)  # channels gate by gate, in that order
        scores[i] = score[assign][order[i]]
        step = channel_step(net, name, round_to)
        w = int(hard[name].sum())
        if step > 1 and w % step and w < info.size:
            w = min(info.size, int(round(w / step)) * step)
        low = min_width(net, name, round_to)
        widths.append(max(w, low)), steps.append(step), lows.append(low)
    alive = decided.blocks
    # An ungated block is never switched off here: it lives exactly while its inner groups are non-empty.
    blocks = [float(alive[b]) if b in net.groups else 1.0 for b in net.branch_blocks]
    block_score = {b: float(net.gate(name).score()) for b, name in enumerate(net.branch_blocks) if name in net.groups}
    inner_of = [[g for g in row if g < len(names)] for row in net.branch_inner.tolist()]
    # close_thin_blocks (Pruner._hold_blocks_under_their_channels): a gated block lives only while two steps of each
    # inner group do. Its inner groups go from two steps to none and back, never to one; a block found thinner goes
    # now (what it cost is spent below); and a block ranks no higher than its inner groups' second steps.
    rule = (net.budget or {}).get("close_thin_blocks")
    closes_thin = rule is True
    # "projection": the search kept thin blocks; a block whose every inner group is one step wide (or less) goes here,
    # what it cost goes to the living blocks' channels, and no block reopens (experiments/results/thin_blocks.md, B)
    respends_thin = rule == "projection"
    thin_able = [can_be_thin(net, name, round_to) for name in names]
    held = {g for b in block_score for g in inner_of[b]
            if closes_thin and thin_able[g] and steps[g] and 2 * steps[g] <= net.groups[names[g]].size}
    for b in block_score:
        for g in set(inner_of[b]) & held:
            block_score[b] = min(block_score[b], float(torch.sort(scores[g], descending=True).values[2 * steps[g] - 1]))
            if widths[g] < 2 * steps[g]:
                blocks[b] = 0.0

    def ratio_of(w: list[int], f: list[float]) -> float:
        cost = net.metric_from_counts(metric, torch.tensor(w, dtype=torch.float64), torch.tensor(f, dtype=torch.float64))
        return float(cost) / dense

    def units(grow: bool, reopen: bool = True) -> list[tuple[tuple[float, float], str, int]]:
        """Movable units, best first: (sort key, "channels" | "block", index); closed blocks only with ``reopen``."""
        found = []
        for i in order:
            size = net.groups[names[i]].size
            if (widths[i] + steps[i] <= size) if grow else (widths[i] - steps[i] >= lows[i]):
                lo, hi = (widths[i], widths[i] + steps[i]) if grow else (widths[i] - steps[i], widths[i])
                score = float(scores[i][lo:min(hi, size)].mean())
                fraction = widths[i] / size
                found.append(((-score, fraction) if grow else (score, -fraction), "channels", i))
        for b, score in block_score.items():
            if blocks[b] == (0.0 if grow else 1.0) and (reopen or not grow):
                found.append(((-score, 1.0) if grow else (score, -1.0), "block", b))
        return sorted(found)

    def moved(kind: str, i: int, grow: bool) -> tuple[list[int], list[float]]:
        w, f = widths.copy(), blocks.copy()
        if kind == "block":
            f[i] = 1.0 if grow else 0.0
            if grow:  # a reopened block starts from the fewest inner channels it may have and grows from there
                for g in inner_of[i]:
                    w[g] = (2 if g in held or respends_thin else 1) * steps[g] or net.groups[names[g]].size
        elif i in held and (w[i] == 0 if grow else w[i] < 3 * steps[i]):
            w[i] = 2 * steps[i] if grow else 0
        else:
            w[i] += steps[i] if grow else -steps[i]
        return w, f

    def close_thin() -> bool:
        """Close every open gated block whose gated inner groups are all at most one step wide; whether any was."""
        thin = [b for b in block_score if blocks[b] and inner_of[b]
                and all(thin_able[g] and steps[g] and widths[g] <= steps[g] for g in inner_of[b])]
        for b in thin:
            blocks[b] = 0.0
        return bool(thin)

    if respends_thin:
        close_thin()
    current = ratio_of(widths, blocks)
    while current > target + 1e-12:
        fallback = None
        for _, kind, i in units(grow=False):
            w, f = moved(kind, i, grow=False)
            r = ratio_of(w, f)
            if r < current - 1e-12:
                if r >= target - tolerance:  # prefer a unit that does not overshoot below the window
                    fallback = (w, f, r)
                    break
                fallback = fallback or (w, f, r)
        if fallback is None:
            break
        widths, blocks, current = fallback
    def grow_to(limit: float, reopen: bool = True) -> None:
        """Reopen the best-scored units that fit under ``limit``; when re-spending, also those that cost nothing or
        less (a measured latency need not grow with every channel), so no channel that fits stays closed."""
        nonlocal widths, blocks, current
        progress = True
        while progress:
            progress = False
            for _, kind, i in units(grow=True, reopen=reopen):
                w, f = moved(kind, i, grow=True)
                r = ratio_of(w, f)
                if (respends_thin or current + 1e-12 < r) and r <= limit + 1e-12:
                    widths, blocks, current, progress = w, f, r, True
                    break

    slack = min(tolerance, 0.01 * target)  # a polish within 1 % of a small target, where ±tolerance is a large part
    while True:
        if respends_thin:  # channels of the living blocks first; a block reopens (two steps wide) only if they fall short
            grow_to(target, reopen=False)
        if current < target - slack:
            grow_to(target)
        if current < target - tolerance:
            grow_to(target + tolerance)
        if not (respends_thin and close_thin()):  # shrinking may have left a block thin: close it, spend again
            break
        current = ratio_of(widths, blocks)
    if strict and not (target - tolerance - 1e-9 <= current <= target + tolerance + 1e-9):
        raise BudgetError(
            f"could not place the {metric} ratio within ±{tolerance:g} of {target:g} (reached {current:.4f}); "
            "try a smaller --round-to or --channels-per-gate"
        )
    state: dict[str, Tensor] = {}
    for i, perm in order.items():
        mask = torch.zeros(net.groups[names[i]].size, dtype=torch.bool)
        mask[perm[: widths[i]]] = True
        state[names[i]] = mask
    for b in block_score:
        state[net.branch_blocks[b]] = torch.tensor([blocks[b] > 0])
    return state
