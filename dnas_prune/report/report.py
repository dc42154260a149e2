"""The run report: dense vs pruned accuracy, cost, latency and widths as ``report.md``/``report.json`` + PNGs.

Latency of both models is measured side by side in the same process (:func:`~dnas_prune.device.timing.compare_latency`),
so machine load affects both alike. Figures use matplotlib's object API (a ``Figure`` rendered by the Agg canvas),
not pyplot: no display and no global figure registry are involved, so there is nothing to close and a figure
drawn in a training loop is garbage-collected once dropped. :func:`widths_figure` is shared with the TensorBoard monitor,
so the report and the live view of a search draw widths the same way. Results of other methods (e.g. the peers of
``experiments/compare.py``) can be passed in as labelled :class:`Point`\\ s to appear on the accuracy plots.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import nn

from ..device.load import OthersCpu, crowded
from ..device.timing import compare_latency
from ..io.checkpoint import atomic_write, atomic_write_json, atomic_write_text
from ..models import Spec, spec_of
from ..models.cost import Cost
from ..search.landing import pinned_try
from .summary import width_table

DPI = 110
DENSE_COLOR = "#d9d9d9"
REMOVED_COLOR = "#d62728"
REMOVED_DENSE_COLOR = "#f4b6b6"
STEM_COLOR = "#7f7f7f"
STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")

DENSE = "dense"
SEARCHED = "after search (before finetuning)"
PRUNED = "pruned (finetuned)"
_OURS_STYLES = {
    DENSE: {"color": "#7f7f7f", "marker": "o", "s": 70},
    SEARCHED: {"color": "#ff7f0e", "marker": "D", "s": 55},
    PRUNED: {"color": "#1f77b4", "marker": "*", "s": 150},
}
_PEER_STYLES = (("#2ca02c", "s"), ("#9467bd", "^"), ("#8c564b", "v"), ("#e377c2", "P"), ("#bcbd22", "X"),
                ("#17becf", "p"), ("#d62728", "h"))


# ---------------------------------------------------------------------------------------------- widths
@dataclass(frozen=True)
class WidthBar:
    """One channel group in the widths figure. ``stage`` 0 is a stem of its own; ``removed`` marks an inner
    group of a residual block that pruning removes (``kept`` is then 0)."""

    name: str
    stage: int
    stream: bool
    dense: int
    kept: int
    removed: bool = False


def layer_bars(layers: Sequence[Mapping[str, Any]]) -> list[WidthBar]:
    """The bars of :func:`widths_figure` from a pruned model's ``layers`` metadata (``{"name", "kind", "dense",
    "pruned"}`` per channel group in network order, as the finalize stage records them). The stage is read from
    the name (``stem`` or ``layer<s>...``); an inner group kept at 0 channels belongs to a removed block."""
    return [WidthBar(layer["name"], 0 if layer["name"] == "stem" else int(layer["name"].split(".")[0][5:]),
                     layer["kind"] == "stream", layer["dense"], layer["pruned"],
                     layer["kind"] == "inner" and layer["pruned"] == 0) for layer in layers]


def _stage_color(stage: int) -> str:
    return STEM_COLOR if stage == 0 else STAGE_COLORS[(stage - 1) % len(STAGE_COLORS)]


def _stage_name(stage: int) -> str:
    return "stem" if stage == 0 else f"layer{stage}"


def widths_figure(bars: Sequence[WidthBar], title: str) -> Figure:
    """Bar chart of kept vs dense width per channel group: a light gray bar the dense width, over it the kept
    width coloured by stage (residual streams hatched); an inner group of a removed block has a light red dense
    bar and a red cross on the axis. Stages are split by dashed lines; the legend sits right of the plot."""
    n = len(bars)
    fig = Figure(figsize=(min(16.0, max(8.0, 3.0 + 0.2 * n)), 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    ax.bar(x, [b.dense for b in bars], width=0.8, zorder=1,
           color=[REMOVED_DENSE_COLOR if b.removed else DENSE_COLOR for b in bars])
    kept = ax.bar(x, [b.kept for b in bars], width=0.56, zorder=2, color=[_stage_color(b.stage) for b in bars],
                  edgecolor="white", linewidth=0)
    for patch, bar in zip(kept, bars):
        if bar.stream:
            patch.set_hatch("///")
    if n <= 40:
        ax.bar_label(kept, labels=["" if b.removed else str(b.kept) for b in bars], fontsize=7, padding=1)
    removed = [i for i, b in enumerate(bars) if b.removed]
    ax.scatter(removed, [0] * len(removed), marker="x", s=45, linewidths=2, color=REMOVED_COLOR, zorder=3,
               clip_on=False)
    for i in range(1, n):
        if bars[i].stage != bars[i - 1].stage:
            ax.axvline(i - 0.5, color="#9e9e9e", linestyle="--", linewidth=0.8, zorder=0)
    ax.set_xticks(x, [b.name for b in bars], rotation=90, fontsize=7 if n > 24 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.08 * max((b.dense for b in bars), default=1))
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    ax.set_title(title)
    ax.set_xlabel("channel group (network order)")
    ax.set_ylabel("channels")

    handles: list[Any] = [Patch(facecolor=DENSE_COLOR, label="dense width")]
    handles += [Patch(facecolor=_stage_color(stage), label=f"kept, {_stage_name(stage)}")
                for stage in sorted({b.stage for b in bars})]
    handles.append(Patch(facecolor="#9e9e9e", edgecolor="white", hatch="///", linewidth=0,
                         label="residual stream (hatched)"))
    if removed:
        handles.append((Patch(facecolor=REMOVED_DENSE_COLOR),
                        Line2D([], [], marker="x", markersize=7, markeredgewidth=2, color=REMOVED_COLOR,
                               linestyle="none")))
    labels = [h.get_label() for h in handles if not isinstance(h, tuple)] + (["block removed"] if removed else [])
    fig.legend(handles, labels, loc="outside right upper", fontsize=8,
               handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})
    return fig


# ---------------------------------------------------------------------------------------------- accuracy
@dataclass(frozen=True)
class Point:
    """A labelled model on the accuracy plots: test accuracy in [0, 1], MACs, and optionally the median latency
    per batch in ms by batch size. Give latencies only when measured like the report's (same machine, threads and
    precision); a point without a latency for a batch size is left out of that panel."""

    label: str
    macs: float
    test_acc: float
    latency_ms: Mapping[int, float] = field(default_factory=dict)


def _styled(points: Sequence[Point], peers: Sequence[Point]) -> list[tuple[Point, dict[str, Any]]]:
    """Each point with its marker style: the run's own points filled, by label (dense, searched, pruned); peers
    hollow, in turn, so peers close to the pruned model stay apart from it and from each other."""
    styled = [(p, _OURS_STYLES.get(p.label, _OURS_STYLES[PRUNED])) for p in points]
    for i, peer in enumerate(peers):
        color, marker = _PEER_STYLES[i % len(_PEER_STYLES)]
        styled.append((peer, {"facecolors": "none", "edgecolors": color, "marker": marker, "s": 70,
                              "linewidths": 1.8}))
    return [(p, style) for p, style in styled if math.isfinite(p.test_acc)]


def _figure_legend(fig: Figure) -> None:
    """One legend right of all panels (centred, clear of a figure title), each label once."""
    entries: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside right center", fontsize=8, scatterpoints=1)


def _accuracy_axes(ax: Any, xlabel: str) -> None:
    """Labels and grid; x from 0 (cost and latency are read against zero) to 8 % past the rightmost point."""
    ax.margins(y=0.1)
    if ax.collections:
        ax.set_xlim(0, 1.08 * ax.dataLim.x1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)


def accuracy_macs_figure(points: Sequence[Point], peers: Sequence[Point] = (), title: str = "") -> Figure:
    """Test accuracy (%) against MACs (millions) of ``points`` (this run) and ``peers``."""
    fig = Figure(figsize=(8.0, 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for point, style in _styled(points, peers):
        ax.scatter(point.macs / 1e6, 100 * point.test_acc, label=point.label, zorder=3, **style)
    _accuracy_axes(ax, "MACs (millions)")
    ax.set_title(title or "Test accuracy vs MACs")
    _figure_legend(fig)
    return fig


def accuracy_latency_figure(points: Sequence[Point], batch_sizes: Sequence[int], peers: Sequence[Point] = (),
                            title: str = "") -> Figure:
    """Test accuracy (%) against median latency per batch (ms), one panel per batch size, sharing the y axis."""
    fig = Figure(figsize=(max(8.0, 1.5 + 3.6 * len(batch_sizes)), 4.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(batch_sizes), sharey=True, squeeze=False)[0]
    styled = _styled(points, peers)
    for ax, bs in zip(axes, batch_sizes):
        for point, style in styled:
            if bs in point.latency_ms:
                ax.scatter(point.latency_ms[bs], 100 * point.test_acc, label=point.label, zorder=3, **style)
        _accuracy_axes(ax, "median latency per batch (ms)")
        ax.set_title(f"batch {bs}")
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.suptitle(title or "Test accuracy vs measured latency")
    _figure_legend(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (temp file in the same directory, then rename)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


# ---------------------------------------------------------------------------------------------- report
def stage_rows(dense: Spec, pruned: Spec) -> list[dict[str, Any]]:
    """Per stage: stream width and residual blocks kept (the numbers behind :func:`width_table`)."""
    rows = []
    for s, (d, p) in enumerate(zip(dense["stages"], pruned["stages"]), start=1):
        rows.append({"stage": f"layer{s}", "width": [d["width"], p["width"]],
                     "blocks_kept": sum(1 for b in p["blocks"] if b["inner"] is not None), "blocks_total": len(d["blocks"]),
                     "inner": [b["inner"] for b in p["blocks"]]})
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2%}"


def _latency_budget(search_summary: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any] | None:
    """A latency budget's three readings of the pruned/dense latency ratio at its batch size: the table's
    prediction, the search's landing measurement, and this report's side-by-side timing."""
    final = search_summary["final"]
    if "latency_ratio" not in final:
        return None
    bs = final["latency_batch_size"]
    tries = search_summary["projection"].get("measured") or []
    landed = pinned_try(tries)["measured_ratio"] if tries else None
    return {"batch_size": bs, "predicted_ratio": final["latency_ratio"], "landing_measured_ratio": landed,
            "report_measured_ratio": latency["models"]["pruned"]["latency"][bs]["paired_ratio"],
            "threads": search_summary.get("config", {}).get("search", {}).get("latency_threads"),
            "report_threads": latency["threads"]}


def _markdown(r: dict[str, Any], table: str, config_toml: str) -> str:
    d, p, lat = r["dense"], r["pruned"], r["latency"]
    budget = f"Budget: {r['target']['metric']} at {r['target']['ratio']:.0%} of the dense model."
    if r.get("latency_budget"):
        b = r["latency_budget"]
        landed = "-" if b["landing_measured_ratio"] is None else f"{b['landing_measured_ratio']:.3f}"
        other = b.get("threads") not in (None, b.get("report_threads"))  # report.threads set otherwise
        budget += (f" Pruned/dense latency at batch {b['batch_size']}: {b['predicted_ratio']:.3f} predicted by the "
                   f"latency table, {landed} measured when the search landed, {b['report_measured_ratio']:.3f} "
                   + (f"timed below at {b['report_threads']} threads (the budget was measured at {b['threads']})."
                      if other else "timed below."))
    lines = [
        f"# dnas_prune run: {r['model']}",
        "",
        budget,
        "",
        "| | dense | pruned (finetuned) |",
        "|---|---|---|",
        f"| test accuracy | {_pct(d['test_acc'])} | {_pct(p['test_acc'])} |",
        f"| val accuracy (held out of this run's training images) | {_pct(d.get('val_acc'))} | "
        f"{_pct(p.get('val_acc'))} |",
        f"| MACs | {d['macs'] / 1e6:.2f}M | {p['macs'] / 1e6:.2f}M ({p['macs_ratio']:.1%}) |",
        f"| params | {d['params'] / 1e6:.3f}M | {p['params'] / 1e6:.3f}M ({p['params_ratio']:.1%}) |",
    ]
    for bs in lat["batch_sizes"]:
        dense_ms = lat["models"]["dense"]["latency"][bs]["median_ms"]
        pruned_ms = lat["models"]["pruned"]["latency"][bs]["median_ms"]
        lines.append(f"| latency, batch {bs} (median) | {dense_ms:.2f} ms | {pruned_ms:.2f} ms "
                     f"(speedup {lat['ratios']['pruned'][bs]['speedup']:.2f}x) |")
    unreliable = [f"{name} at batch {bs}: {entry['latency'][bs]['warning']}" for name, entry in lat["models"].items()
                  for bs in lat["batch_sizes"] if entry["latency"][bs].get("warning")]
    unreliable += [f"timings: {lat['warning']}"] if lat.get("warning") else []
    if unreliable:  # the figures above are not to be trusted
        lines += [""] + [f"**Warning**, latency {line}." for line in unreliable]
    lines += [
        "",
        f"Test accuracy right after the search (hard supernet, before finetuning): {_pct(p['search_test_acc'])}. "
        "Val images are training images this run held out; a parent trained elsewhere (a shipped one) may have "
        "trained on them, so its val accuracy can read high: compare on test.",
        f"Latency: CPU, {lat['threads']} threads, fp32, both models timed in the same run with interleaved repeats; "
        "each model runs in its faster memory format.",
        "",
        "## Widths",
        "",
        table,
        "",
        "![per-layer widths](widths.png)",
        "",
        "Per channel group in network order: the dense width in gray, over it the kept width coloured by stage "
        "(residual streams hatched); a removed block's inner groups have a light red dense bar and a red cross.",
        "",
        "![accuracy vs MACs](accuracy_macs.png)",
        "",
        "![accuracy vs latency](accuracy_latency.png)",
        "",
        "Test accuracy against MACs and against the median latency per batch measured above: the dense model, "
        "the hard supernet right after the search (MACs only: it is not timed) and the finetuned pruned model"
        + (f", beside other results: {', '.join(peer['label'] for peer in r['peers'])}." if r["peers"] else "."),
    ]
    if r["exports"]:
        lines += ["", "## Exports", "", *(f"- {fmt}: `{path}`" for fmt, path in r["exports"].items())]
    lines += ["", "## Config", "", "```toml", config_toml.rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(
    out: Path,
    *,
    dense: nn.Module,
    dense_metrics: dict[str, Any],
    pruned: nn.Module,
    pruned_metadata: dict[str, Any],
    search_summary: dict[str, Any],
    config: dict[str, Any],
    config_toml: str,
    exports: dict[str, str],
    batch_sizes: Sequence[int] = (1, 64),
    max_seconds: float = 3.0,
    threads: int | None = None,
    peers: Sequence[Point] = (),
) -> dict[str, Any]:
    """Measure latency, draw the figures and write ``report.md``, then ``report.json`` (last: it marks the
    report as complete). ``peers`` are other results shown on the accuracy plots and listed in the JSON.
    ``threads`` None: a latency budget's threads, else torch's setting. Returns the report dict."""
    input_size = tuple(pruned_metadata["input_size"])
    budget_bs = search_summary["final"].get("latency_batch_size")
    if threads is None and budget_bs is not None:  # a latency budget is timed at the threads it was measured at
        threads = search_summary.get("config", {}).get("search", {}).get("latency_threads")
    if budget_bs is not None and budget_bs not in batch_sizes:  # a latency budget is also timed at its batch size
        batch_sizes = sorted([*batch_sizes, budget_bs])
    with OthersCpu() as others:
        latency = compare_latency({"dense": dense, "pruned": pruned}, input_size, batch_sizes, threads=threads,
                                  max_seconds=max_seconds)
    if crowded(others.cores, latency["threads"]):  # every figure below moved with that load
        latency["warning"] = (f"other processes kept {others.cores:.1f} cores busy while timing; re-run the report "
                              "on an idle machine")
    dense_entry, pruned_entry = latency["models"]["dense"], latency["models"]["pruned"]
    dense_cost = Cost(dense_entry["macs"], dense_entry["params"])
    pruned_cost = Cost(pruned_entry["macs"], pruned_entry["params"])
    dense_spec, pruned_spec = spec_of(dense), spec_of(pruned)
    report = {
        "model": config["model"]["name"],
        "target": search_summary["target"],
        "dense": {"test_acc": dense_metrics["test_acc"], "val_acc": dense_metrics.get("val_acc"),
                  "macs": dense_cost.macs, "params": dense_cost.params},
        "pruned": {"test_acc": pruned_metadata["test_acc"], "val_acc": pruned_metadata.get("val_acc"),
                   "search_test_acc": search_summary["accuracy"]["test"],
                   "macs": pruned_cost.macs, "params": pruned_cost.params,
                   **{f"{k}_ratio": v for k, v in pruned_cost.ratio_to(dense_cost).items()}},
        "latency": latency,
        "latency_budget": _latency_budget(search_summary, latency),
        "stages": stage_rows(dense_spec, pruned_spec),
        "layers": pruned_metadata["layers"],
        "specs": {"dense": dense_spec, "pruned": pruned_spec},
        "exports": exports,
        "peers": [asdict(peer) for peer in peers],
        "figures": ["widths.png", "accuracy_macs.png", "accuracy_latency.png"],
        "config": {**config[""], **{section: keys for section, keys in config.items() if section}},
    }
    save_figure(widths_figure(layer_bars(report["layers"]),
                              f"Widths per block and stage: {report['model']}, dense vs pruned"), out / "widths.png")
    ms = {name: {bs: entry["latency"][bs]["median_ms"] for bs in batch_sizes}
          for name, entry in latency["models"].items()}
    points = [Point(DENSE, dense_cost.macs, dense_metrics["test_acc"], ms["dense"]),
              Point(SEARCHED, search_summary["final"]["macs"], search_summary["accuracy"]["test"]),
              Point(PRUNED, pruned_cost.macs, pruned_metadata["test_acc"], ms["pruned"])]
    save_figure(accuracy_macs_figure(points, peers, f"Test accuracy vs MACs: {report['model']}"),
                out / "accuracy_macs.png")
    save_figure(accuracy_latency_figure(points, batch_sizes, peers,
                                        f"Test accuracy vs measured latency: {report['model']}, CPU, "
                                        f"{latency['threads']} threads, fp32"), out / "accuracy_latency.png")
    table = width_table(dense_spec, pruned_spec, dense_cost, pruned_cost)
    atomic_write_text(_markdown(report, table, config_toml), out / "report.md")
    atomic_write_json(report, out / "report.json")
    return report
