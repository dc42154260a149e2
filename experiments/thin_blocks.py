"""Do the thin residual blocks a latency search kept cost it accuracy? Three models per latency batch size and seed:

- A: searched with ``--no-close-thin-blocks`` (the default when this page was measured), as it landed;
- B: A with every block whose inner width is one channel step closed, and the latency that frees (on the search's
  own table) spent on channels of the blocks left, best-scored first (no block reopened):
  ``--close-thin-blocks-at projection`` since, which also reopens a block (two steps wide) when channels cannot
  reach its landing window;
- C: searched with ``--close-thin-blocks`` (the default since): a block goes once two channel steps of its inner
  group would not stay;
- D: A's search projected again onto A's latency on its table, as the projection does with ``close_thin_blocks``
  (thin blocks go, the latency is re-spent on the best-scored units; a block reopens at two steps).

Why: a latency search ranks channel gates per MACs and started block gates at the top of the ranking, so the budget
closed channels (at batch 1 nearly free in latency) long before it closed a block, and blocks one channel wide
survived at much of a whole block's time. B measures what they cost; C and D, the search closing them while it
runs and only at its projection.

Each search is ``dnas-prune search --target-latency T --latency-batch-size B`` (a subprocess, the command in the
results); each model is finetuned alike (``dnas-prune finetune``), then dense, A, B and C are timed in one run,
interleaved (``compare_latency``), at batch B and the table's threads, ``--timings`` times (median of the paired
ratios). Writes experiments/results/{name}.{json,md}.

    python experiments/thin_blocks.py --data ../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from dnas_prune.device.timing import compare_latency
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.io.pruned import load_pretrained, load_pruned_with_metadata, save_pruned
from dnas_prune.models.cost import count_cost
from dnas_prune.search.budget import budget_state, channel_step, cost_ratios
from dnas_prune.search.fold import fold
from dnas_prune.search.hooks import load_supernet
from dnas_prune.search.latency import table_for_settings
from dnas_prune.search.supernet import Supernet

from latency_budget import run
from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("A", "B", "C", "D")


def thin_blocks(net: Supernet) -> list[str]:
    """Open gated blocks whose every inner group is at most one channel step wide."""
    d = net.decisions()
    return [b.name for b in net.blocks if b.kind != "projection" and b.name in net.groups and d.blocks[b.name]
            and all(d.widths[g] <= channel_step(net, g, None) for g in b.inner)]


@torch.no_grad()
def close_and_respend(net: Supernet, closed: list[str]) -> None:
    """Pin ``closed`` blocks shut, then open channels of the groups still alive, best-scored step first, while the
    table's latency stays within what the searched state costs. No block is reopened."""
    d = net.decisions()
    budget = cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"]
    masks = {n: d.masks[n].clone() for n in net.channel_groups if net.groups[n].gated}
    dead = {g for b in net.blocks if b.name in closed for g in b.inner}
    dead |= {g for b in net.blocks if b.kind != "projection" and not d.blocks[b.name] for g in b.inner}
    state = {**masks, **{b: torch.tensor([False]) for b in closed}}
    while True:
        net.set_gate_state(state)
        best = None
        for name, mask in masks.items():
            if name in dead or bool(mask.all()):
                continue
            score = net.gate(name).score().cpu()[net.channel_assignment(name).cpu()]
            score = torch.where(mask, torch.full_like(score, -float("inf")), score)
            i = int(score.argmax())
            if best is None or float(score[i]) > best[0]:
                grown = mask.clone()
                grown[i] = True
                with net.pinned({name: grown}):
                    if cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"] <= budget + 1e-12:
                        best = (float(score[i]), name, grown)
        if best is None:
            return
        masks[best[1]] = state[best[1]] = best[2]


