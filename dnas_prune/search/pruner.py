"""The Pruner: gates, schedule, budget and gate optimizer, for any training loop.

::

    pruner = Pruner(model, input_size=(3, 32, 32), target_macs=0.2, total_steps=len(loader) * epochs)
    for x, y in loader:
        loss = criterion(pruner.net(x), y)
        loss.backward(); optimizer.step(); pruner.step(); optimizer.zero_grad()
    small = pruner.finalize(calibration_batches)

How the search steers itself to the budget. Every step, before the forward, :func:`~dnas_prune.search.budget.solve_offset`
shifts all gate logits by one offset so that the hard decisions (``logit + offset`` above the gate kind's threshold,
0 for the default sigmoid gates) cost exactly what the current target allows, and the forward is hard with a
straight-through gradient from the first step. So:

- the hard cost follows the target at every step by construction, and the network trained is the network you get
  (with sigmoid gates; Bernoulli and hard-concrete gates train on samples around it).
  It lies under the target by less than the unit at the threshold (or a run of tied logits, which open or close
  together): while a unit that would overshoot leaves more than ``HOLD_SLACK`` of the target unspent (a whole
  block, whose inner channels rank above it and cost nothing while it is closed, or one channel of a wide layer
  under a small target), its gate module is held closed from that unit down and the units ranked below it fill
  the budget; :attr:`max_deviation` records how far;
- the target descends from the dense cost to the final budget along a cubic ramp (steep first, flat on
  arrival, as in gradual magnitude pruning), so the weights adapt while units leave a few at a time;
- the logits only rank units: their gradient, divided by each unit's marginal cost, is the first-order gain of
  keeping a unit per unit of cost, so the threshold drops units in knapsack order. A closed unit still gets a
  gradient (its BN output is computed, then multiplied by 0) and comes back when reopening it helps more than
  the weakest open unit;
- where the search starts is set by a prior (search/priors.py). By default (``prior="taylor"``) every gate's
  squared gradient with respect to its value is summed over the warm-up, when the network is still dense; at the
  end of warm-up all channel gates are ranked at once by that saliency per unit of marginal cost, and the logits
  restart at ``init_logit`` plus ``prior_spread`` times that global rank. The first cuts then follow a global
  second-order criterion, as a global Taylor/Fisher pruning would, and the gradients refine it from there. (With
  Bernoulli gates the warm-up network is sampled, not dense.) The older prior, ``"gamma"``, ranks channels by
  |BN gamma| within each group, so the first offset cuts every group at the same fraction (a uniform L1 cut). The
  mean gradient of a converged parent is near zero for every gate, so the logits alone hardly moved away from that
  start; its architectures stayed close to uniform. The two are compared in experiments/results/compare.md ("pruner
  search" rows).
- which channels of a group stay is not the gates' call by default (``channel_order="l1"``): once the prior is
  set, each group's gates are ordered by the L1 norm of the filters they scale, and after every gate step the
  group's logits are re-sorted into that order. The gradients still widen or narrow a group (the re-sort keeps
  each group's set of logits, so the cost and the offset are unchanged), but the channels kept are those of
  largest filter norm. Why: the searched widths, pruned from the parent by filter norm, finetuned better than the
  channels the gates had picked at the same widths, whether those started from the parent's weights or the
  searched ones; so the gradients are trusted with how wide each layer is, not with which of its channels stay.
  ``"learned"`` lets each channel's gate decide; the two are compared in compare.md.

What was replaced, and why: a Lagrangian penalty ``lambda * max(0, cost / target - 1)`` with ``lambda`` raised by
dual ascent (hinge or two-sided) and soft sigmoid gates until a late hard phase. ``lambda`` grows while the cost is
far above target and the gates then close far below it; once under budget nothing pulls them back, and the
annealed temperature pushes every negative logit further down. From a parent trained elsewhere the default
search fell far below its target with one block open and stayed at chance while the soft network trained on
(issue 25), and the projection then chose the architecture from tied logits. A ramped target only delayed it.
Solving the multiplier exactly each step (the offset is that multiplier, in logit units) removes the lag that
caused it; a two-sided band or a controller with a bounded step could only narrow that lag, so they were not
built. What the offset gives is measured in experiments/results/search_stability.md.
"""

from __future__ import annotations

import difflib
import math
import numbers
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch
from torch import nn

from ..device.policy import process_rank
from ..errors import DnasPruneError
from .budget import (can_be_thin, channel_step, check_feasible, check_target, cost_ratios, far_from_target, min_width,
                     project_to_budget, solve_offset)
from .fold import fold
from .landing import Landing
from .gate_optimizer import make_gate_optimizer
from .latency import LatencyTable, channel_block, latency_table
from .priors import add_saliency, hold_channel_order, l1_channel_order, set_gamma_prior, set_taylor_prior
from .supernet import Supernet

STREAM_GROUPS = ("stem", "*.stream")  # patterns naming every residual-stream group
BLOCK_GROUPS = ("layer*.[0-9]", "layer*.[0-9][0-9]")  # patterns naming every block gate (layerS.B, B < 100)
PRIORS = ("gamma", "taylor")
CHANNEL_ORDERS = ("l1", "learned")
THIN_BLOCK_CLOSERS = ("search", "projection")
THIN_BRANCHES = ("gate", "step")  # a block's branch is thin one gate, or one round_to step, wide (can_be_thin)
RANK_COSTS = ("auto", "budget", "macs")
# SearchConfig fields that one of the target_* keys sets (budget_fields), not knobs of their own
BUDGET_FIELDS = ("metric", "target", "target_ms", "target_ms_dense")


