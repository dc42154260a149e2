"""What a ResNet is cut into for the latency model, and the widths each piece is measured at.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from ...errors import DnasPruneError
from ...models import build_model
from ...models.spec import Spec, block_kind, family_of


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
    maxpool = model.maxpool if family == "torchvision" and isinstance(model.maxpool, nn.MaxPool2d) else None
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


FIXED_ROLES = {"input", "classes", "none"}


def plan_layers(uses: Sequence[LayerUse], channel_step: int, points: int) -> dict[str, dict[str, Any]]:
    """{layer-shape key: {"unit", "in", "out", "uses"}}: the grid each key is measured on."""
    plan: dict[str, dict[str, Any]] = {}
    fulls: dict[tuple[str, str], set[int]] = {}
    for use in uses:
        entry = plan.setdefault(use.key, {"unit": use.unit, "in": set(), "out": set(), "uses": []})
        entry["uses"].append(use.name)
        for axis, role, width in (("in", use.src, use.cin), ("out", use.dst, use.cout)):
            entry[axis].add(width)  # fixed widths and every use's full width are grid points
            if role not in FIXED_ROLES:
                fulls.setdefault((use.key, axis), set()).add(width)
    for (key, axis), widths in fulls.items():  # one grid per key: its widest use's, plus the other full widths
        plan[key][axis].update(grid_axis(max(widths), channel_step, points))
    for entry in plan.values():
        for axis in ("in", "out"):
            entry[axis] = sorted(entry[axis])
    return plan