def write_pruned(net: Supernet, path: Path) -> dict:
    model = fold(net)
    save_pruned(model, path, input_size=list(net.input_size), dense_macs=net.dense_cost.macs,
                dense_params=net.dense_cost.params)
    d = net.decisions()
    return {"table_latency_ratio": cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"],
            "macs_ratio": count_cost(model, net.input_size).macs / net.dense_cost.macs,
            "blocks_open": sum(bool(v) for v in d.blocks.values()),
            "inner_widths": {g: d.widths[g] for b in net.blocks if b.kind != "projection" for g in b.inner}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--pretrained", default="cifar10")
    p.add_argument("--target", type=float, default=0.5, help="--target-latency of every search")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--timings", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("runs/thin_blocks"))
    p.add_argument("--name", default="thin_blocks")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.txt"
    rows = []
    for bs in args.batch_sizes:
        for seed in args.seeds:
            out = args.work / f"bs{bs}_seed{seed}"
            search = ["dnas-prune", "search", "--model", args.model, "--pretrained", args.pretrained, "--data",
                      args.data, "--target-latency", f"{args.target:g}", "--latency-batch-size", str(bs), "--epochs",
                      str(args.search_epochs), "--seed", str(seed), "--no-tensorboard", "--no-progress"]
            row = {"batch_size": bs, "seed": seed, "variants": {}}
            for searched, flags in (("search", ["--no-close-thin-blocks"]), ("search_close", ["--close-thin-blocks"])):
                command = [*search, *flags, "--out", str(out / searched)]
                row[searched] = shlex.join(command)
                if not (out / searched / "supernet.pt").is_file():
                    run(command, log, dict(os.environ))
            net = load_supernet(out / "search" / "supernet.pt")
            net.latency = table_for_settings(net.budget["latency_table"]).for_supernet(net)
            closed = thin_blocks(net)
            row["closed"] = closed
            row["variants"]["A"] = write_pruned(net, out / "A.pt")
            searched = {n: m.clone() for n, m in net.decisions().masks.items()}
            target = row["variants"]["A"]["table_latency_ratio"]
            net.budget["close_thin_blocks"] = True
            with net.pinned(budget_state(net, "latency", target, strict=False)):
                row["variants"]["D"] = write_pruned(net, out / "D.pt")
            net.budget["close_thin_blocks"] = False
            net.set_gate_state(searched)
            close_and_respend(net, closed)
            row["variants"]["B"] = write_pruned(net, out / "B.pt")
            closing = load_supernet(out / "search_close" / "supernet.pt")
            closing.latency = table_for_settings(closing.budget["latency_table"]).for_supernet(closing)
            row["variants"]["C"] = write_pruned(closing, out / "C.pt")
            models = {"dense": load_pretrained(args.pretrained, args.model, 10).eval()}
            for v in VARIANTS:
                finetune = ["dnas-prune", "finetune", str(out / f"{v}.pt"), "--data", args.data, "--epochs",
                            str(args.finetune_epochs), "--seed", str(seed), "--out", str(out / f"ft_{v}"),
                            "--no-tensorboard", "--no-progress"]
                if not (out / f"ft_{v}" / "pruned.pt").is_file():
                    run(finetune, log, dict(os.environ))
                model, meta = load_pruned_with_metadata(out / f"ft_{v}" / "pruned.pt")
                models[v] = model.eval()
                row["variants"][v].update(finetune=shlex.join(finetune), test_acc=meta["test_acc"])
            threads = net.latency.table.settings["threads"]
            timed = [compare_latency(models, (3, 32, 32), [bs], threads=threads, with_cost=False)["models"]
                     for _ in range(args.timings)]
            for v in VARIANTS:
                row["variants"][v]["measured_ratios"] = [t[v]["latency"][bs]["paired_ratio"] for t in timed]
                row["variants"][v]["measured_ratio"] = statistics.median(row["variants"][v]["measured_ratios"])
            row["threads"] = threads
            rows.append(row)
            print(f"bs {bs} seed {seed}: B closed {closed or 'none'}; " + ", ".join(
                f"{v} {row['variants'][v]['test_acc']:.4f} at {row['variants'][v]['measured_ratio']:.3f} of dense"
                for v in VARIANTS), flush=True)
    result = {"command": "python " + shlex.join(["experiments/thin_blocks.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(), "model": args.model, "target": args.target,
              "search_epochs": args.search_epochs, "finetune_epochs": args.finetune_epochs, "rows": rows}
    atomic_write_json(result, RESULTS / f"{args.name}.json")
    lines = ["# Thin blocks of a latency search: kept (A), closed and re-spent (B), closed by the search (C) or its "
             "projection (D)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']['cpu']} "
             f"({', '.join(result['machine']['cpu_flags'])}), torch {result['machine']['torch']}; {args.model} from the "
             f"shipped parent, --target-latency {args.target:g}, search {args.search_epochs} epoch(s), finetune "
             f"{args.finetune_epochs} epoch(s) on the full training split, the search's seed for both finetunes. "
             "Measured ratio: dense, A, B, C and D timed in one run, interleaved, at the table's threads; median of "
             f"{args.timings} timings.", "",
             "Each model: test accuracy after finetuning; blocks kept; MACs ratio; latency ratio on its search's table / "
             "measured.", "",
             "| batch | seed | blocks closed in B | A | B | C | D | B - A | C - A | D - A |",
             "|---:|---:|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        v = r["variants"]
        cell = lambda m: (f"**{100 * m['test_acc']:.2f} %**, {m['blocks_open']} blocks, MACs {m['macs_ratio']:.3f}, "
                          f"{m['table_latency_ratio']:.3f} / {m['measured_ratio']:.3f}")
        lines.append(f"| {r['batch_size']} | {r['seed']} | {', '.join(r['closed']) or '-'} | {cell(v['A'])} | "
                     f"{cell(v['B'])} | {cell(v['C'])} | {cell(v['D'])} | " + " | ".join(
                         f"{100 * (v[x]['test_acc'] - v['A']['test_acc']):+.2f}" for x in "BCD") + " |")
    lines += ["", "Commands per row: in the JSON (`search`, `search_close`, each variant's `finetune`)."]
    atomic_write_text("\n".join(lines) + "\n", RESULTS / f"{args.name}.md")
    print(f"wrote {RESULTS / args.name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