@dataclass
class SearchConfig:
    """Every knob of the search, with its one default (the CLI flags and TOML keys are derived from these)."""

    metric: str = "macs"  # "macs" | "params" | "latency" (measured on this device, see search/latency/)
    target: float = 0.5  # a fraction of the dense model's metric
    target_ms: float | None = None  # metric "latency": a target in ms per batch instead (sets target when resolved)
    # the dense model's ms that target_ms was resolved against, set then; a resumed search keeps it (no re-timing)
    target_ms_dense: float | None = None
    latency_batch_size: int = 1  # metric "latency": the batch size the latency is measured and budgeted at
    # metric "latency": the torch threads the latency is measured and budgeted at (the table, the landing, the
    # report); None: torch's setting when the search starts. Training runs at torch's setting either way.
    latency_threads: int | None = None
    # metric "latency": the measured landing pins within this under the target, aiming at its middle (a budget is a
    # cap; and on a shared machine a later timing reads a narrow model slower more often than faster)
    latency_tolerance: float = 0.1
    # metric "latency": each landing try times the pair (in a new process) for this long, so that its timings see
    # more than one spell of a shared machine's load (a narrow model slows more than the dense one in a busy spell)
    latency_landing_seconds: float = 30.0
    gate: str = "sigmoid"
    gate_optimizer: str = "shared_adam"
    cost_normalized: bool = True  # divide each gate's gradient by its marginal cost
    gate_lr: float | None = None  # None: scaled to the search length
    warmup: float = 0.1  # fraction of the search before the target starts to descend
    target_ramp: float = 0.5  # fraction of the search over which the target descends from dense to the budget
    final_temperature: float = 0.05  # the straight-through window narrows to this, freezing decisions late
    init_logit: float = 3.0
    prior_spread: float = 1.0  # logits start at init_logit +- this, ranked by the prior
    prior: str = "taylor"  # "taylor": ranked across groups by saliency per cost at warm-up's end; "gamma": |gamma| rank
    channel_order: str = "l1"  # "l1": the gates set how many channels a group keeps, filter L1 norms which; "learned"
    # the cost gates are ranked per (gradient normalization, Taylor prior): "budget" = the budget's metric, "macs",
    # "auto" = the budget's, except MACs for a latency budget's channel gates (see _rank_metric)
    rank_cost: str = "auto"
    # every kept width a multiple of this; None: under a latency budget, the channel block of the table's device
    # (channel_block: 16 on AVX-512, 8 on AVX2), otherwise 1; 1 turns rounding off
    round_to: int | None = None
    channels_per_gate: int = 1  # one gate per K channels: every searched width is a multiple of K
    exclude: list[str] = field(default_factory=list)
    gate_streams: bool = False  # also gate the residual streams (stem, projections and every branch's last BN)
    # True: a gate per residual block too; False: a block goes when its channels do; None: True for a latency budget
    block_gates: bool | None = None
    # with block gates: a block lives only while two steps of each inner group do, never one gate's channels wide
    # (thin_branch "step": never one round_to step); None: True for a latency budget (see closes_thin_blocks)
    close_thin_blocks: bool | None = None
    # which closes them: "search" holds each block gate under its channels while it trains; "projection" lets the
    # search keep them and the projection closes them, spending what that frees on the living blocks' channels
    close_thin_blocks_at: str = "search"
    # which branches are thin: "gate", one gate's channels wide; "step", also one round_to step (a SIMD block) wide
    thin_branch: str = "gate"
    recalibrate_batches: int = 20

    @property
    def gates_blocks(self) -> bool:
        """Whether each residual block gets a gate of its own. By default only under a latency budget: there a block
        a few channels keep alive still costs much of a whole block's time, so whether a block stays is a decision
        of its own, ranked per unit of latency
        (:meth:`Pruner._rank_metric`); for MACs and params a block costs what its channels do."""
        return self.metric == "latency" if self.block_gates is None else self.block_gates

    @property
    def closes_thin_blocks(self) -> bool:
        """Whether a gated block goes once its inner width would fall to one channel step. By default under a
        latency budget: a block one step wide still pays most of a block's time for a rank-one update, so the
        budget is better spent on the other blocks' channels (experiments/results/thin_blocks.md); for MACs and
        params such a block costs what its one channel does."""
        if not self.gates_blocks:
            return False
        return self.metric == "latency" if self.close_thin_blocks is None else self.close_thin_blocks

    def excluded_groups(self) -> list[str]:
        """The exclude patterns the supernet gets: the user's, plus the streams unless ``gate_streams``, plus the
        block gates unless :attr:`gates_blocks`. A closed stream channel is missing from every block of its stage,
        so streams stay whole by default; without block gates blocks still go, when the search closes all of a
        block's inner channels."""
        streams = [] if self.gate_streams else list(STREAM_GROUPS)
        return list(self.exclude) + streams + ([] if self.gates_blocks else list(BLOCK_GROUPS))

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise DnasPruneError(f"warmup (--warmup) must be a fraction of the search in [0, 1), got {self.warmup}")
        if not 0.0 <= self.target_ramp <= 1.0 - self.warmup:
            raise DnasPruneError(f"target_ramp (--target-ramp) must be a fraction of the search in [0, "
                                 f"{1.0 - self.warmup:g}] (1 - warmup), got {self.target_ramp}")
        if isinstance(self.channels_per_gate, bool) or not isinstance(self.channels_per_gate, int) \
                or self.channels_per_gate < 1:
            raise DnasPruneError(f"channels_per_gate (--channels-per-gate) must be a positive integer, "
                                 f"got {self.channels_per_gate!r}")
        if self.round_to is not None and self.round_to % self.channels_per_gate:
            raise DnasPruneError(f"round_to (--round-to) {self.round_to} is not a multiple of channels_per_gate "
                                 f"(--channels-per-gate) {self.channels_per_gate}; widths move by whole gates")
        if self.prior not in PRIORS:
            raise DnasPruneError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.rank_cost not in RANK_COSTS:
            raise DnasPruneError(f"rank_cost must be one of {', '.join(RANK_COSTS)}, got {self.rank_cost!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise DnasPruneError(f"channel_order (--channel-order) must be one of {', '.join(CHANNEL_ORDERS)}, "
                                 f"got {self.channel_order!r}")
        if self.thin_branch not in THIN_BRANCHES:
            raise DnasPruneError(f"thin_branch (--thin-branch) must be one of {', '.join(THIN_BRANCHES)}, "
                                 f"got {self.thin_branch!r}")
        if self.close_thin_blocks_at not in THIN_BLOCK_CLOSERS:
            raise DnasPruneError(f"close_thin_blocks_at (--close-thin-blocks-at) must be one of "
                                 f"{', '.join(THIN_BLOCK_CLOSERS)}, got {self.close_thin_blocks_at!r}")
        if self.prior == "taylor" and self.warmup <= 0:
            raise DnasPruneError("prior (--prior) 'taylor' ranks gates by the gradients seen during warm-up: set "
                                 "warmup (--warmup) > 0, or use --prior gamma")
        if self.prior == "taylor" and self.gate == "hard_concrete":
            raise DnasPruneError("prior (--prior) 'taylor' reads each gate's gradient through P(open), which a "
                                 "hard-concrete gate's sample does not follow: use --prior gamma with --gate hard_concrete")
        if self.prior_spread < 0:
            raise DnasPruneError(f"prior_spread must be >= 0, got {self.prior_spread}")
        if isinstance(self.latency_batch_size, bool) or not isinstance(self.latency_batch_size, int) \
                or self.latency_batch_size < 1:
            raise DnasPruneError(f"latency_batch_size (--latency-batch-size) must be a positive integer, "
                                 f"got {self.latency_batch_size!r}")
        if self.latency_threads is not None and (isinstance(self.latency_threads, bool)
                                                 or not isinstance(self.latency_threads, int)
                                                 or self.latency_threads < 1):
            raise DnasPruneError(f"latency_threads (--latency-threads) must be a positive integer, "
                                 f"got {self.latency_threads!r}")
        if self.target_ms is not None and not (self.target_ms > 0 and math.isfinite(self.target_ms)):
            raise DnasPruneError(f"--target-latency-ms must be a positive number of milliseconds, got {self.target_ms}")
        if not 0.0 < self.latency_tolerance < 1.0:  # NaN fails too
            raise DnasPruneError(f"latency_tolerance must be a fraction of the target in (0, 1), got "
                                 f"{self.latency_tolerance}")
        if not (self.latency_landing_seconds >= 0 and math.isfinite(self.latency_landing_seconds)):
            raise DnasPruneError(f"latency_landing_seconds must be a number of seconds >= 0, "
                                 f"got {self.latency_landing_seconds}")
        if self.target_ms is not None and self.metric != "latency":
            raise DnasPruneError("target_ms is a latency target: set metric='latency' with it")


