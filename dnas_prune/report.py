"""The run report: dense vs pruned accuracy, cost, latency and widths as ``report.md``/``report.json`` + PNGs.

Latency of both models is measured side by side in the same process (:func:`~dnas_prune.profile.compare_latency`),
so machine load affects both alike. The figures are drawn with plain tensor ops and written with
``torchvision.io``: the report needs no plotting library.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.io import write_png

from .checkpoint import atomic_write_json, atomic_write_text
from .cost import Cost
from .models import Spec, spec_of
from .profile import compare_latency
from .summary import width_table

Color = tuple[int, int, int]
GRAY: Color = (200, 200, 200)
DARK: Color = (60, 60, 60)
BLUE: Color = (31, 119, 180)
ORANGE: Color = (255, 127, 14)

# 3x5 bitmap glyphs for tick labels (rows top to bottom).
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "%": "101001010100101",
    "M": "101111111101101",
}


class Canvas:
    """An RGB uint8 image with the few primitives a bar chart and a scatter plot need."""

    def __init__(self, width: int, height: int) -> None:
        self.pixels = torch.full((3, height, width), 255, dtype=torch.uint8)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill ``[x0, x1) x [y0, y1)``, clipped to the image."""
        _, h, w = self.pixels.shape
        x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
        if x1 > x0 and y1 > y0:
            self.pixels[:, y0:y1, x0:x1] = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)

    def text(self, x: int, y: int, s: str, color: Color = DARK, scale: int = 2) -> None:
        """Draw ``s`` (digits, '.', '%', 'M') with its top-left corner at ``(x, y)``."""
        for i, char in enumerate(s):
            for bit, on in enumerate(_FONT[char]):
                if on == "1":
                    row, col = divmod(bit, 3)
                    cx, cy = x + (4 * i + col) * scale, y + row * scale
                    self.rect(cx, cy, cx + scale, cy + scale, color)

    def save(self, path: Path) -> Path:
        write_png(self.pixels, str(path))
        return path


def _text_width(s: str, scale: int = 2) -> int:
    return (4 * len(s) - 1) * scale


