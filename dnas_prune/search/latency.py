"""A latency model of the device: per-layer lookup tables over the widths the search can reach (issue 28).

What is measured. A ResNet is cut into *units*, each timed alone on the device, with the batch size, threads,
dtype and memory format the table is for:

- every conv together with its BN and, where the network has one right after it, its ReLU (the stem's also
  with the max-pool of torchvision ResNets), keyed by kernel, stride, padding and input spatial size;
- every residual add and every block-output ReLU, keyed by spatial size (these scale with the stream width);
- the average pool + fc, keyed by the final spatial size.

Each distinct unit (a *layer-shape key*) gets a 2-D grid of medians over (in channels, out channels): ``1`` and
every multiple of the channel step up to about ``points`` of them, thinned above that with quadratic spacing (so
denser at small widths), plus every full width that uses the key and every fixed width (the 3 image channels, the
classes), so the dense model falls on the grid. Units with a single width (add, ReLU) have a one-point out axis.

Why a grid and bilinear interpolation: the smooth part of a conv's time, ``a + b * cin * cout``, is bilinear, so
interpolation reproduces it exactly between grid points. What is not smooth is strongest at small widths, where
the grid holds every multiple of the step: narrow widths run slower per MAC, some hit slower kernels, and SIMD
blocking rounds a width up to the next block, so a conv with 17 output channels can run as slowly as one with 32.
Interpolation would read such a width cheaper than it runs, and a search that reaches any width (one channel per
gate, the default) lands on such widths. So the build also times, per layer shape and axis, two cells one channel
past a grid point, and marks the axis *padded* when they read closer to the next grid point's time than to the
interpolation (:func:`axis_pads`): the device, not an assumed block size, decides, per layer shape (out widths
pad in oneDNN's blocked convs, in widths mostly do not). A padded axis reads a width at the next grid point, or
at the next multiple of the step where the grid is sparser (:func:`padded_width`); the gradient keeps the smooth
slope (straight-through), which is what the search needs: a cost it can differentiate. The interpolation is
written in torch ops, so the predicted latency is differentiable in the widths when they are tensors (the
search's expected channel counts), as ``Supernet.cost_from_counts`` is. Widths outside a key's grid are clamped to
it. The grid values are the measured medians, not smoothed or made monotone: a wider layer that really runs
faster stays so.

Why every timing is paired: a shared CPU's speed drifts by tens of percent within seconds, so two timings taken
a minute apart do not compare. Each grid cell is timed with its forwards interleaved with those of one fixed
reference unit (the most used layer shape at mid-grid); the cell's value is the median over rounds of its time
over the reference's in the same round, times the reference's median over the whole build. Whole models are
timed the same way beside the dense model (:meth:`LatencyTable.measure_beside_dense`). The table is then
consistent within itself, whatever the machine did while it was built; what remains is the machine's speed of
the moment, which a ratio to the dense model timed side by side (what ``--target-latency`` reads) cancels and
milliseconds (``--target-latency-ms``) cannot.

Why one constant and one scale on top: the units alone do not see what the whole forward adds (the model's and
the blocks' Python calls, flatten) nor that in a real forward a layer's weights are not warm in cache from the
previous repeat. So whole models are measured too: the dense model and sixteen shrunk ones (random finalized
architectures at evenly spaced keep levels, seeded), and ``measured = constant + scale * sum(units)`` is fitted
through the dense model's point exactly (a budget is a fraction of the dense model, so the dense model must read
right: a fit free to miss it by 15 % skewed every predicted fraction by as much) and by least squares on the
others' relative error (the error the budget feels). Two numbers, fitted on models spanning the latency range the
search moves through, keep the per-layer structure while anchoring the total to what the device measures; a scale
that is not positive is refused and the fit falls back to a constant offset alone. ``experiments/latency_model.py``
checks the result on random architectures the fit did not see.

Expected latency under gate probabilities is taken at the expected widths (``L(E[w])``) with each term of a
residual branch weighted by P(branch open), as the MACs are. For MACs, bilinear in the widths, that is the exact
expectation under independent gates; for latency it is an approximation. Hard decisions give whole widths, where
the prediction is the table's for the finalized model, so the budget's offset solve, which works on hard costs,
is not affected by it.

Cache. A table is built once per (parent spec, input size, batch size, threads, dtype, memory format, device,
torch version, grid step and size, allocator state) and kept as JSON in ``$DNAS_PRUNE_CACHE`` (else the user cache
directory the data loader uses), written atomically. ``memory_format="auto"`` is resolved once at build time by
timing the dense model in both layouts; the table records the layout it measured in and every later measurement
(:meth:`LatencyTable.measure`) uses it. Every timing runs with glibc keeping freed memory
(:mod:`dnas_prune.device.allocator`): without it, whether a batch-64 forward page-faults its activations afresh
depends on what the process ran before, and a table measured in one state did not describe the other. The key
names the device, not its state, so before a new search trusts a cached table, two shrunk models are timed beside
the dense one (:func:`stale_error`); a table more than ``STALE_ERROR`` off their ratios is measured again. A
resumed search keeps the table it started with.

CUDA: on a ``cuda`` device every forward is timed between two ``torch.cuda.synchronize()`` calls (wall clock
of the forward, launch overhead included). This path is written but untested here: the project's machines have
no GPU. The CPU path times through :func:`dnas_prune.device.timing.measure_latency`, as ``profile`` does.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..device.allocator import keep_freed_memory
from ..device.policy import (MEMORY_FORMAT_CHOICES, MEMORY_FORMATS, PRECISIONS, memory_format_name,
                             resolve_precision, using_threads)
from ..device.timing import (Runner, compare_latency, measure_latency, noise_warning, paired_ratio,
                             time_interleaved)
from ..errors import DnasPruneError
from ..io.checkpoint import atomic_write_json, cache_dir
from ..io.pruned import default_input_size
from ..models import MODEL_NAMES, build_model, create_model, spec_of, validate_spec
from ..models.spec import Spec, block_kind, family_of
from ..train.progress import Progress

if TYPE_CHECKING:
    from .supernet import Supernet

TABLE_FORMAT = 5  # 2: constant and scale fitted on 16 shrunk models; 3: cells and models timed beside a reference;
# 4: outlier cells timed again; 5: padded axes measured
DEFAULT_CHANNEL_STEP = 8
DEFAULT_POINTS = 10
# shrunk models measured beside the dense one to fit the constant and scale: keep 0.15, 0.20, ..., 0.90
FIT_KEEP_LEVELS = tuple(round(0.15 + 0.05 * i, 2) for i in range(16))
FIT_SEED = 0
# a grid cell over OUTLIER_FACTOR times all its neighbours is timed OUTLIER_RETIMES more times, keeping the fastest
OUTLIER_FACTOR, OUTLIER_RETIMES = 1.4, 2
# cells timed per axis of each layer shape, off the grid, to tell whether the device pads that width
PAD_PROBES = 2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# a cached table is checked before it is trusted: shrunk models at these keep levels, timed beside the dense one now,
# must read their ratios within STALE_ERROR of the table's, or the table is measured again
STALE_PROBE_LEVELS, STALE_ERROR = (0.3, 0.6), 0.15


@dataclass(frozen=True)
class Timing:
    """How long to time things: per grid cell and per whole model (medians of ``repeats``, at most ~``seconds``)."""

    cell_warmup: int = 3
    cell_repeats: int = 25
    cell_seconds: float = 0.25
    model_warmup: int = 10
    model_repeats: int = 50
    model_seconds: float = 2.0


# --------------------------------------------------------------------------------------------- layer shapes
def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _out_hw(hw: Sequence[int], kernel: Any, stride: Any, padding: Any) -> tuple[int, int]:
    k, s, p = _pair(kernel), _pair(stride), _pair(padding)
    return tuple((h + 2 * p[i] - k[i]) // s[i] + 1 for i, h in enumerate(hw))  # type: ignore[return-value]


def _size(pair: Sequence[int], sep: str = "x") -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}{sep}{pair[1]}"


def unit_key(unit: dict[str, Any]) -> str:
    """The layer-shape key of a unit, e.g. ``conv3x3/s1/p1/32x32+bn+relu``, ``add/16x16``, ``avgpool+fc/8x8``."""
    hw = f"{unit['hw'][0]}x{unit['hw'][1]}"
    op = unit["op"]
    if op == "conv":
        k = unit["kernel"]
        key = f"conv{k[0]}x{k[1]}/s{_size(unit['stride'])}/p{_size(unit['padding'])}/{hw}+bn"
        if unit["relu"]:
            key += "+relu"
        if unit["maxpool"]:
            mp = unit["maxpool"]
            key += f"+maxpool{_size(mp['kernel'])}/s{_size(mp['stride'])}/p{_size(mp['padding'])}"
        return key
    if op in ("add", "relu"):
        return f"{op}/{hw}"
    if op == "pool_fc":
        return f"avgpool+fc/{hw}" + ("" if unit["bias"] else "-nobias")
    raise DnasPruneError(f"unknown unit op {op!r}")


@dataclass(frozen=True)
class LayerUse:
    """One place in a network where a unit runs.

    ``src``/``dst`` say which width feeds the unit's in/out axis: ``input`` (the image channels) and ``classes``
    are fixed; ``stem`` (conv1's output), ``in``/``out`` (the block's input and output stream), ``inner0``/
    ``inner1`` (a block's inner widths) and ``final`` (the stream into the fc) are channel groups of a supernet;
    ``none`` is the one-point axis of a single-width unit. ``block``: the residual branch whose removal removes
    this use (None: it stays). ``macs_coef``: MACs per (in channel, out channel) pair (0 for elementwise units).
    """

    name: str
    key: str
    unit: dict[str, Any]
    cin: int
    cout: int
    src: str
    dst: str
    block: str | None
    macs_coef: int


def _conv_unit(conv: nn.Module, hw: Sequence[int], relu: bool, maxpool: nn.Module | None = None) -> dict[str, Any]:
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or _pair(conv.dilation) != (1, 1) \
            or isinstance(conv.padding, str):
        raise DnasPruneError(f"{conv}: only plain (ungrouped, undilated, numerically padded) convs are supported")
    pool = None
    if maxpool is not None:
        pool = {"kernel": list(_pair(maxpool.kernel_size)), "stride": list(_pair(maxpool.stride)),
                "padding": list(_pair(maxpool.padding))}
    return {"op": "conv", "kernel": list(_pair(conv.kernel_size)), "stride": list(_pair(conv.stride)),
            "padding": list(_pair(conv.padding)), "hw": list(hw), "relu": relu, "maxpool": pool}


def layer_uses(model: nn.Module, input_size: Sequence[int]) -> list[LayerUse]:
    """Every unit a CIFAR or torchvision ResNet runs, in forward order (works on ``meta`` models)."""
    family = family_of(model)
    uses: list[LayerUse] = []

    def add(name: str, unit: dict, cin: int, cout: int, src: str, dst: str, block: str | None, macs: int) -> None:
        uses.append(LayerUse(name, unit_key(unit), unit, int(cin), int(cout), src, dst, block, int(macs)))

    def conv(name: str, module: nn.Conv2d, hw: tuple[int, int], relu: bool, src: str, dst: str,
             block: str | None, maxpool: nn.Module | None = None) -> tuple[int, int]:
        out = _out_hw(hw, module.kernel_size, module.stride, module.padding)
        if min(out) < 1:
            raise DnasPruneError(f"input size {'x'.join(map(str, input_size))} is too small: {name} would output "
                                 f"{out[0]}x{out[1]}")
        k = _pair(module.kernel_size)
        add(name, _conv_unit(module, hw, relu, maxpool), module.in_channels, module.out_channels, src, dst, block,
            k[0] * k[1] * out[0] * out[1])
        return out

    hw = (int(input_size[1]), int(input_size[2]))
    maxpool = model.maxpool if family == "torchvision" else None
    hw = conv("conv1", model.conv1, hw, True, "input", "stem", None, maxpool)
    if maxpool is not None:
        hw = _out_hw(hw, maxpool.kernel_size, maxpool.stride, maxpool.padding)
    s = 1
    while isinstance(getattr(model, f"layer{s}", None), nn.Sequential):
        for j, block in enumerate(getattr(model, f"layer{s}")):
            name = f"layer{s}.{j}"
            kind = block_kind(block, name)
            out_hw = hw
            if block.downsample is not None:
                out_hw = conv(f"{name}.downsample.0", block.downsample[0], hw, False, "in", "out", None)
            if kind == "projection":
                width = block.downsample[0].out_channels
                add(f"{name}.relu", {"op": "relu", "hw": list(out_hw)}, width, 1, "out", "none", None, 0)
                hw = out_hw
                continue
            names = ["conv1", "conv2"] if kind == "basic" else ["conv1", "conv2", "conv3"]
            roles = ["in", "inner0", "out"] if kind == "basic" else ["in", "inner0", "inner1", "out"]
            branch_hw = hw
            for c, conv_name in enumerate(names):
                last = c == len(names) - 1
                branch_hw = conv(f"{name}.{conv_name}", getattr(block, conv_name), branch_hw, not last,
                                 roles[c], roles[c + 1], name)
            width = getattr(block, names[-1]).out_channels
            add(f"{name}.add", {"op": "add", "hw": list(branch_hw)}, width, 1, "out", "none", name, 0)
            # the block's output ReLU stays when only a projection remains, so it goes with the block only without one
            add(f"{name}.relu", {"op": "relu", "hw": list(branch_hw)}, width, 1, "out", "none",
                None if block.downsample is not None else name, 0)
            hw = branch_hw
        s += 1
    fc = model.fc
    add("fc", {"op": "pool_fc", "hw": list(hw), "bias": fc.bias is not None}, fc.in_features, fc.out_features,
        "final", "classes", None, 1)
    return uses


def spec_uses(spec: Spec, input_size: Sequence[int]) -> list[LayerUse]:
    """:func:`layer_uses` of the model a spec describes (built on the meta device: nothing allocated)."""
    return layer_uses(build_model(spec, device="meta"), input_size)


def grid_axis(full: int, step: int, points: int) -> list[int]:
    """Widths at which a layer is measured: ``1`` and multiples of ``step`` up to ``full`` (of a finer divisor of
    ``step`` when the step leaves fewer than about half of ``points``), thinned to about ``points`` with quadratic
    spacing, so denser at small widths."""
    if full <= 1:
        return [max(1, full)]
    spacing = step
    while spacing > 1 and full // spacing + 1 < max(2, points // 2 + 1):
        spacing //= 2
    candidates = sorted({1, full, *range(spacing, full + 1, spacing)})
    if len(candidates) <= points:
        return candidates
    if points <= 2:
        return [1, full]
    low = candidates[1]
    chosen = {1, full}
    for i in range(points - 1):
        target = low + (full - low) * (i / (points - 2)) ** 2
        chosen.add(min(candidates, key=lambda c: (abs(c - target), c)))
    return sorted(chosen)


_FIXED_ROLES = {"input", "classes", "none"}


def plan_layers(uses: Sequence[LayerUse], channel_step: int, points: int) -> dict[str, dict[str, Any]]:
    """{layer-shape key: {"unit", "in", "out", "uses"}}: the grid each key is measured on."""
    plan: dict[str, dict[str, Any]] = {}
    fulls: dict[tuple[str, str], set[int]] = {}
    for use in uses:
        entry = plan.setdefault(use.key, {"unit": use.unit, "in": set(), "out": set(), "uses": []})
        entry["uses"].append(use.name)
        for axis, role, width in (("in", use.src, use.cin), ("out", use.dst, use.cout)):
            entry[axis].add(width)  # fixed widths and every use's full width are grid points
            if role not in _FIXED_ROLES:
                fulls.setdefault((use.key, axis), set()).add(width)
    for (key, axis), widths in fulls.items():  # one grid per key: its widest use's, plus the other full widths
        plan[key][axis].update(grid_axis(max(widths), channel_step, points))
    for entry in plan.values():
        for axis in ("in", "out"):
            entry[axis] = sorted(entry[axis])
    return plan


# --------------------------------------------------------------------------------------------- interpolation
def _bracket(axis: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(weight of the upper neighbour, lower index, upper index) of ``x`` on ``axis``, ``x`` clamped to it."""
    if axis.numel() == 1:
        zero = torch.zeros(x.shape, dtype=torch.long, device=x.device)
        return torch.zeros_like(x, dtype=axis.dtype), zero, zero
    x = x.to(axis.dtype).clamp(axis[0], axis[-1])
    low = (torch.searchsorted(axis, x.detach().contiguous(), right=True) - 1).clamp(0, axis.numel() - 2)
    t = (x - axis[low]) / (axis[low + 1] - axis[low])
    return t, low, low + 1


def padded_width(axis: Tensor, x: Tensor, step: int) -> Tensor:
    """``x`` rounded up to the width the device computes: the next grid point, or the next multiple of ``step``
    where the grid is sparser than that; a grid point stays. Straight-through: the value is the rounded width,
    the gradient the width's own, so the search keeps the smooth slope between grid points."""
    x = x.to(axis.dtype)
    nxt = axis[torch.searchsorted(axis, x.detach().contiguous() - 1e-6).clamp_max(axis.numel() - 1)]
    up = torch.minimum(nxt, torch.ceil(x.detach() / step - 1e-6) * step).clamp_min(x.detach())
    return x + (up - x.detach())


class LayerTable:
    """Measured median milliseconds of one layer-shape key over an (in width, out width) grid.

    ``pads`` says, per axis (in, out), whether the device rounds that width up (SIMD blocking of the channels):
    then a width between grid points costs what the next grid point costs (:func:`padded_width`), not the
    interpolation, which would read it cheaper than it runs. Measured per key when the table is built."""

    def __init__(self, unit: dict[str, Any], in_axis: Sequence[float], out_axis: Sequence[float],
                 ms: Sequence[Sequence[float]], uses: Sequence[str] = (), step: int = 1,
                 pads: Sequence[bool] = (False, False)) -> None:
        self.unit = unit
        self.uses = list(uses)
        self.in_axis = torch.tensor([float(v) for v in in_axis], dtype=torch.float64)
        self.out_axis = torch.tensor([float(v) for v in out_axis], dtype=torch.float64)
        self.ms = torch.tensor(ms, dtype=torch.float64).reshape(len(in_axis), len(out_axis))
        self.step = int(step)
        self.pads = (bool(pads[0]), bool(pads[1]))
        if (self.in_axis.diff() <= 0).any() or (self.out_axis.diff() <= 0).any():
            raise DnasPruneError(f"{unit_key(unit)}: grid axes must be strictly increasing")

    def __call__(self, cin: Tensor | float, cout: Tensor | float) -> Tensor:
        """Bilinear interpolation at (``cin``, ``cout``) (tensors of one shape, or numbers), each width first
        rounded up where the axis pads; differentiable."""
        cin = torch.as_tensor(cin, dtype=torch.float64)
        cout = torch.as_tensor(cout, dtype=torch.float64)
        cin, cout = torch.broadcast_tensors(cin, cout)
        if self.pads[0]:
            cin = padded_width(self.in_axis, cin, self.step)
        if self.pads[1]:
            cout = padded_width(self.out_axis, cout, self.step)
        ti, i0, i1 = _bracket(self.in_axis, cin)
        to, o0, o1 = _bracket(self.out_axis, cout)
        g = self.ms
        return ((1 - ti) * (1 - to) * g[i0, o0] + ti * (1 - to) * g[i1, o0]
                + (1 - ti) * to * g[i0, o1] + ti * to * g[i1, o1])

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "in": [_num(v) for v in self.in_axis.tolist()],
                "out": [_num(v) for v in self.out_axis.tolist()], "ms": self.ms.tolist(), "uses": self.uses,
                "step": self.step, "pads": list(self.pads)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerTable":
        return cls(data["unit"], data["in"], data["out"], data["ms"], data.get("uses", ()), data.get("step", 1),
                   data.get("pads", (False, False)))


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


# --------------------------------------------------------------------------------------------- supernet terms
@dataclass(frozen=True)
class LatencyTerm:
    """One unit of a supernet: ``cin``/``cout`` name a channel group (``Supernet.channel_groups``) or are a fixed
    width; ``block`` names the residual branch (``Supernet.branch_blocks``) whose factor multiplies it."""

    name: str
    key: str
    cin: str | int
    cout: str | int
    block: str | None
    macs_coef: int


class LatencyTerms:
    """A supernet's units as index tensors, the way ``Supernet.cost_from_counts`` holds its MACs terms.

    ``in_idx``/``out_idx`` index ``widths = cat(counts, constants)``: below ``len(channel_groups)`` a channel group
    (the same order as ``counts``), from there on ``constants`` (fixed widths: image channels, classes, and 1 for the
    one-point axis of an add or ReLU). ``blk_idx`` indexes ``cat(blocks * alive, [1])``: a branch in
    ``branch_blocks`` order, or the last entry (always 1) for a unit that stays. ``alive`` zeroes a branch whose
    inner group is empty, as ``cost_from_counts`` does (finalization removes such a block).
    """

    def __init__(self, terms: Sequence[LatencyTerm], channel_groups: Sequence[str], branch_blocks: Sequence[str],
                 branch_inner: Tensor) -> None:
        self.terms = list(terms)
        self.channel_groups = list(channel_groups)
        self.branch_blocks = list(branch_blocks)
        self.branch_inner = branch_inner.clone()
        gidx = {g: i for i, g in enumerate(self.channel_groups)}
        bidx = {b: i for i, b in enumerate(self.branch_blocks)}
        fixed = sorted({w for t in self.terms for w in (t.cin, t.cout) if not isinstance(w, str)})
        n = len(self.channel_groups)
        index = {**gidx, **{w: n + i for i, w in enumerate(fixed)}}
        self.constants = torch.tensor(fixed, dtype=torch.float64)
        self.in_idx = torch.tensor([index[t.cin] for t in self.terms], dtype=torch.long)
        self.out_idx = torch.tensor([index[t.cout] for t in self.terms], dtype=torch.long)
        self.blk_idx = torch.tensor([len(self.branch_blocks) if t.block is None else bidx[t.block]
                                     for t in self.terms], dtype=torch.long)
        self.macs_coef = torch.tensor([t.macs_coef for t in self.terms], dtype=torch.float64)
        by_key: dict[str, list[int]] = {}
        for i, t in enumerate(self.terms):
            by_key.setdefault(t.key, []).append(i)
        self.by_key = {k: torch.tensor(v, dtype=torch.long) for k, v in by_key.items()}

    @property
    def keys(self) -> list[str]:
        return list(self.by_key)

    def widths_and_factors(self, counts: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per term: (in width, out width, block factor), differentiable in ``counts`` and ``blocks``."""
        counts = counts.to(torch.float64)
        widths = torch.cat([counts, self.constants.to(counts.device)])
        ones = torch.cat([counts, counts.new_ones(1)])
        alive = (ones[self.branch_inner.to(counts.device)] > 0).all(dim=1).to(torch.float64)
        factors = torch.cat([blocks.to(torch.float64).to(counts.device) * alive, counts.new_ones(1)])
        return widths[self.in_idx], widths[self.out_idx], factors[self.blk_idx]

    def macs(self, counts: Tensor, blocks: Tensor) -> Tensor:
        """MACs of the units' convs and fc: equals ``Supernet.cost_from_counts(counts, blocks)[0]`` when the
        mapping is right (the test of this mapping)."""
        win, wout, factor = self.widths_and_factors(counts, blocks)
        return (self.macs_coef * win * wout * factor).sum()


_ROLE_OF_GROUP = {"in": "in_group", "out": "out_group"}


def supernet_terms(net: "Supernet") -> LatencyTerms:
    """The latency terms of a supernet: each unit of :func:`layer_uses` of ``net.model``, its in/out width resolved
    to the supernet's channel group (or a fixed width) and its residual branch to ``net.branch_blocks``."""
    blocks = {info.name: info for info in net.blocks}
    terms = []
    for use in layer_uses(net.model, net.input_size):
        info = blocks[".".join(use.name.split(".")[:2])] if use.name.startswith("layer") else None

        def resolve(role: str, width: int) -> str | int:
            if role in _FIXED_ROLES:
                return width
            if role == "stem":
                return net.stem_group
            if role == "final":
                return net.final_group
            if role in _ROLE_OF_GROUP:
                return getattr(info, _ROLE_OF_GROUP[role])
            return info.inner[int(role.removeprefix("inner"))]

        block = use.block if use.block in net.branch_blocks else None
        terms.append(LatencyTerm(use.name, use.key, resolve(use.src, use.cin), resolve(use.dst, use.cout), block,
                                 use.macs_coef))
    return LatencyTerms(terms, net.channel_groups, net.branch_blocks, net.branch_inner)


# --------------------------------------------------------------------------------------------- random architectures
def random_spec(spec: Spec, rng: random.Random, channel_step: int, keep: float | None = None,
                remove: float | None = None) -> Spec:
    """A random finalized architecture of the dense ``spec``.

    ``keep`` (default: uniform in [0.15, 1]) sets the overall level: every stream and inner width is ``keep`` times
    its full width, jittered by a factor uniform in [0.6, 1.4], rounded to a multiple of ``channel_step`` (at least
    one step; widths at or below the step stay full). Each block is removed with probability ``remove`` (default
    ``0.5 * (1 - keep)``): an identity block disappears, a block with a projection keeps only its projection.
    Streams joined by identity shortcuts keep one width, as a supernet's stream group does.
    """
    keep = rng.uniform(0.15, 1.0) if keep is None else keep
    remove = 0.5 * (1.0 - keep) if remove is None else remove

    def width(full: int) -> int:
        if full <= channel_step:
            return full
        w = round(full * min(1.0, keep * rng.uniform(0.6, 1.4)) / channel_step) * channel_step
        return max(channel_step, min(full, w))

    out = copy.deepcopy(spec)
    out["stem"] = stream = width(spec["stem"])
    for stage in out["stages"]:
        if stage["blocks"] and stage["blocks"][0]["downsample"]:
            stage["width"] = width(stage["width"])
        else:
            stage["width"] = stream
        blocks = []
        for block in stage["blocks"]:
            if rng.random() < remove:
                if block["downsample"]:
                    blocks.append({"inner": None, "downsample": True})
                continue
            inner = None if block["inner"] is None else [width(w) for w in block["inner"]]
            blocks.append({"inner": inner, "downsample": block["downsample"]})
        stage["blocks"] = blocks
        stream = stage["width"]
    return validate_spec(out)


# --------------------------------------------------------------------------------------------- timing
def _cell_module(unit: dict[str, Any], cin: int, cout: int, batch_size: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """The module timed for one grid cell and its input size (C, H, W)."""
    h, w = unit["hw"]
    if unit["op"] == "conv":
        return _ConvUnit(unit, cin, cout), (cin, h, w)
    if unit["op"] == "add":
        return _AddUnit(batch_size, cin, h, w), (cin, h, w)
    if unit["op"] == "relu":
        return nn.ReLU(inplace=True), (cin, h, w)
    return _PoolFcUnit(cin, cout, unit["bias"]), (cin, h, w)


class _ConvUnit(nn.Module):
    """conv -> BN (-> ReLU) (-> max-pool), called through submodules as a block calls them."""

    def __init__(self, unit: dict[str, Any], cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, tuple(unit["kernel"]), tuple(unit["stride"]), tuple(unit["padding"]),
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True) if unit["relu"] else None
        mp = unit["maxpool"]
        self.pool = nn.MaxPool2d(tuple(mp["kernel"]), tuple(mp["stride"]), tuple(mp["padding"])) if mp else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        if self.relu is not None:
            x = self.relu(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class _AddUnit(nn.Module):
    """``x + other``; the other operand is a parameter so the timer converts its dtype and memory format."""

    def __init__(self, batch_size: int, channels: int, h: int, w: int) -> None:
        super().__init__()
        self.other = nn.Parameter(torch.randn(batch_size, channels, h, w), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.other


class _PoolFcUnit(nn.Module):
    def __init__(self, cin: int, cout: int, bias: bool) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, cout, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _time_cuda(module: nn.Module, input_size: Sequence[int], batch_size: int, dtype: torch.dtype,
               memory_format: str, warmup: int, repeats: int, max_seconds: float) -> dict[str, Any]:
    """Median and p90 ms of one forward on the GPU, each timed between two ``torch.cuda.synchronize()`` calls
    (untested here: no GPU on the project's machines)."""
    fmt = MEMORY_FORMATS[memory_format]
    module = copy.deepcopy(module).eval().to(device="cuda", dtype=dtype, memory_format=fmt)
    x = torch.randn(batch_size, *input_size, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        deadline = time.perf_counter() + max_seconds
        while len(times) < 3 or (len(times) < repeats and time.perf_counter() < deadline):
            torch.cuda.synchronize()
            start = time.perf_counter()
            module(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    median, p90 = statistics.median(times), sorted(times)[int(0.9 * (len(times) - 1))]
    return {"median_ms": median, "p90_ms": p90, "repeats": len(times), "warning": noise_warning(median, p90)}


class _Timer:
    """Timing of a module's forward with fixed settings (device, threads, dtype, memory format, batch): a dict
    with ``median_ms``, ``p90_ms`` and ``warning`` (set when the p90 says the machine was busy)."""

    def __init__(self, device: str, batch_size: int, threads: int, dtype: torch.dtype, memory_format: str) -> None:
        self.device, self.batch_size, self.threads = device, batch_size, threads
        self.dtype, self.memory_format = dtype, memory_format

    def __call__(self, module: nn.Module, input_size: Sequence[int], warmup: int, repeats: int,
                 max_seconds: float, memory_format: str | None = None) -> dict[str, Any]:
        fmt = memory_format or self.memory_format
        if self.device == "cuda":
            return _time_cuda(module, input_size, self.batch_size, self.dtype, fmt, warmup, repeats, max_seconds)
        return measure_latency(module, tuple(input_size), self.batch_size, warmup=warmup, repeats=repeats,
                               threads=self.threads, memory_format=fmt, dtype=self.dtype, max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------- the table
class LatencyTable:
    """Per-layer latency grids of one parent on one device setting, plus the fitted constant and scale.

    ``predict_ms(spec)`` predicts a finalized model; :meth:`for_supernet` gives the search's differentiable cost.
    """

    def __init__(self, settings: dict[str, Any], layers: dict[str, LayerTable], constant_ms: float = 0.0,
                 scale: float = 1.0, info: dict[str, Any] | None = None, path: Path | None = None) -> None:
        self.settings = dict(settings)
        self.layers = dict(layers)
        self.constant_ms = float(constant_ms)
        self.scale = float(scale)
        self.info = dict(info or {})
        self.path = path

    # ---- what it is for
    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.settings["input_size"])  # type: ignore[return-value]

    @property
    def batch_size(self) -> int:
        return int(self.settings["batch_size"])

    @property
    def memory_format(self) -> str:
        """The layout every cell and model was measured in (``auto`` resolved at build time)."""
        return self.info.get("memory_format") or self.settings["memory_format"]

    @property
    def dense_spec(self) -> Spec:
        return self.settings["spec"]

    # ---- prediction
    def _check_keys(self, keys: Sequence[str], what: str) -> None:
        missing = [k for k in dict.fromkeys(keys) if k not in self.layers]
        if missing:
            raise DnasPruneError(f"{what} has layer shapes this latency table was not built for ({', '.join(missing)}); "
                                 f"build a table for its parent ({self.settings.get('model')}) at input size "
                                 f"{'x'.join(map(str, self.input_size))}")

    def layers_ms(self, spec: Spec) -> dict[str, float]:
        """{unit name: table ms} of a finalized spec, before the constant and scale."""
        uses = spec_uses(spec, self.input_size)
        self._check_keys([u.key for u in uses], "the spec")
        return {u.name: float(self.layers[u.key](float(u.cin), float(u.cout))) for u in uses}

    def predict_ms(self, spec: Spec) -> float:
        """Predicted latency (ms per batch) of the finalized model ``spec`` on this table's device setting."""
        return self.constant_ms + self.scale * sum(self.layers_ms(spec).values())

    def expected_ms(self, terms: LatencyTerms, counts: Tensor, blocks: Tensor) -> Tensor:
        """Latency of a supernet's terms at channel-group widths ``counts`` and branch factors ``blocks`` (what
        ``Supernet.cost_from_counts`` takes): differentiable in both."""
        self._check_keys(terms.keys, "the supernet")
        win, wout, factor = terms.widths_and_factors(counts, blocks)
        total = win.new_zeros(())
        for key, idx in terms.by_key.items():
            total = total + (self.layers[key](win[idx], wout[idx]) * factor[idx]).sum()
        return self.constant_ms + self.scale * total

    def for_supernet(self, net: "Supernet") -> "SupernetLatency":
        return SupernetLatency(net, self)

    # ---- measurement with the table's settings
    def measure(self, model: nn.Module | Spec, timing: Timing = Timing()) -> dict[str, Any]:
        """Device timing of a whole model (or spec) with this table's settings: ``median_ms``, ``p90_ms`` and
        ``warning`` (``measure_latency``'s summary on CPU)."""
        if isinstance(model, dict):
            model = build_model(model)
        s = self.settings
        timer = _Timer(s["device"].split(":")[0], s["batch_size"], s["threads"], DTYPES[s["dtype"]],
                       self.memory_format)
        return timer(model, self.input_size, timing.model_warmup, timing.model_repeats, timing.model_seconds)

    def measure_beside_dense(self, models: Sequence[nn.Module | Spec], timing: Timing = Timing(),
                             on_each: Callable[[], Any] | None = None) -> dict[str, Any]:
        """Each model timed interleaved with the dense one (table settings), so that the machine's drift cancels:
        ``{"dense_ms": median of every dense forward of the run, "models": [{"ratio": paired ratio to dense,
        "ms": ratio * dense_ms, "median_ms": the model's own median, "dense_median_ms": the dense one's in the same
        rounds, "warning"}]}``. ``ms`` is the model's latency at the run's typical speed, the figure a table fit
        or a check should read."""
        s = self.settings
        built = [build_model(m) if isinstance(m, dict) else m for m in models]
        if s["device"].split(":")[0] != "cpu":  # one after the other on a GPU (no drift to cancel)
            dense_ms = self.measure(self.dense_spec, timing)["median_ms"]
            timed = []
            for model in built:
                timed.append(self.measure(model, timing))
                if on_each:
                    on_each()
            return {"dense_ms": dense_ms, "models": [{"ratio": t["median_ms"] / dense_ms, "ms": t["median_ms"],
                                                      "median_ms": t["median_ms"], "dense_median_ms": dense_ms,
                                                      "warning": t.get("warning")}
                                                     for t in timed]}
        args = (self.input_size, self.batch_size, self.memory_format, DTYPES[s["dtype"]])
        out: list[dict[str, Any]] = []
        dense_times: list[float] = []
        with using_threads(s["threads"]), torch.inference_mode():
            dense = Runner(build_model(self.dense_spec), *args)
            for model in built:
                runner, dense.times = Runner(model, *args), []
                time_interleaved([dense, runner], timing.model_warmup, timing.model_repeats, timing.model_seconds)
                dense_times += dense.times
                summary = runner.summary()
                out.append({"ratio": paired_ratio(runner, dense), "median_ms": summary["median_ms"],
                            "dense_median_ms": dense.median() * 1e3, "warning": summary["warning"]})
                if on_each:
                    on_each()
        dense_ms = statistics.median(dense_times) * 1e3 if dense_times else self.measure(self.dense_spec)["median_ms"]
        for entry in out:
            entry["ms"] = entry["ratio"] * dense_ms
        return {"dense_ms": dense_ms, "models": out}

    def measure_pair(self, dense: nn.Module | Spec, pruned: nn.Module | Spec,
                     timing: Timing = Timing()) -> tuple[float, float, float]:
        """Median ms of two models (or specs) and the pruned/dense ratio, timed in one run with interleaved repeats
        on a CPU (``compare_latency``; the ratio is its paired one), so that the machine's noise of the moment falls
        on both alike. Threads, dtype and batch are the table's; each model runs in its faster memory format, as
        the report and ``dnas-prune profile`` time it and as it would be deployed."""
        models = [build_model(m) if isinstance(m, dict) else m for m in (dense, pruned)]
        s = self.settings
        if s["device"].split(":")[0] == "cuda":
            dense_ms, pruned_ms = (self.measure(m, timing)["median_ms"] for m in models)
            return dense_ms, pruned_ms, pruned_ms / dense_ms
        timed = compare_latency({"dense": models[0], "pruned": models[1]}, self.input_size, [self.batch_size],
                                warmup=timing.model_warmup, repeats=timing.model_repeats, threads=s["threads"],
                                memory_format="auto", dtype=DTYPES[s["dtype"]], max_seconds=timing.model_seconds,
                                with_cost=False)["models"]
        dense_t, pruned_t = (timed[n]["latency"][self.batch_size] for n in ("dense", "pruned"))
        return dense_t["median_ms"], pruned_t["median_ms"], pruned_t["paired_ratio"]

    # ---- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "settings": self.settings, "constant_ms": self.constant_ms,
                "scale": self.scale, "info": self.info,
                "layers": {k: t.to_dict() for k, t in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> "LatencyTable":
        if data.get("format") != TABLE_FORMAT:
            raise DnasPruneError(f"latency table format {data.get('format')!r} is not {TABLE_FORMAT}")
        layers = {k: LayerTable.from_dict(v) for k, v in data["layers"].items()}
        return cls(data["settings"], layers, data["constant_ms"], data["scale"], data.get("info"), path)

    def save(self, path: str | os.PathLike) -> Path:
        self.path = atomic_write_json(self.to_dict(), path)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DnasPruneError(f"{path}: not a readable latency table ({type(exc).__name__}: {exc})") from None
        return cls.from_dict(data, path)

    # ---- display
    def summary(self) -> str:
        s = self.settings
        lines = [
            f"latency table: {s.get('model')}  input {'x'.join(map(str, self.input_size))}  batch {s['batch_size']}  "
            f"{s['dtype']}  {self.memory_format}" + (" (auto)" if s["memory_format"] == "auto" else "")
            + f"  threads {s['threads']}  {s['device']}  torch {s['torch']}",
            f"grid: step {s['channel_step']}, about {s['points']} widths per axis; ms = table median per batch at "
            f"the full widths of each layer shape",
        ]
        width = max([len("layer shape")] + [len(k) for k in self.layers])
        lines.append(f"{'layer shape':<{width}} {'grid':>7} {'uses':>5} {'ms (full)':>10}  pads")
        dense_uses = {u.name: u for u in spec_uses(self.dense_spec, self.input_size)}
        for key, table in self.layers.items():
            fulls = [float(table(float(dense_uses[n].cin), float(dense_uses[n].cout)))
                     for n in table.uses if n in dense_uses]
            grid = f"{table.in_axis.numel()}x{table.out_axis.numel()}"
            full = f"{max(fulls):.4f}" if fulls else "-"
            pads = ",".join(axis for axis, on in zip(("in", "out"), table.pads) if on) or "-"
            lines.append(f"{key:<{width}} {grid:>7} {len(table.uses):>5} {full:>10}  {pads}")
        lines.append(f"constant: {self.constant_ms:+.4f} ms  scale: {self.scale:.4f}  "
                     f"(measured = constant + scale * sum of the layers, least squares over "
                     f"{len(self.info.get('fit', []))} whole models)")
        dense = next((f for f in self.info.get("fit", []) if f.get("dense")), None)
        if dense:
            predicted = self.constant_ms + self.scale * dense["table_sum_ms"]
            lines.append(f"dense model: measured {dense['measured_ms']:.4f} ms, predicted {predicted:.4f} ms")
        fit = self.info.get("fit", [])
        cells = self.info.get("cells", {})
        noisy_models = sum(f.get("warning") is not None for f in fit)
        if cells.get("noisy") or noisy_models:
            lines.append(f"warning: {cells.get('noisy', 0)} of {cells.get('count', 0)} cells and {noisy_models} of "
                         f"{len(fit)} whole models were timed with a p90 over 1.5x the median: the machine was busy, "
                         "so this table is unreliable; rebuild it (--rebuild) on an idle machine")
        if self.info.get("built"):
            b = self.info["built"]
            lines.append(f"built in {b['seconds']:.0f} s, load average {b['load_average'][0]:.2f} at the start "
                         f"and {b['load_average_end'][0]:.2f} at the end")
        if self.path is not None:
            lines.append(f"cache: {self.path}")
        return "\n".join(lines)


class SupernetLatency:
    """The search's latency cost for one supernet: the same inputs as ``Supernet.cost_from_counts``.

    ::

        latency = table.for_supernet(net)
        ms = latency.from_counts(counts, blocks)  # differentiable, ms per batch
        ms = latency.expected_ms()                 # like net.expected_cost()["macs"], in ms
        net.latency = latency                      # then the budget counts it: net.marginal_costs("latency")
    """

    def __init__(self, net: "Supernet", table: LatencyTable) -> None:
        self.net = net
        self.table = table
        self.terms = supernet_terms(net)
        table._check_keys(self.terms.keys, "the supernet's model")
        self._dense_ms: float | None = None

    def from_counts(self, counts: Tensor, blocks: Tensor) -> Tensor:
        return self.table.expected_ms(self.terms, counts, blocks)

    def expected_ms(self) -> Tensor:
        """Expected under the gate probabilities in training mode (differentiable); in eval mode the predicted
        latency of the finalized model."""
        counts, blocks = self.net.counts_and_blocks(hard=not self.net.training)
        return self.from_counts(counts, blocks)

    def hard_ms(self) -> float:
        counts, blocks = self.net.counts_and_blocks(hard=True)
        return float(self.from_counts(counts, blocks))

    def dense_ms(self) -> float:
        """Every group at its full width, every branch open."""
        if self._dense_ms is None:
            blocks = torch.ones(len(self.net.branch_blocks), dtype=torch.float64)
            with torch.no_grad():
                self._dense_ms = float(self.from_counts(self.net.group_sizes.clone(), blocks))
        return self._dense_ms


# --------------------------------------------------------------------------------------------- build / cache
def device_name(device: str) -> str:
    """What the table is tied to: the CPU model and the ISA torch dispatches to, or the GPU's name."""
    if device == "cuda":
        return f"cuda:{torch.cuda.get_device_name()}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu:{model}:{torch.backends.cpu.get_cpu_capability()}"


@functools.lru_cache(maxsize=None)
def _registry_spec(name: str) -> str:
    with torch.device("meta"):
        return json.dumps(spec_of(create_model(name)), sort_keys=True)


def _resolve_model(model: str | Spec | nn.Module) -> tuple[str, Spec]:
    """(name, spec). A module or spec that is a registry model's gets that model's name, so that a search on the
    parent finds the table ``dnas-prune latency-table --model NAME`` built (the name is part of the cache key)."""
    if isinstance(model, str):
        if model not in MODEL_NAMES:
            raise DnasPruneError(f"unknown model {model!r}; known models: {', '.join(MODEL_NAMES)}")
        return model, json.loads(_registry_spec(model))
    spec = spec_of(model) if isinstance(model, nn.Module) else validate_spec(copy.deepcopy(model))
    key = json.dumps(spec, sort_keys=True)
    for name in MODEL_NAMES:
        if _registry_spec(name) == key:
            return name, spec
    return (type(model).__name__ if isinstance(model, nn.Module) else "spec"), spec


def table_settings(model: str | Spec | nn.Module, batch_size: int = 1, *, input_size: Sequence[int] | None = None,
                   threads: int | None = None, precision: str = "fp32", memory_format: str = "auto",
                   device: str = "cpu", channel_step: int = DEFAULT_CHANNEL_STEP,
                   points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """The key a table is built and cached under (checked, with everything resolved but ``auto`` memory format)."""
    name, spec = _resolve_model(model)

    def positive(value: Any, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DnasPruneError(f"{what} must be a positive integer, got {value!r}")

    positive(batch_size, "batch size")
    positive(channel_step, "channel step")
    positive(points, "grid points")
    if points < 2:
        raise DnasPruneError(f"grid points must be at least 2, got {points}")
    if threads is not None:
        positive(threads, "threads")
    if device not in ("cpu", "cuda"):
        raise DnasPruneError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DnasPruneError("device cuda requested but torch sees no CUDA device")
    if precision not in PRECISIONS:
        raise DnasPruneError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = resolve_precision(precision, torch.device(device))
    memory_format = memory_format_name(memory_format)
    if memory_format not in MEMORY_FORMAT_CHOICES:
        raise DnasPruneError(f"memory format must be one of {', '.join(MEMORY_FORMAT_CHOICES)}, got {memory_format!r}")
    size = tuple(int(v) for v in (input_size or default_input_size(spec)))
    if len(size) != 3 or min(size) < 1:
        raise DnasPruneError(f"input size must be 3 positive integers (C H W), got {list(input_size or [])}")
    spec_uses(spec, size)  # fails early on an input too small for the strides
    return {
        "model": name, "spec": spec, "input_size": list(size), "batch_size": batch_size,
        "threads": threads or torch.get_num_threads(), "dtype": dtype, "memory_format": memory_format,
        "device": device_name(device), "torch": str(torch.__version__), "channel_step": channel_step, "points": points,
        "allocator": keep_freed_memory(),  # tables measured with another allocator state do not describe this one
    }


def cache_path(settings: dict[str, Any], directory: str | os.PathLike | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(directory or cache_dir() / "latency") / f"{settings['model']}-bs{settings['batch_size']}-{digest}.json"


def _fit(points: list[dict[str, Any]]) -> tuple[float, float]:
    """(constant, scale) of ``measured = constant + scale * table_sum``, through the dense model's point exactly
    (the one marked ``dense``, else the first: every budget and every side-by-side ratio is a fraction of the dense
    model, so it must read right), the scale by least squares on the others' relative error; a constant offset
    alone if that scale is not > 0."""
    dense = next((p for p in points if p.get("dense")), points[0])
    dense_sum, dense_ms = float(dense["table_sum_ms"]), float(dense["measured_ms"])
    others = [p for p in points if p is not dense]
    if others:
        sums = torch.tensor([p["table_sum_ms"] for p in others], dtype=torch.float64)
        measured = torch.tensor([p["measured_ms"] for p in others], dtype=torch.float64).clamp_min(1e-12)
        # relative error of constant + scale * sum with constant = dense_ms - scale * dense_sum: scale * a - b
        a, b = (sums - dense_sum) / measured, 1.0 - dense_ms / measured
        if float((a * a).sum()) > 0:
            scale = float((a * b).sum() / (a * a).sum())
            if scale > 0 and math.isfinite(scale):
                return dense_ms - scale * dense_sum, scale
    return dense_ms - dense_sum, 1.0


def _layout_trial(dense: nn.Module, settings: dict[str, Any], timing: Timing) -> dict[str, float]:
    """{layout: median ms} of the dense model in each layout, timed interleaved (so drift does not pick it)."""
    return measure_latency(dense, settings["input_size"], settings["batch_size"], threads=settings["threads"],
                           dtype=DTYPES[settings["dtype"]], memory_format="auto", warmup=timing.model_warmup,
                           repeats=timing.model_repeats, max_seconds=timing.model_seconds / 2)["layout_ms"]


def _outlier_cells(grid: list[list[float]]) -> list[tuple[int, int]]:
    """Cells over OUTLIER_FACTOR times every grid neighbour's value (up, down, left, right). A cell's time grows
    smoothly with its widths; a cell far above all of its neighbours was most likely timed during a slow spell
    of a shared machine that the reference, a smaller op, felt less. Such cells are timed again."""
    out = []
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            near = [grid[a][b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                    if 0 <= a < len(grid) and 0 <= b < len(row)]
            if near and value > OUTLIER_FACTOR * max(near):
                out.append((i, j))
    return out


def pad_probe_widths(axis: Sequence[int], step: int) -> list[int]:
    """Off-grid widths that tell whether the device pads an axis: one past a grid point whose next grid point is
    at most ``step`` further, where padding and interpolation disagree most. Grid points that are multiples of
    twice the step come first (a 16-channel SIMD block steps there on a step-8 grid); at most PAD_PROBES."""
    pairs = [a for a, b in zip(axis, axis[1:]) if a >= step and 2 <= b - a <= step]
    ordered = [a for a in pairs if a % (2 * step) == 0] + [a for a in pairs if a % (2 * step)]
    return [int(a) + 1 for a in ordered[:PAD_PROBES]]


def axis_pads(layer: LayerTable, axis: int, probes: Sequence[tuple[float, float, float]]) -> bool:
    """Whether the probes ((in width, out width, measured ms) off the grid on ``axis``) read closer to the padded
    model of that axis than to plain interpolation (relative error summed over the probes)."""
    if not probes:
        return False

    def error(pads: tuple[bool, bool]) -> float:
        model = LayerTable(layer.unit, layer.in_axis.tolist(), layer.out_axis.tolist(), layer.ms.tolist(),
                           step=layer.step, pads=pads)
        return sum(abs(float(model(cin, cout)) / ms - 1.0) for cin, cout, ms in probes)

    padded = (True, layer.pads[1]) if axis == 0 else (layer.pads[0], True)
    return error(padded) < error(layer.pads)


def _reference_runner(plan: dict[str, dict[str, Any]], settings: dict[str, Any], memory_format: str) -> Runner:
    """The unit every grid cell is timed beside: the most used layer shape at the middle of its grid. A shared
    CPU's speed drifts by tens of percent over seconds; a cell's time over the reference's in the same rounds
    does not, and the reference's median over the whole build turns those ratios back into milliseconds."""
    key, entry = max(plan.items(), key=lambda item: len(item[1]["uses"]))
    cin, cout = entry["in"][len(entry["in"]) // 2], entry["out"][len(entry["out"]) // 2]
    module, input_size = _cell_module(entry["unit"], cin, cout, settings["batch_size"])
    runner = Runner(module, input_size, settings["batch_size"], memory_format, DTYPES[settings["dtype"]])
    runner.unit = f"{key} {cin}->{cout}"  # type: ignore[attr-defined]
    return runner


def build_table(settings: dict[str, Any], timing: Timing = Timing(), progress: bool = True,
                fit_keep_levels: Sequence[float] = FIT_KEEP_LEVELS) -> LatencyTable:
    """Measure every grid cell, then whole models to fit the constant and scale (see the module docstring)."""
    started, load_start = time.perf_counter(), os.getloadavg()
    spec, size = settings["spec"], settings["input_size"]
    plan = plan_layers(spec_uses(spec, size), settings["channel_step"], settings["points"])
    device = settings["device"].split(":")[0]
    timer = _Timer(device, settings["batch_size"], settings["threads"], DTYPES[settings["dtype"]], "nchw")
    dense = build_model(spec)
    info: dict[str, Any] = {}
    memory_format = settings["memory_format"]
    if memory_format == "auto":  # one layout for the table: the faster one for the dense model
        trial = {fmt: timer(dense, size, timing.model_warmup, timing.model_repeats, timing.model_seconds / 2,
                            fmt)["median_ms"] for fmt in MEMORY_FORMATS} if device != "cpu" else \
            _layout_trial(dense, settings, timing)
        memory_format = min(trial, key=trial.get)
        info["memory_format_trial_ms"] = trial
    info["memory_format"] = timer.memory_format = memory_format
    rng = random.Random(FIT_SEED)
    fit_specs = [spec] + [random_spec(spec, rng, settings["channel_step"], keep=k) for k in fit_keep_levels]
    cells = sum(len(e["in"]) * len(e["out"]) for e in plan.values())
    step = settings["channel_step"]
    probe_plan = {key: [pad_probe_widths(e["in"], step), pad_probe_widths(e["out"], step)]
                  for key, e in plan.items()}
    cells += sum(len(p) for probes in probe_plan.values() for p in probes)
    noisy = 0
    threads = settings["threads"] if device == "cpu" else None
    reference = _reference_runner(plan, settings, memory_format) if device == "cpu" else None
    reference_times: list[float] = []
    grids: dict[str, list[list[float]]] = {}
    padding: dict[str, dict[str, Any]] = {}
    with using_threads(threads), Progress(cells + len(fit_specs) - 1, f"latency table {settings['model']} bs "
                                          f"{settings['batch_size']}", unit="cell", enabled=progress,
                                          every=0.1) as bar:
        def time_cell(entry: dict[str, Any], cin: int, cout: int) -> tuple[float, dict[str, Any]]:
            module, input_size = _cell_module(entry["unit"], cin, cout, settings["batch_size"])
            if reference is None:  # (the grid's numbers are plain floats: no inference tensors leak)
                timed = timer(module, input_size, timing.cell_warmup, timing.cell_repeats, timing.cell_seconds)
                return timed["median_ms"], timed
            # timed beside the reference: the ratio, scaled below by the reference's overall median
            cell = Runner(module, input_size, settings["batch_size"], memory_format, DTYPES[settings["dtype"]])
            reference.times = []
            with torch.inference_mode():
                time_interleaved([reference, cell], timing.cell_warmup, timing.cell_repeats, timing.cell_seconds)
            reference_times.extend(reference.times)
            return paired_ratio(cell, reference), cell.summary()

        retimed = 0
        for key, entry in plan.items():
            bar.set_postfix(layer=key)
            grid = []
            for cin in entry["in"]:
                row = []
                for cout in entry["out"]:
                    value, timed = time_cell(entry, cin, cout)
                    row.append(value)
                    noisy += timed.get("warning") is not None
                    bar.update()
                grid.append(row)
            for i, j in _outlier_cells(grid):  # a slow spell of the machine, not the shape: the faster timing
                for _ in range(OUTLIER_RETIMES):
                    grid[i][j] = min(grid[i][j], time_cell(entry, entry["in"][i], entry["out"][j])[0])
                retimed += 1
            grids[key] = grid
            # does the device pad this key's widths? a few off-grid cells against both models of each axis
            layer = LayerTable(entry["unit"], entry["in"], entry["out"], grid, entry["uses"], step)
            probed: dict[str, list[tuple[float, float, float]]] = {}
            for axis, name in enumerate(("in", "out")):
                other = entry["out" if axis == 0 else "in"]
                probes = probed[name] = []
                for width in probe_plan[key][axis]:
                    cin, cout = (width, other[len(other) // 2]) if axis == 0 else (other[len(other) // 2], width)
                    probes.append((cin, cout, time_cell(entry, cin, cout)[0]))
                    bar.update()
                pads = list(layer.pads)
                pads[axis] = axis_pads(layer, axis, probes)
                layer.pads = (pads[0], pads[1])
            padding[key] = {"pads": list(layer.pads), "probes": probed}
        reference_ms = statistics.median(reference_times) * 1e3 if reference_times else 1.0
        layers = {key: LayerTable(entry["unit"], entry["in"], entry["out"],
                                  [[v * reference_ms for v in row] for row in grids[key]], entry["uses"], step,
                                  padding[key]["pads"])
                  for key, entry in plan.items()}
        info["padding"] = {key: {"pads": p["pads"], "probes": {axis: [[cin, cout, ms * reference_ms]
                                                                      for cin, cout, ms in probes]
                                                               for axis, probes in p["probes"].items()}}
                           for key, p in padding.items()}
        if reference is not None:
            info["reference"] = {"unit": reference.unit, "median_ms": reference_ms, "forwards": len(reference_times)}
        table = LatencyTable(settings, layers, info=info)
        bar.set_postfix(layer="whole models")
        timed_models = table.measure_beside_dense(fit_specs[1:], timing, on_each=bar.update)
    fit = [{"dense": True, "keep": None, "spec": spec, "measured_ms": timed_models["dense_ms"], "ratio": 1.0,
            "warning": None, "table_sum_ms": sum(table.layers_ms(spec).values())}]
    for keep, fit_spec, timed in zip(fit_keep_levels, fit_specs[1:], timed_models["models"]):
        fit.append({"dense": False, "keep": keep, "spec": fit_spec, "measured_ms": timed["ms"],
                    "ratio": timed["ratio"], "warning": timed["warning"],
                    "table_sum_ms": sum(table.layers_ms(fit_spec).values())})
    table.constant_ms, table.scale = _fit(fit)
    table.info["fit"] = fit
    table.info["cells"] = {"count": cells, "noisy": noisy, "retimed": retimed}
    table.info["built"] = {"seconds": time.perf_counter() - started, "load_average": list(load_start),
                     "load_average_end": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "timing": timing.__dict__}
    return table


def latency_table(model: str | Spec | nn.Module, batch_size: int = 1, *, input_size: Sequence[int] | None = None,
                  threads: int | None = None, precision: str = "fp32", memory_format: str = "auto",
                  device: str = "cpu", channel_step: int = DEFAULT_CHANNEL_STEP, points: int = DEFAULT_POINTS,
                  rebuild: bool = False, progress: bool = True, directory: str | os.PathLike | None = None,
                  timing: Timing = Timing(), check: bool = True) -> LatencyTable:
    """The latency table of ``model`` (a registry name, a spec or a ResNet: the parent the search starts from),
    loaded from the cache or built (and cached) when absent, unreadable, of another format or ``rebuild``. With
    ``check``, a cached table is first checked against the device (:func:`stale_error`) and measured again when it
    no longer matches. A resumed search does not check (:func:`table_for_settings`): it keeps the table it began with.

    ``threads`` defaults to torch's current setting and is fixed while measuring; ``precision`` ``auto`` resolves
    as training's does (bf16 where the hardware runs it natively); ``input_size`` defaults to the family's.
    """
    settings = table_settings(model, batch_size, input_size=input_size, threads=threads, precision=precision,
                              memory_format=memory_format, device=device, channel_step=channel_step, points=points)
    if check and not rebuild:
        table = cached_table(settings, directory)
        if table is not None:
            error = stale_error(table, timing)
            if error <= STALE_ERROR:
                return table
            print(f"the cached latency table {table.path} reads {error:.0%} off this device now (shrunk models timed "
                  "beside the dense one); measuring it again", flush=True)
            rebuild = True
    return table_for_settings(settings, rebuild=rebuild, progress=progress, directory=directory, timing=timing)


def stale_error(table: LatencyTable, timing: Timing = Timing()) -> float:
    """How far the device has moved from ``table`` since it was measured, in the terms a latency target reads: the
    largest relative error of the table's ratio to dense for shrunk models (seeded, STALE_PROBE_LEVELS) timed beside
    the dense model now. A cache key names the device, not its state: a shared machine's neighbours, clocks or
    memory bandwidth can change after a table is measured, and the ratios a budget reads move with them."""
    rng = random.Random(f"stale/{FIT_SEED}")
    probes = [random_spec(table.dense_spec, rng, table.settings["channel_step"], keep=k, remove=0.0)
              for k in STALE_PROBE_LEVELS]
    dense = table.predict_ms(table.dense_spec)
    timed = table.measure_beside_dense(probes, timing)["models"]
    return max(abs(table.predict_ms(spec) / dense - t["ratio"]) / t["ratio"] for spec, t in zip(probes, timed))


def cached_table(settings: dict[str, Any], directory: str | os.PathLike | None = None) -> LatencyTable | None:
    """The cached table of ``settings``, or None when absent, unreadable or of other settings (another format)."""
    path = cache_path(settings, directory)
    if not path.is_file():
        return None
    try:
        table = LatencyTable.load(path)
    except (DnasPruneError, KeyError, TypeError, ValueError):
        return None  # a stale or damaged cache entry is rebuilt, never trusted
    return table if table.settings == settings else None


def table_for_settings(settings: dict[str, Any], *, rebuild: bool = False, progress: bool = True,
                       directory: str | os.PathLike | None = None, timing: Timing = Timing()) -> LatencyTable:
    """The table of ``settings`` (as :func:`table_settings` gives and ``table.settings`` keeps): from the cache, or
    measured now. How a search checkpoint finds its latency model again."""
    path = cache_path(settings, directory)
    table = None if rebuild else cached_table(settings, directory)
    if table is not None:
        return table
    table = build_table(settings, timing, progress)
    try:
        table.save(path)
    except OSError as exc:  # a read-only cache only costs a rebuild next time
        print(f"warning: could not cache the latency table in {path} ({exc})", flush=True)
    return table