def budget_fields(macs: float | None = None, params: float | None = None, latency: float | None = None,
                  latency_ms: float | None = None, flag: str = "--target-{}") -> dict[str, Any]:
    """The SearchConfig fields (metric, target, target_ms) of exactly one of the four targets; the one reading of
    ``--target-*`` (``flag`` names them in errors, e.g. ``"search.target_{}"`` for TOML keys)."""
    given = {k: v for k, v in {"macs": macs, "params": params, "latency": latency, "latency_ms": latency_ms}.items()
             if v is not None}

    def name(kind: str) -> str:
        return flag.format(kind.replace("_", "-") if flag.startswith("--") else kind)

    if len(given) != 1:
        every = ", ".join(name(k) for k in ("macs", "params", "latency", "latency_ms"))
        raise DnasPruneError(f"give exactly one budget of {every}"
                             + (f", not {' and '.join(map(name, given))}" if given else ""))
    (kind, value), = given.items()
    number = _real(value)
    if kind == "latency_ms":
        if not (number is not None and number > 0 and math.isfinite(number)):
            raise DnasPruneError(f"{name(kind)} must be a positive number of milliseconds, got {value!r}")
        return {"metric": "latency", "target": 1.0, "target_ms": number}
    if not (number is not None and 0.0 < number <= 1.0):
        raise DnasPruneError(f"{name(kind)} must be a fraction of the dense model's in (0, 1], got {value!r}")
    return {"metric": kind, "target": number, "target_ms": None}


