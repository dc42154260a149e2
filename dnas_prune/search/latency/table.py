"""The latency table: per-layer grids read by interpolation, for a finalized model or a supernet's gates.

Why a grid and bilinear interpolation: the smooth part of a conv's time, ``a + b * cin * cout``, is bilinear, so
interpolation reproduces it exactly between grid points. What is not smooth is strongest at small widths, where
the grid holds every multiple of the step: narrow widths run slower per MAC, some hit slower kernels, and SIMD
blocking rounds a width up to the next block, so a conv with 17 output channels can run as slowly as one with 32.
Interpolation would read such a width cheaper than it runs, and a search that reaches any width (one channel per
gate, the default) lands on such widths. So the build also times, per layer shape and axis, two cells one channel
past a grid point, and marks the axis *padded* when they read closer to the next grid point's time than to the
interpolation (``build.axis_pads``): the device, not an assumed block size, decides, per layer shape (out widths
pad in oneDNN's blocked convs, in widths mostly do not). A padded axis reads a width at the next grid point, or
at the next multiple of the step where the grid is sparser (:func:`padded_width`); the gradient keeps the smooth
slope (straight-through), which is what the search needs: a cost it can differentiate. The interpolation is
written in torch ops, so the predicted latency is differentiable in the widths when they are tensors (the
search's expected channel counts), as ``Supernet.cost_from_counts`` is. Widths outside a key's grid are clamped to
it. The grid values are the measured medians, not smoothed or made monotone: a wider layer that really runs
faster stays so.

Expected latency under gate probabilities is taken at the expected widths (``L(E[w])``) with each term of a
residual branch weighted by P(branch open), as the MACs are. For MACs, bilinear in the widths, that is the exact
expectation under independent gates; for latency it is an approximation. Hard decisions give whole widths, where
the prediction is the table's for the finalized model, so the budget's offset solve, which works on hard costs,
is not affected by it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ...device.policy import using_threads
from ...device.timing import Runner, compare_latency, paired_ratio, time_interleaved
from ...errors import DnasPruneError
from ...io.checkpoint import atomic_write_json
from ...models import build_model
from ...models.spec import Spec
from .cells import DTYPES, CellTimer, Timing
from .pairs import OnPair, Pair, time_pairs_apart, time_pairs_here
from .units import FIXED_ROLES, layer_uses, spec_uses, unit_key

if TYPE_CHECKING:
    from ..supernet import Supernet

TABLE_FORMAT = 5  # 2: constant and scale fitted on 16 shrunk models; 3: cells and models timed beside a reference;
# 4: outlier cells timed again; 5: padded axes measured


def fit_constant_and_scale(points: list[dict[str, Any]]) -> tuple[float, float]:
    """(constant, scale) of ``measured = constant + scale * table_sum``, through the dense model's point exactly
    (the one marked ``dense``, else the first: every budget and every side-by-side ratio is a fraction of the dense
    model, so it must read right), the scale by least squares on the others' relative error; a constant offset
    alone if that scale is not > 0, and a scale alone if the constant would be negative (a small model would then
    be predicted below zero)."""
    dense = next((p for p in points if p.get("dense")), points[0])
    dense_sum, dense_ms = float(dense["table_sum_ms"]), float(dense["measured_ms"])
    others = [p for p in points if p is not dense]
    constant, scale = dense_ms - dense_sum, 1.0
    if others:
        sums = torch.tensor([p["table_sum_ms"] for p in others], dtype=torch.float64)
        measured = torch.tensor([p["measured_ms"] for p in others], dtype=torch.float64).clamp_min(1e-12)
        # relative error of constant + scale * sum with constant = dense_ms - scale * dense_sum: scale * a - b
        a, b = (sums - dense_sum) / measured, 1.0 - dense_ms / measured
        if float((a * a).sum()) > 0:
            fitted = float((a * b).sum() / (a * a).sum())
            if fitted > 0 and math.isfinite(fitted):
                constant, scale = dense_ms - fitted * dense_sum, fitted
    if constant < 0 and dense_sum > 0:
        constant, scale = 0.0, dense_ms / dense_sum
    return constant, scale


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
            if role in FIXED_ROLES:
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
        timer = CellTimer(s["device"].split(":")[0], s["batch_size"], s["threads"], DTYPES[s["dtype"]],
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
                     timing: Timing = Timing(), threads: int | None = None) -> Pair:
        """Median ms of two models (or specs) and the pruned/dense ratio, timed in one run with interleaved repeats
        on a CPU (``compare_latency``; the ratio is its paired one), so that the machine's noise of the moment falls
        on both alike. Threads (unless given), dtype and batch are the table's; each model runs in its faster
        memory format, as the report and ``dnas-prune profile`` time it and as it would be deployed."""
        models = [build_model(m) if isinstance(m, dict) else m for m in (dense, pruned)]
        s = self.settings
        if s["device"].split(":")[0] == "cuda":
            dense_ms, pruned_ms = (self.measure(m, timing)["median_ms"] for m in models)
            return dense_ms, pruned_ms, pruned_ms / dense_ms
        timed = compare_latency({"dense": models[0], "pruned": models[1]}, self.input_size, [self.batch_size],
                                warmup=timing.model_warmup, repeats=timing.model_repeats, threads=threads or s["threads"],
                                memory_format="auto", dtype=DTYPES[s["dtype"]], max_seconds=timing.model_seconds,
                                with_cost=False)["models"]
        dense_t, pruned_t = (timed[n]["latency"][self.batch_size] for n in ("dense", "pruned"))
        return dense_t["median_ms"], pruned_t["median_ms"], pruned_t["paired_ratio"]

    def time_pairs(self, dense: Spec, pruned: Spec, *, at_least: int, seconds: float, timing: Timing = Timing(),
                   on_pair: OnPair | None = None, threads: int | None = None) -> list[Pair]:
        """``measure_pair`` of two specs repeated for ``seconds`` (at least ``at_least`` times): on a CPU in a new
        process, as a deployment runs the model (see pairs.py), on a GPU here. ``on_pair`` sees each timing as it
        is done; ``threads`` overrides the table's."""
        if self.settings["device"].split(":")[0] == "cpu":
            return time_pairs_apart(self, dense, pruned, at_least, seconds, timing, on_pair, threads)
        return time_pairs_here(self, dense, pruned, at_least, seconds, timing, on_pair, threads)

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
        constant, scale = data["constant_ms"], data["scale"]
        if data.get("info", {}).get("fit"):  # refitted under today's rule: older tables kept negative constants
            constant, scale = fit_constant_and_scale(data["info"]["fit"])
        return cls(data["settings"], layers, constant, scale, data.get("info"), path)

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
            lines.append(f"dense model: measured {dense['measured_ms']:.4f} ms (the fit passes through it)")
        fit = self.info.get("fit", [])
        errors = sorted(abs((self.constant_ms + self.scale * f["table_sum_ms"]) / f["measured_ms"] - 1.0)
                        for f in fit if not f.get("dense") and f.get("measured_ms"))
        if errors:  # how well the table reads the models it was fitted on; experiments/latency_model.py: unseen ones
            lines.append(f"shrunk models: predicted vs measured, median error {100 * statistics.median(errors):.1f} %, "
                         f"largest {100 * errors[-1]:.1f} % over {len(errors)}")
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