def widths_figure(layers: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bars per channel group in network order: gray the dense width, over it the kept width
    (blue for inner layers of blocks, orange for residual-stream widths)."""
    slot, left, right, top, bottom, height = 10, 44, 10, 12, 12, 200
    canvas = Canvas(left + slot * len(layers) + right, top + height + bottom)
    peak = max(layer["dense"] for layer in layers)
    base = top + height
    for i, layer in enumerate(layers):
        x = left + i * slot + 1
        canvas.rect(x, base - round(height * layer["dense"] / peak), x + slot - 2, base, GRAY)
        color = ORANGE if layer["kind"] == "stream" else BLUE
        canvas.rect(x, base - round(height * layer["pruned"] / peak), x + slot - 2, base, color)
    canvas.rect(left - 2, top, left - 1, base + 1, DARK)
    canvas.rect(left - 2, base, left + slot * len(layers), base + 1, DARK)
    canvas.text(left - 6 - _text_width(str(peak)), top - 4, str(peak))
    canvas.text(left - 6 - _text_width("0"), base - 9, "0")
    return canvas.save(path)


def accuracy_figure(points: Sequence[tuple[float, float, Color]], path: Path) -> Path:
    """Test accuracy against MACs: one square per ``(macs, accuracy, color)``; ticks label the axis ends
    (MACs in millions from 0, accuracy in percent)."""
    points = [p for p in points if math.isfinite(p[1])]
    left, right, top, bottom, width, height = 64, 16, 12, 28, 300, 200
    canvas = Canvas(left + width + right, top + height + bottom)
    x_max = max(p[0] for p in points) * 1.1
    accs = [p[1] for p in points]
    y_lo, y_hi = max(0.0, min(accs) - 0.05), min(1.0, max(accs) + 0.05)
    base = top + height
    for macs, acc, color in points:
        x = left + round(width * macs / x_max)
        y = base - round(height * (acc - y_lo) / max(y_hi - y_lo, 1e-9))
        canvas.rect(x - 4, y - 4, x + 5, y + 5, color)
    canvas.rect(left - 2, top, left - 1, base + 1, DARK)
    canvas.rect(left - 2, base, left + width, base + 1, DARK)
    hi, lo, x_label = f"{100 * y_hi:.1f}%", f"{100 * y_lo:.1f}%", f"{x_max / 1e6:.1f}M"
    canvas.text(left - 6 - _text_width(hi), top - 4, hi)
    canvas.text(left - 6 - _text_width(lo), base - 9, lo)
    canvas.text(left - 2, base + 6, "0")
    canvas.text(left + width - _text_width(x_label), base + 6, x_label)
    return canvas.save(path)


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


def _markdown(r: dict[str, Any], table: str, config_toml: str) -> str:
    d, p, lat = r["dense"], r["pruned"], r["latency"]
    lines = [
        f"# dnas_prune run: {r['model']}",
        "",
        f"Budget: {r['target']['metric']} at {r['target']['ratio']:.0%} of the dense model.",
        "",
        "| | dense | pruned (finetuned) |",
        "|---|---|---|",
        f"| test accuracy | {_pct(d['test_acc'])} | {_pct(p['test_acc'])} |",
        f"| val accuracy | {_pct(d.get('val_acc'))} | {_pct(p.get('val_acc'))} |",
        f"| MACs | {d['macs'] / 1e6:.2f}M | {p['macs'] / 1e6:.2f}M ({p['macs_ratio']:.1%}) |",
        f"| params | {d['params'] / 1e6:.3f}M | {p['params'] / 1e6:.3f}M ({p['params_ratio']:.1%}) |",
    ]
    for bs in lat["batch_sizes"]:
        dense_ms = lat["models"]["dense"]["latency"][bs]["median_ms"]
        pruned_ms = lat["models"]["pruned"]["latency"][bs]["median_ms"]
        lines.append(f"| latency, batch {bs} (median) | {dense_ms:.2f} ms | {pruned_ms:.2f} ms "
                     f"(speedup {lat['ratios']['pruned'][bs]['speedup']:.2f}x) |")
    lines += [
        "",
        f"Test accuracy right after the search (hard supernet, before finetuning): {_pct(p['search_test_acc'])}.",
        f"Latency: CPU, {lat['threads']} threads, fp32, both models timed in the same run with interleaved repeats; "
        "each model runs in its faster memory format.",
        "",
        "## Widths",
        "",
        table,
        "",
        "![per-layer widths](widths.png)",
        "",
        "Per channel group in network order: gray the dense width, blue the kept inner width of a block "
        "(0 when the block is removed), orange the kept residual-stream width.",
        "",
        "![accuracy vs MACs](accuracy_macs.png)",
        "",
        "Test accuracy (y, %) against MACs (x, millions): gray dense, orange after search, blue after finetuning.",
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
) -> dict[str, Any]:
    """Measure latency, draw the figures and write ``report.md``, then ``report.json`` (last: it marks the
    report as complete). Returns the report dict."""
    input_size = tuple(pruned_metadata["input_size"])
    latency = compare_latency({"dense": dense, "pruned": pruned}, input_size, batch_sizes, threads=threads,
                              max_seconds=max_seconds)
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
        "stages": stage_rows(dense_spec, pruned_spec),
        "layers": pruned_metadata["layers"],
        "specs": {"dense": dense_spec, "pruned": pruned_spec},
        "exports": exports,
        "figures": ["widths.png", "accuracy_macs.png"],
        "config": {**config[""], **{section: keys for section, keys in config.items() if section}},
    }
    widths_figure(report["layers"], out / "widths.png")
    search_macs = search_summary["final"]["macs"]
    accuracy_figure([(dense_cost.macs, dense_metrics["test_acc"], GRAY),
                     (search_macs, search_summary["accuracy"]["test"], ORANGE),
                     (pruned_cost.macs, pruned_metadata["test_acc"], BLUE)], out / "accuracy_macs.png")
    table = width_table(dense_spec, pruned_spec, dense_cost, pruned_cost)
    atomic_write_text(_markdown(report, table, config_toml), out / "report.md")
    atomic_write_json(report, out / "report.json")
    return report
