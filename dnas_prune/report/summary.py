"""Human-readable architecture tables: dense vs pruned widths per stage and block."""

from __future__ import annotations

from typing import Any

from ..models import Spec
from ..models.cost import Cost
from ..search.supernet import Supernet


def _inner(blocks: list[dict]) -> str:
    return ", ".join("proj" if b["inner"] is None else "/".join(map(str, b["inner"])) for b in blocks) or "-"


def width_table(dense: Spec, pruned: Spec, dense_cost: Cost | None = None, pruned_cost: Cost | None = None) -> str:
    """A Markdown table: per stage the stream width, how many residual branches survive, and the inner
    widths of the blocks that remain ("proj" = only the projection shortcut is left)."""
    lines = ["| stage | stream width | residual blocks | inner widths (dense) | inner widths (pruned) |",
             "|---|---|---|---|---|"]
    for s, (d, p) in enumerate(zip(dense["stages"], pruned["stages"]), start=1):
        kept = sum(1 for b in p["blocks"] if b["inner"] is not None)
        dense_inner = sorted({"/".join(map(str, b["inner"])) for b in d["blocks"] if b["inner"] is not None})
        lines.append(f"| layer{s} | {d['width']} -> {p['width']} | {kept}/{len(d['blocks'])} | "
                     f"{len(d['blocks'])}x {', '.join(dense_inner)} | {_inner(p['blocks'])} |")
    lines.append(f"| stem | {dense['stem']} -> {pruned['stem']} | | | |")
    if dense_cost is not None and pruned_cost is not None:
        lines.append("")
        lines.append(
            f"MACs {dense_cost.macs / 1e6:.2f}M -> {pruned_cost.macs / 1e6:.2f}M "
            f"({pruned_cost.macs / dense_cost.macs:.1%}); params {dense_cost.params / 1e6:.3f}M -> "
            f"{pruned_cost.params / 1e6:.3f}M ({pruned_cost.params / dense_cost.params:.1%})"
        )
    return "\n".join(lines)


def layer_widths(net: Supernet) -> list[dict[str, Any]]:
    """Dense and kept width of every channel group in network order; a removed block's inner groups keep 0."""
    widths = net.decisions().widths
    return [{"name": name, "kind": net.groups[name].kind, "dense": net.groups[name].size, "pruned": widths[name]}
            for name in net.channel_groups]
