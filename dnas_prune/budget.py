"""Cost budgets: validating a target, driving the search toward it, and landing on it exactly.

- :class:`BudgetController` adds ``lambda * max(0, ratio / target - 1)`` to the loss, with ``lambda`` updated by
  dual ascent in log space, so pressure grows geometrically while over budget and fades once under it.
- :func:`project_to_budget` turns the search's soft preferences into a hard state whose finalized cost is
  within ``tolerance`` of the target (never above ``target + tolerance``), optionally with channel
  counts rounded to multiples of ``round_to``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cost import Cost
from .errors import BudgetError
from .supernet import Supernet

METRICS = ("macs", "params")


def check_target(metric: str, target: float) -> None:
    if metric not in METRICS:
        raise BudgetError(f"unknown budget metric {metric!r}; use one of {', '.join(METRICS)}")
    if not (isinstance(target, (int, float)) and 0.0 < float(target) <= 1.0):
        raise BudgetError(f"--target-{metric} must be a fraction of the dense cost in (0, 1], got {target}")


def channel_step(net: Supernet, name: str, round_to: int | None) -> int:
    """The channels a gated group's width moves by: a multiple of ``round_to`` and of the channels one gate
    spans (their least common multiple), at most the whole group."""
    return min(net.groups[name].size, math.lcm(round_to or 1, net.channels_per_gate_of(name)))


def _min_width(size: int, kind: str, step: int) -> int:
    if kind == "inner":
        return 0
    return min(size, step)


def cost_floor(net: Supernet, metric: str, round_to: int | None = None) -> float:
    """The smallest reachable cost ratio: every gated block closed, every gated inner group empty,
    every gated stream one step (a channel, ``round_to`` or one gate's channels) wide. Stem, fc and projections
    always remain."""
    counts = []
    for name in net.channel_groups:
        info = net.groups[name]
        counts.append(float(_min_width(info.size, info.kind, channel_step(net, name, round_to)) if info.gated
                            else info.size))
    blocks = [0.0 if name in net.groups else 1.0 for name in net.branch_blocks]
    macs, params = net.cost_from_counts(torch.tensor(counts, dtype=torch.float64), torch.tensor(blocks, dtype=torch.float64))
    dense = getattr(net.dense_cost, metric)
    return float(macs if metric == "macs" else params) / dense


def check_feasible(net: Supernet, metric: str, target: float, round_to: int | None = None) -> None:
    """Raise before any training when the target is below what cannot be pruned."""
    check_target(metric, target)
    floor = cost_floor(net, metric, round_to)
    if target < floor:
        raise BudgetError(
            f"target {metric} {target:g} is below the floor {floor:.4f} of this model (stem, fc, projections, ungated "
            f"groups and one step, a channel or one gate's channels, per gated stream cannot be pruned); choose a target >= {math.ceil(floor * 1e4) / 1e4:g}"
        )


PENALTIES = ("hinge", "two_sided")


class BudgetController:
    """Lagrangian budget term with dual ascent on ``log(lambda)``.

    ``hinge``: ``lambda * max(0, ratio / target - 1)``, no push once under budget. ``two_sided``:
    ``lambda * |ratio / target - 1|``, which also pushes the cost back up when the gates overshoot (annealing the
    temperature alone drives undecided gates shut and the cost below target); lambda then grows while the cost
    is off target by more than 1 % either way.
    """

    def __init__(self, metric: str, target: float, dense: Cost, lr: float = 0.05, init_lambda: float = 1.0,
                 min_lambda: float = 1e-3, max_lambda: float = 1e4, penalty: str = "hinge") -> None:
        check_target(metric, target)
        if penalty not in PENALTIES:
            raise BudgetError(f"unknown budget penalty {penalty!r}; use one of {', '.join(PENALTIES)}")
        self.kind = penalty
        self.metric = metric
        self.target = float(target)
        self.dense = float(getattr(dense, metric))
        self.lr = lr
        self.log_lambda = math.log(init_lambda)
        self.bounds = (math.log(min_lambda), math.log(max_lambda))
        self.active = False

    @property
    def value(self) -> float:
        return math.exp(self.log_lambda) if self.active else 0.0

    def ratio(self, expected: dict[str, Tensor]) -> Tensor:
        return expected[self.metric] / self.dense

    def penalty(self, expected: dict[str, Tensor]) -> Tensor:
        """``lambda * max(0, ratio / target - 1)``: under budget the gates feel no push, so the task loss can
        reopen the ones that matter at once instead of waiting for lambda to decay."""
        excess = self.ratio(expected) / self.target - 1.0
        return self.value * (excess.abs() if self.kind == "two_sided" else torch.relu(excess))

    def update(self, ratio: float) -> None:
        """One dual-ascent step after each optimizer step (only once the budget is active)."""
        if self.active:
            excess = ratio / self.target - 1.0
            step = self.lr * (abs(excess) - 0.01 if self.kind == "two_sided" else excess)
            self.log_lambda = min(max(self.log_lambda + step, self.bounds[0]), self.bounds[1])

    def state_dict(self) -> dict:
        return {"log_lambda": self.log_lambda, "active": self.active}

    def load_state_dict(self, state: dict) -> None:
        self.log_lambda = float(state["log_lambda"])
        self.active = bool(state["active"])


@torch.no_grad()
def project_to_budget(
    net: Supernet, metric: str, target: float, round_to: int | None = None, tolerance: float = 0.01
) -> Cost:
    """Pin a hard gate state whose cost ratio lies in ``[target - tolerance, target + tolerance]``.

    Starts from the current hard decisions. While over budget it closes the lowest-scored unit (a step of
    ``round_to`` channels of a group, or of one gate's channels, or a whole block); then it reopens the
    highest-scored units that still fit. Within a group the channels kept are always those of the top-scored
    gates; equal scores shrink groups evenly.
    """
    check_feasible(net, metric, target, round_to)
    dense = float(getattr(net.dense_cost, metric))
    hard = net._hard_masks()
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
        low = _min_width(info.size, info.kind, step)
        widths.append(max(w, low)), steps.append(step), lows.append(low)
    alive = net.block_open(hard)
    # An ungated block is never switched off here: it lives exactly while its inner groups are non-empty.
    blocks = [float(alive[b]) if b in net.groups else 1.0 for b in net.branch_blocks]
    block_score = {b: float(net.gate(name).score()) for b, name in enumerate(net.branch_blocks) if name in net.groups}

    def ratio_of(w: list[int], f: list[float]) -> float:
        macs, params = net.cost_from_counts(torch.tensor(w, dtype=torch.float64), torch.tensor(f, dtype=torch.float64))
        return float(macs if metric == "macs" else params) / dense

    def units(grow: bool) -> list[tuple[tuple[float, float], str, int]]:
        """Movable units, best first: (sort key, "channels" | "block", index)."""
        found = []
        for i in order:
            size = net.groups[names[i]].size
            if (widths[i] + steps[i] <= size) if grow else (widths[i] - steps[i] >= lows[i]):
                lo, hi = (widths[i], widths[i] + steps[i]) if grow else (widths[i] - steps[i], widths[i])
                score = float(scores[i][lo:min(hi, size)].mean())
                fraction = widths[i] / size
                found.append(((-score, fraction) if grow else (score, -fraction), "channels", i))
        for b, score in block_score.items():
            if blocks[b] == (0.0 if grow else 1.0):
                found.append(((-score, 1.0) if grow else (score, -1.0), "block", b))
        return sorted(found)

    inner_of = [[g for g in row if g < len(names)] for row in net._branch_inner.tolist()]

    def moved(kind: str, i: int, grow: bool) -> tuple[list[int], list[float]]:
        w, f = widths.copy(), blocks.copy()
        if kind == "block":
            f[i] = 1.0 if grow else 0.0
            if grow:  # a reopened block starts from one step of inner channels and grows from there
                for g in inner_of[i]:
                    w[g] = steps[g] or net.groups[names[g]].size
        else:
            w[i] += steps[i] if grow else -steps[i]
        return w, f

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
    for limit in (target, target + tolerance):
        progress = current < target - tolerance
        while progress:
            progress = False
            for _, kind, i in units(grow=True):
                w, f = moved(kind, i, grow=True)
                r = ratio_of(w, f)
                if current + 1e-12 < r <= limit + 1e-12:
                    widths, blocks, current, progress = w, f, r, True
                    break
    if not (target - tolerance - 1e-9 <= current <= target + tolerance + 1e-9):
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
    net.set_gate_state(state)
    return net.hard_cost()