def _real(value: Any) -> float | None:
    """``value`` as a float if it is one real number (a Python, NumPy or one-element tensor scalar), else None;
    a bool is not a budget."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 and not value.is_complex() else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def ramped_target(target: float, elapsed: float, ramp: float) -> float:
    """The budget ``elapsed`` (a fraction of the whole search, counted from the end of warm-up) into a ramp of
    length ``ramp``: a cubic descent from the dense cost to ``target``, steep first, flat on arrival."""
    if elapsed < 0.0:
        return 1.0
    if ramp <= 0.0 or elapsed >= ramp:
        return target
    return target + (1.0 - target) * (1.0 - elapsed / ramp) ** 3


def as_context_factory(autocast: Callable[[], ContextManager] | ContextManager) -> Callable[[], ContextManager]:
    """What to enter around each forward: a context manager factory, or one context manager (as
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, entered anew each time)."""
    if isinstance(autocast, AbstractContextManager):
        return lambda: autocast
    if not callable(autocast):
        raise DnasPruneError(f"autocast must be a context manager or a function returning one, got {autocast!r}")
    return autocast


@torch.no_grad()
def refit_bn(net: nn.Module, batches: Iterable[Any],
             autocast: Callable[[], ContextManager] | ContextManager = nullcontext) -> int:
    """Re-estimate every BN's running statistics for the network ``net`` computes in eval mode (a supernet's
    pinned hard state or a plain model) from ``batches`` (tensors or ``(x, y)`` pairs); returns how many were used.
    The statistics the search kept followed a network that changed under them. With no batch at all (an exhausted
    iterator), or on an error, the statistics are left as they were, with a warning for the former."""
    enter = as_context_factory(autocast)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in bns]
    was_training = net.training
    used, refitted = 0, False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        gates = net.gates.values() if isinstance(net, Supernet) else ()
        for gate in gates:
            gate.train(False)  # hard decisions, no sampling
        device = next(net.parameters()).device
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise DnasPruneError(f"calibration batches must be image tensors or (images, labels) pairs, got a "
                                     f"{type(batch).__name__}; e.g. ((b['image'], b['label']) for b in loader)")
            with enter():
                net(x.to(device))
            used += 1
        refitted = used > 0
    finally:
        for m, (momentum, state) in zip(bns, saved):
            m.momentum = momentum
            if not refitted:
                m.load_state_dict(state)
        net.train(was_training)
    if not used:
        warnings.warn("refit_bn: the calibration batches were empty (an iterator already used up?); the BN "
                      "statistics were kept as they were", stacklevel=2)
    return used


class Pruner:
    """Wraps ``model`` in a :class:`~dnas_prune.search.supernet.Supernet` and steers its gates to the budget.

    Call :meth:`step` once per training step, after ``loss.backward()``: it updates the gates (their gradients
    divided by marginal cost) and sets the schedule of the next step (target, offset, temperature). Give the
    weights' optimizer ``model.parameters()`` as usual: the gates live on :attr:`net`, not in ``model``.
    Afterwards :meth:`finalize` lands within ±1 % of the target and returns the plain pruned model.

    The budget is one of ``target_macs``, ``target_params``, ``target_latency`` (a fraction of the dense model's
    latency on this device) or ``target_latency_ms``. Latency is counted in a per-layer table of this device
    (``latency``, or measured once and cached), widths stay in whole channel blocks of the device's kernels
    (``round_to``), and the landing re-aims the projection until the finalized model, timed beside the dense one,
    is at most the target and within ``latency_tolerance`` under it.

    Readable state, what the search computes and a monitor logs: :attr:`net`, :attr:`target` (the current, ramped
    target), :attr:`offset` and :attr:`temperature` (the schedule it set), :attr:`hard_ratio` (the cost ratio of
    the current hard decisions; :attr:`hard_ratios` for MACs and params alike), :attr:`trace` (``(step, target,
    hard ratio)`` every few steps) and :attr:`max_deviation` (the largest ``|hard / target - 1|`` since warm-up).

    An average of the weights (``torch.optim.swa_utils.AveragedModel``) is of ``model``, not of :attr:`net`:
    averaging the supernet averages its gate logits and offset too, whose decisions then follow no budget. Load the
    averaged weights into ``model`` and call :meth:`finalize`. :attr:`net` may be given to ``torch.compile``: the
    schedule it moves every step is held in tensors, so the net is not compiled again for each step.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32), *, total_steps: int,
                 target_macs: float | None = None, target_params: float | None = None,
                 target_latency: float | None = None, target_latency_ms: float | None = None,
                 latency: LatencyTable | None = None, config: SearchConfig | None = None, **overrides: Any) -> None:
        targets = (target_macs, target_params, target_latency, target_latency_ms)
        if config is None and all(t is None for t in targets) and not {"metric", "target", "target_ms"} & set(overrides):
            raise DnasPruneError("Pruner: pass a budget, one of target_macs, target_params, target_latency or "
                                 "target_latency_ms (or a SearchConfig)")
        config = config or SearchConfig()
        known = [f.name for f in fields(SearchConfig)]
        for name in overrides:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise DnasPruneError(f"Pruner: unknown setting {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                     else "; the settings are SearchConfig's fields"))
        if any(t is not None for t in targets):
            overrides = {**budget_fields(*targets, flag="target_{}"), **overrides}  # named as the arguments
        self.config = replace(config, **overrides)
        if isinstance(model, Supernet):
            self.net = model
        else:
            cfg = self.config
            self.net = Supernet(model, input_size, gate=cfg.gate, exclude=cfg.excluded_groups(),
                                init_logit=cfg.init_logit, channels_per_gate=cfg.channels_per_gate)
            self._set_prior()
        if self.config.metric == "latency":
            self._attach_latency(latency)
        cfg = self.config
        check_feasible(self.net, cfg.metric, cfg.target, cfg.round_to,
                       dense_ms=cfg.target_ms_dense if cfg.target_ms is not None else None)
        # budget_state reads it: True holds thin blocks shut while searching, "projection" closes them at the end
        closes: bool | str = False
        if cfg.closes_thin_blocks:
            closes = True if cfg.close_thin_blocks_at == "search" else "projection"
        self.net.budget = {"metric": cfg.metric, "target": cfg.target, "close_thin_blocks": closes,
                           "thin_branch": cfg.thin_branch}
        if cfg.metric == "latency":
            self.net.budget["latency_table"] = self.net.latency.table.settings
        if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
            raise DnasPruneError(f"Pruner: total_steps must be the number of optimizer steps the search will take (a "
                                 f"positive whole number), got {total_steps!r}")
        self.total_steps = int(total_steps)
        # Scaled to the search length: a consistently pushed gate crosses its prior's range and the initial
        # logit within a quarter of the budgeted steps, for 40 steps or 4000.
        budgeted = max(1.0, self.total_steps * (1.0 - cfg.warmup))
        self.gate_lr = cfg.gate_lr or min(0.5, max(0.005, cfg.init_logit / (0.25 * budgeted)))
        self.gate_optimizer = make_gate_optimizer(cfg.gate_optimizer, self.net.gate_parameters(), self.gate_lr)
        self.steps_done = 0
        self._warned: set[str] = set()  # the loop's mistakes warned of (_check_the_loop)
        self._logits_after_step: list[torch.Tensor] | None = None  # to see another optimizer move the gates
        # a user's net.load_state_dict moves the logits legitimately
        self.net.register_load_state_dict_post_hook(lambda module, keys: setattr(self, "_logits_after_step", None))
        self.trace_every = max(1, self.total_steps // 200)
        self.trace: list[tuple[int, float, float]] = []
        self.max_deviation = 0.0
        self.saliency: dict[str, torch.Tensor] = {}  # prior "taylor": summed (dL/dg)^2 per gate over warm-up
        self.prior_set = cfg.prior != "taylor"
        self.channel_order: dict[str, torch.Tensor] = {}  # channel_order "l1": gate indices by ascending filter norm
        if self.prior_set and cfg.channel_order == "l1" and not isinstance(model, Supernet):
            self._fix_channel_order()
        if self.prior_set and not isinstance(model, Supernet):
            self._keep_streams_open()
        self.net.train()
        self._prepare()

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        """After ``loss.backward()``: update the gates and set up the next step."""
        self._check_the_loop()
        if self._finite_gradients():
            if self.config.prior == "taylor" and not self.prior_set:
                add_saliency(self.net, self.saliency)
            if self.config.cost_normalized:
                self.normalize_gate_gradients()
            self.gate_optimizer.step()
        self.gate_optimizer.zero_grad(set_to_none=True)
        hold_channel_order(self.net, self.channel_order)
        self.steps_done += 1
        self._prepare()

    def _check_the_loop(self) -> None:
        """Mistakes of a training loop that would go unnoticed: stepping after the gates were pinned (an error);
        gates without gradient (the forward did not go through :attr:`net` in training mode, or the gradients were
        cleared before this step), gates moved by another optimizer, more steps than ``total_steps`` (warnings,
        once each)."""
        gates = list(self.net.gates.values())
        if all(bool((gate.forced >= 0).all()) for gate in gates):
            raise DnasPruneError("Pruner.step after project() or finalize(): every gate is pinned and the search is "
                                 "over; train the model finalize() returned (or pruner.release() to search on)")
        if "no gradient" not in self._warned and all(gate.logits.grad is None for gate in gates):
            self._warn_once("no gradient", "no gate got a gradient this step: call pruner.step() after "
                            "loss.backward() and before zero_grad, on a loss of pruner.net(x) in train mode")
        if "moved" not in self._warned and self._logits_after_step is not None and not all(
                torch.equal(gate.logits, kept) for gate, kept in zip(gates, self._logits_after_step)):
            self._warn_once("moved", "the gate logits changed between Pruner steps: the weights' optimizer holds "
                            "them too; give it pruner.weight_parameters(), not pruner.net.parameters()")
        if self.steps_done == self.total_steps:
            self._warn_once("overrun", f"more Pruner steps than total_steps={self.total_steps}: the budget's ramp "
                            "was planned for that many; call pruner.step() once per optimizer step and count those")

    def _finite_gradients(self) -> bool:
        """False (and a warning, once) when a gate gradient is inf or NaN: a step an fp16 GradScaler skips for
        overflow, or a bad batch. One such update would turn every logit, and so the whole search, into NaN."""
        grads = [gate.logits.grad for gate in self.net.gates.values() if gate.logits.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):  # one sync per step
            return True
        self._warn_once("not finite", "a gate gradient was inf or NaN (an fp16 overflow that GradScaler skips, or "
                        "a bad batch): the Pruner skipped this step's gate update, as the scaler skips the weights'")
        return False

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """What the weights' optimizer should take: the model's parameters, never the gate logits, which the
        Pruner's own optimizer updates (the same as ``model.parameters()`` of the wrapped model)."""
        return self.net.weight_parameters()

    @property
    def progress(self) -> float:
        return min(1.0, self.steps_done / self.total_steps)

    def _prepare(self) -> None:
        """Target, temperature and offset for step ``steps_done``: a pure function of the step and the logits,
        so a resumed search replays exactly."""
        cfg = self.config
        elapsed = self.progress - cfg.warmup
        if elapsed >= 0 and not self.prior_set:
            self._set_taylor_prior()
        self.target = ramped_target(cfg.target, elapsed, cfg.target_ramp)
        budgeted = min(1.0, max(0.0, elapsed / max(1e-9, 1.0 - cfg.warmup)))
        self.temperature = cfg.final_temperature ** budgeted
        self._hold_blocks_under_their_channels()  # idempotent: a resumed search replays it
        offset, self.hard_ratios, held = solve_offset(self.net, cfg.metric, self.target, margin=self.temperature)
        self.hard_ratio = self.hard_ratios[cfg.metric]
        self.net.set_schedule(temperature=self.temperature, hard=True, offset=offset, held=held)
        self.offset = offset
        if elapsed >= 0:
            self.max_deviation = max(self.max_deviation, abs(self.hard_ratio / self.target - 1.0))
        due = self.steps_done % self.trace_every == 0 or self.steps_done == self.total_steps
        if due and not (self.trace and self.trace[-1][0] == self.steps_done):  # a resume prepares its step again
            self.trace.append((self.steps_done, self.target, self.hard_ratio))
        self._logits_after_step = [gate.logits.detach().clone() for gate in self.net.gates.values()]

    @torch.no_grad()
    def _rank_metric(self, kind: str = "channels") -> str:
        """The cost a gate's importance is divided by, for channel gates or block gates (``kind``). A latency budget
        ranks channels per MACs by default: a table's marginal latency per channel spans two orders of magnitude
        between layers (at batch 1 a late layer's width costs almost nothing), so dividing gradients by it amplified
        their noise a hundredfold, and the search closed whole stages; ranked per MACs it keeps the MACs search's
        choices and spends the latency budget. A block gate is ranked per unit of the budget's own cost: a block's
        latency is a large, stable number, and it holds what per-MACs ranking cannot see, the fixed cost of a block
        that a few channels keep alive (its launches and its output-width traffic)."""
        rank = self.config.rank_cost
        if rank == "auto":
            return "macs" if self.config.metric == "latency" and kind == "channels" else self.config.metric
        return self.config.metric if rank == "budget" else rank

    def rank_costs(self) -> dict[str, float]:
        """{gate: its marginal cost over the mean marginal cost per gate}, each gate in its :meth:`_rank_metric`
        (so channel and block gates ranked in different metrics stay comparable, each relative to its own mean)."""
        relative: dict[str, dict[str, float]] = {}  # metric -> gate -> relative cost
        for metric in {self._rank_metric(kind) for kind in ("channels", "blocks")}:
            costs = self.net.marginal_costs(metric)
            sizes = {name: self.net.gate(name).size for name in costs}
            mean = sum(costs[n] * sizes[n] for n in costs) / max(1, sum(sizes.values()))
            relative[metric] = {n: (c / mean if mean > 0 else 1.0) for n, c in costs.items()}
        gates = next(iter(relative.values()))
        return {n: relative[self._rank_metric("blocks" if self.net.groups[n].kind == "block" else "channels")][n]
                for n in gates}

    def normalize_gate_gradients(self) -> None:
        """Scale each gate's gradient by (mean marginal cost) / (its marginal cost): the task loss's gradient then
        ranks gates by importance per unit of cost, the order in which a knapsack would drop them."""
        floor = 1e-2  # a group whose every consumer is closed costs ~0; its gradient is ~0 too
        for name, cost in self.rank_costs().items():
            grad = self.net.gate(name).logits.grad
            if grad is not None:
                grad.div_(max(cost, floor))

    def _set_prior(self) -> None:
        set_gamma_prior(self.net, self.config.prior_spread)

    def _set_taylor_prior(self) -> None:
        """At the end of warm-up: rank every channel gate over all groups at once by its saliency per unit of
        marginal cost (:func:`~dnas_prune.search.priors.set_taylor_prior`), then fix the channel order and hold
        the streams open from there."""
        self.prior_set = True
        missing = set_taylor_prior(self.net, self.saliency, self.rank_costs(), self.config.prior_spread)
        if missing:
            warnings.warn(f"no gate gradient reached {', '.join(missing)} during warm-up (call pruner.step() after "
                          "loss.backward() and before zero_grad); those gates keep their |BN gamma| prior",
                          stacklevel=3)
        self.saliency = {}
        if self.config.channel_order == "l1":
            self._fix_channel_order()
        self._keep_streams_open()

    @torch.no_grad()
    def _keep_streams_open(self) -> None:
        """Pin open the strongest gates of every gated stream, as many as its narrowest width (one channel, or
        one ``round_to`` step): a stream closed whole cuts the network in two. The offset alone can close every
        gate of a group, which for a block's inner group only removes the block; a search that closed a stream
        trained at chance until the projection, which keeps that width, put one channel back."""
        for name, info in self.net.groups.items():
            if not info.gated or info.kind != "stream":
                continue
            gate = self.net.gate(name)
            keep = math.ceil(min_width(self.net, name, self.config.round_to) / self.net.channels_per_gate_of(name))
            order = self.channel_order.get(name)  # ascending filter norm; else by the prior's logits
            if order is None:
                order = torch.argsort(gate.logits.detach().flatten().cpu(), stable=True)
            gate.forced.view(-1)[order[-keep:].to(gate.forced.device)] = 1

    def _fix_channel_order(self) -> None:
        """``channel_order="l1"``, once the prior is set: each group's channels stay in their filters' L1 order."""
        self.channel_order = l1_channel_order(self.net)
        hold_channel_order(self.net, self.channel_order)

    @torch.no_grad()
    def _hold_blocks_under_their_channels(self) -> None:
        """Cap each block gate's logit at the logit of the second channel step of each of its inner groups (their
        second-strongest), so a block is open only while two steps of every inner group are. A branch one step
        wide is a rank-one update that still pays most of a whole block's time (its launches and its
        output-width traffic): block gates start at the top of the ranking and channels are ranked per MACs, so
        without the cap a latency budget closed nearly every channel before such a block, and kept the block
        (experiments/results/thin_blocks.md). Only with ``close_thin_blocks`` (as ``net.budget`` records it for
        ``budget_state``)."""
        if self.net.budget.get("close_thin_blocks") is not True:  # False, or "projection": the projection does it
            return
        for block in self.net.blocks:
            if block.gate is None or not self.net.groups[block.gate].gated:
                continue
            caps = []
            for name in block.inner:
                if not self.net.groups[name].gated or not can_be_thin(self.net, name, self.config.round_to):
                    continue
                logits = self.net.gate(name).logits.detach().flatten()
                per_step = -(-channel_step(self.net, name, self.config.round_to) // self.net.channels_per_gate_of(name))
                if logits.numel() >= 2 * per_step:
                    caps.append(torch.topk(logits, 2 * per_step).values[-1])
            if caps:
                self.net.gate(block.gate).logits.clamp_(max=float(min(caps)))

    # ------------------------------------------------------------------ latency
    def _attach_latency(self, table: LatencyTable | None) -> None:
        """The latency model the budget is counted in: ``table`` or this device's, measured once and cached
        (search/latency/); a ms target becomes a fraction of the dense model, timed now."""
        cfg = self.config
        if table is None:  # with several processes rank 0 measures (or checks) the table, the others read its cache
            rank, world_size = process_rank()
            leader, distributed = rank == 0, world_size > 1
            if leader:
                table = latency_table(self.net.model, cfg.latency_batch_size, input_size=self.net.input_size,
                                      threads=cfg.latency_threads)
            if distributed:
                torch.distributed.barrier()
            if not leader:
                table = latency_table(self.net.model, cfg.latency_batch_size, input_size=self.net.input_size,
                                      threads=cfg.latency_threads, check=False)
        elif cfg.latency_threads not in (None, table.settings["threads"]):
            raise DnasPruneError(f"latency_threads {cfg.latency_threads} but the latency table given was measured at "
                                 f"{table.settings['threads']} threads: pass a table measured at "
                                 f"{cfg.latency_threads} (latency_table(..., threads={cfg.latency_threads})) or leave "
                                 "latency_threads unset")
        if (table.batch_size, table.settings["threads"]) != (cfg.latency_batch_size, cfg.latency_threads):
            # what the budget is measured at, as the table measured it (a given table's, or torch's threads)
            self.config = cfg = replace(cfg, latency_batch_size=table.batch_size,
                                        latency_threads=table.settings["threads"])
        self.net.latency = table.for_supernet(self.net)
        block = channel_block(table.settings["device"])
        if cfg.round_to is None and block:
            # whole blocks: at several threads a part-filled one costs what the threads' split of it makes it, which
            # moves between runs on a shared machine, so a landing's measurement would not hold (width_stability.md);
            # at one thread too, the channels a part-filled block pads are better spent elsewhere (latency_*.md).
            self.config = cfg = replace(cfg, round_to=math.lcm(block, cfg.channels_per_gate))
        if cfg.target_ms is not None:
            dense_ms = cfg.target_ms_dense or self._quiet_dense_ms(table)
            if cfg.target_ms >= dense_ms:
                raise DnasPruneError(f"the dense model already runs in {dense_ms:.3g} ms per batch of "
                                     f"{table.batch_size} here, within --target-latency-ms {cfg.target_ms:g}; "
                                     "choose a smaller target")
            self.config = cfg = replace(cfg, target=cfg.target_ms / dense_ms, target_ms_dense=dense_ms)
        check_target("latency", cfg.target)

    @staticmethod
    def _quiet_dense_ms(table: LatencyTable) -> float:
        """The dense model's ms per batch at its quickest of a few timings: a ms target is what the model runs in
        on a quiet machine, and the landing reads the dense model at its quickest too. With several processes
        rank 0 times it (the others would time theirs beside it, at once) and every rank takes its reading."""
        rank, world_size = process_rank()
        timed = torch.tensor([min(table.measure(table.dense_spec)["median_ms"] for _ in range(3)) if rank == 0
                              else 0.0], dtype=torch.float64)
        if world_size > 1:
            torch.distributed.broadcast(timed, src=0)
        return float(timed)

    def hard_ratios_now(self) -> dict[str, float]:
        """The cost ratios of the decisions the supernet holds now (pins included), every metric it counts."""
        return cost_ratios(self.net, *self.net.counts_and_blocks(hard=True))

    # ------------------------------------------------------------------ the end
    def project(self, log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Pin a hard state within ±1 % of the target; returns the cost ratio before and after. A latency budget
        then lands on the device's measurement (``measured``: each try's predicted and measured ratio, the one
        finalized marked ``pinned``; ``landing_window``: the window it aimed at, relative to the target), telling
        ``log`` (e.g. ``print``) each timing."""
        cfg = self.config
        before = self.hard_ratios_now()[cfg.metric]
        measured = None
        if cfg.metric == "latency":
            measured = Landing(self.net, cfg.target, cfg.target_ms, cfg.latency_tolerance, cfg.latency_landing_seconds,
                               cfg.round_to).run(log)
        else:
            project_to_budget(self.net, cfg.metric, cfg.target, cfg.round_to)
        self.hard_ratios = self.hard_ratios_now()
        self.hard_ratio = after = self.hard_ratios[cfg.metric]
        far = far_from_target(cfg.metric, after, cfg.target, f"one channel step (round_to={cfg.round_to}) or one block")
        if measured is None and far:
            warnings.warn(far, stacklevel=2)
        result: dict[str, Any] = {"before": before, "after": after, "moved": after - before}
        if measured is not None:
            result["measured"] = measured  # the try finalized has "pinned"
            result["landing_window"] = [-self.config.latency_tolerance, 0.0]  # relative to the target
        return result

    def release(self) -> None:
        """Search on after :meth:`project` or :meth:`finalize`: every pin is undone (the streams' narrowest widths
        are pinned open again), the net is back in training mode and the next step's schedule is set."""
        self.net.release_gates()
        if self.prior_set:
            self._keep_streams_open()
        self.net.train()
        self._prepare()

    def finalize(self, calibration_batches: Iterable[Any] | None = None,
                 autocast: Callable[[], ContextManager] | ContextManager = nullcontext,
                 log: Callable[[str], None] | None = None) -> nn.Module:
        """Project onto the budget, refit BN statistics on ``calibration_batches`` (training images, as tensors or
        ``(x, y)`` pairs; recommended), and return the plain pruned model. The supernet is left pinned. ``log``:
        see :meth:`project`."""
        as_context_factory(autocast)  # a wrong argument fails here, before the gates are pinned
        if self.steps_done < self.total_steps:
            said = (f"the target had only descended to {self.target:.3f}, and the projection makes the rest of the "
                    f"jump to {self.config.target:g} untrained" if self.target > self.config.target + 1e-9 else
                    "the target had arrived, but the search stopped short of the schedule it planned")
            warnings.warn(f"finalize after {self.steps_done} of total_steps={self.total_steps} steps: {said}; pass "
                          "the real number of steps", stacklevel=2)
        self.projection = self.project(log)
        if calibration_batches is not None:
            refit_bn(self.net, calibration_batches, autocast)
        self.net.eval()
        return fold(self.net)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The search's own state: the gates and their schedule (also in ``net.state_dict()``), the gate optimizer
        and the step count, so this with the wrapped model's ``state_dict()`` resumes a search."""
        gates = {k: v.clone() for k, v in self.net.state_dict().items() if not k.startswith("model.")}
        return {"budget": self._budget(), "total_steps": self.total_steps, "gates": gates,
                "gate_optimizer": self.gate_optimizer.state_dict(), "steps_done": self.steps_done,
                "trace": list(self.trace), "max_deviation": self.max_deviation,
                "saliency": {k: v.clone() for k, v in self.saliency.items()}, "prior_set": self.prior_set,
                "channel_order": {k: v.clone() for k, v in self.channel_order.items()}}

    def _budget(self) -> dict[str, Any]:
        """The budget as a resumed state must match it (a ms target is compared in ms: the fraction it gives
        follows a timing of the dense model)."""
        cfg = self.config
        return {"metric": cfg.metric, **({"target_ms": cfg.target_ms} if cfg.target_ms is not None
                                         else {"target": cfg.target})}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: refused if it was saved under another budget; a different
        ``total_steps`` rescales the rest of the ramp, with a warning."""
        if not isinstance(state, dict) or "gate_optimizer" not in state or "steps_done" not in state:
            raise DnasPruneError("Pruner.load_state_dict: not a state of Pruner.state_dict() (no gate_optimizer and "
                                 "steps_done)")
        saved = state.get("budget")
        if saved is not None and saved != self._budget():
            raise DnasPruneError(f"Pruner.load_state_dict: the state was saved with the budget {saved}, this Pruner has "
                                 f"{self._budget()}; resume with the same budget")
        if state.get("total_steps", self.total_steps) != self.total_steps:
            warnings.warn(f"Pruner.load_state_dict: the state was saved with total_steps={state['total_steps']}, this "
                          f"Pruner has {self.total_steps}: the rest of the budget's ramp follows the new length",
                          stacklevel=2)
        if "gates" in state:  # states before it left them to net.state_dict()
            try:
                unexpected = self.net.load_state_dict(state["gates"], strict=False).unexpected_keys
            except RuntimeError:  # another size of the same gate
                unexpected = ["gates of other sizes"]
            if unexpected or any(k.startswith("model.") for k in state["gates"]):
                raise DnasPruneError("Pruner.load_state_dict: the state's gates are not this supernet's "
                                     f"({', '.join(unexpected[:3]) or 'model weights among them'}); resume the same model")
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.steps_done = int(state["steps_done"])
        self.trace = [tuple(t) for t in state["trace"]]
        self.saliency = {name: value.to(self.net.gate(name).logits.device)
                         for name, value in state.get("saliency", {}).items()}
        self.prior_set = bool(state.get("prior_set", self.config.prior != "taylor"))
        if "channel_order" in state:  # fixed when the prior was set, from the filters of that moment
            self.channel_order = {k: v.clone().cpu() for k, v in state["channel_order"].items()}
        self._prepare()
        # the saved value already holds this step's deviation; a _prepare on logits not loaded yet (the net's state
        # loaded after this one) must not add its own
        self.max_deviation = float(state["max_deviation"])

    def summary(self) -> dict[str, Any]:
        """What search.json records of the steering."""
        return {"max_rel_deviation_after_warmup": self.max_deviation, "trace_every": self.trace_every,
                "trace": [{"step": s, "target": t, "hard_ratio": h} for s, t, h in self.trace]}


def expected_ratios(net: Supernet) -> dict[str, float]:
    """The cost ratios expected under the gate probabilities (what a soft relaxation would pay)."""
    with torch.no_grad():
        expected = net.expected_cost()
        ratios = {"macs": float(expected["macs"]) / net.dense_cost.macs,
                  "params": float(expected["params"]) / net.dense_cost.params}
        if net.latency is not None:
            ratios["latency"] = float(net.latency.expected_ms()) / net.dense_metric("latency")
    return ratios


