"""How does a latency search's projection move as the landing re-aims it? For each searched supernet given, the
architecture ``budget_state`` projects onto the search's own latency table at a sweep of targets, from the search's
target down to ``--lowest`` of it (the landing re-aims below the target when the device reads the model slower than
the table does).

Why: a projection should move little when its target moves little; the landing picks the target from a timing on a
shared machine, so a projection that jumps between shapes (a block swapped for another block's channels) between
nearby targets gives a model's shape to the host's noise. Reads the searches' ``supernet.pt`` (the gates the search
left; the projection's pins are released first), measures nothing. Writes experiments/results/{name}.{json,md}.

    python experiments/projection_path.py RUN/search/supernet.pt ... --name projection_path
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from dnas_prune.errors import DnasPruneError
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.search.budget import budget_state, cost_ratios
from dnas_prune.search.hooks import load_supernet
from dnas_prune.search.latency import table_for_settings
from dnas_prune.search.supernet import Supernet

from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"


def shape(net: Supernet) -> dict:
    """The current hard decisions: ratios on the table and the inner widths of the open blocks."""
    decided = net.decisions()
    ratios = cost_ratios(net, *net.counts_and_blocks(hard=True))
    blocks = {b.name: [decided.widths[g] for g in b.inner] for b in net.blocks
              if b.gate is not None and decided.blocks[b.name]}
    return {"latency_ratio": ratios["latency"], "macs_ratio": ratios["macs"], "blocks": blocks,
            "widths": {g: decided.widths[g] for g in net.channel_groups}}


def moved(a: dict, b: dict) -> int:
    """Channels opened or closed between two shapes."""
    return sum(abs(a["widths"][g] - b["widths"][g]) for g in a["widths"])


@torch.no_grad()
def path(supernet: Path, steps: int, lowest: float) -> dict:
    net = load_supernet(supernet)
    if net.budget.get("metric") != "latency":
        raise ValueError(f"{supernet}: not a latency search; pass supernets of --target-latency searches")
    net.latency = table_for_settings(net.budget["latency_table"]).for_supernet(net)
    net.release_gates()
    searched = shape(net)
    target = float(net.budget["target"])
    record = supernet.parent / "search.json"  # the search's own record: its rounding, and the landing's tries
    round_to = json.loads(record.read_text())["config"]["search"].get("round_to") if record.is_file() else None
    points = []
    for k in range(steps + 1):
        aim = target * (1.0 - (1.0 - lowest) * k / steps)
        with net.pinned(budget_state(net, "latency", aim, round_to, strict=False)):
            point = {"aim": aim, **shape(net)}
        point["moved_from_search"] = moved(point, searched)
        point["moved_from_previous"] = moved(point, points[-1]) if points else 0
        points.append(point)
    landing = []  # the landing's tries, from the search's own record beside the supernet
    if record.is_file():
        tries = json.loads(record.read_text()).get("projection", {}).get("measured") or []
        landing = [{"aim": t["projected_to"], "measured_ratio": t["measured_ratio"], "pinned": bool(t.get("pinned"))}
                   for t in tries]
    return {"supernet": str(supernet), "target": target, "landing": landing, "close_thin_blocks": net.budget.get("close_thin_blocks"),
            "searched": searched, "points": points}


def markdown(report: dict) -> str:
    lines = [f"# {report['name']}", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpu']} "
             f"({', '.join(report['machine']['cpu_flags'])}); measured nothing, table ratios only.", ""]
    for run in report["runs"]:
        s = run["searched"]
        blocks = " ".join(f"{n}:{'/'.join(map(str, w))}" for n, w in s["blocks"].items())
        lines += [f"## {run['supernet']}", "", f"thin blocks: {run['close_thin_blocks']}; the search left: "
                  "latency "
                  f"{s['latency_ratio']:.3f}, MACs {s['macs_ratio']:.3f}, open blocks (inner widths) {blocks}", "",
                  "the landing aimed at: " + (", ".join(f"{t['aim']:.4f} (measured {t['measured_ratio']:.3f}"
                                                         f"{', kept' if t['pinned'] else ''})" for t in run["landing"])
                                               or "no record"), "",
                  "| aim | latency | MACs | open blocks (inner widths) | channels moved from the search | "
                  "from the previous aim |", "|---|---|---|---|---|---|"]
        for p in run["points"]:
            blocks = " ".join(f"{n}:{'/'.join(map(str, w))}" for n, w in p["blocks"].items())
            lines.append(f"| {p['aim']:.4f} | {p['latency_ratio']:.4f} | {p['macs_ratio']:.3f} | {blocks} | "
                         f"{p['moved_from_search']} | {p['moved_from_previous']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("supernets", nargs="+", type=Path, help="RUN/search/supernet.pt of latency searches")
    p.add_argument("--steps", type=int, default=10, help="targets in the sweep after the search's own")
    p.add_argument("--lowest", type=float, default=0.8, help="the sweep's last target, as a fraction of the search's")
    p.add_argument("--name", default="projection_path")
    args = p.parse_args(argv)
    for supernet in args.supernets:
        if not supernet.is_file():
            p.error(f"no such supernet: {supernet} (pass RUN/search/supernet.pt of a finished search)")
    try:
        runs = [path(s, args.steps, args.lowest) for s in args.supernets]
    except (ValueError, DnasPruneError) as e:
        p.error(str(e))
    report = {"name": args.name, "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(markdown(report), RESULTS / f"{args.name}.md")
    atomic_write_json(report, RESULTS / f"{args.name}.json")
    print(markdown(report))


if __name__ == "__main__":
    main()
