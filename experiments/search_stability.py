"""Does the search steer itself? Every cell of parents x targets x search lengths, with the CLI's defaults.

Per cell it records what issue 25 asks: the largest relative deviation of the hard cost from the current target
after warm-up (every step), how far the final projection moved the cost, the lowest hard-network val accuracy at
an epoch end (BN refitted), and the accuracy before finetuning; and it checks the two promises: deviation <= 15 %
with the search ending within 5 % of the target, and no epoch end below half the parent's val accuracy.
Writes experiments/results/search_stability.{json,md} and one figure per model (target and hard ratio vs step).

    python experiments/search_stability.py --data ../shared/data/cifar10-jpeg \\
        --parent cifar_resnet20=cifar10 --parent cifar_resnet20=runs/other/model.pt --limit-train 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from matplotlib.figure import Figure

from dnas_prune import SearchConfig, search
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.train.recipes import SEARCH_RECIPE as SEARCH_TRAIN_DEFAULTS
from dnas_prune.report.report import save_figure
from dnas_prune.train.data import load_dataset
from dnas_prune.io.pruned import load_pretrained
from dnas_prune.train.loop import Trainer

from peers import machine

RESULTS = Path(__file__).parent / "results"


def parse_parent(text: str) -> tuple[str, str]:
    model, _, source = text.partition("=")
    if not source:
        raise argparse.ArgumentTypeError(f"--parent takes MODEL=SOURCE (SOURCE: 'cifar10' or a model.pt), got {text!r}")
    return model, source


def run_cell(model_name: str, source: str, data, target: float, epochs: int, seed: int, out: Path,
             parent_val: float) -> dict:
    torch.manual_seed(seed)
    model = load_pretrained(source, model_name, data.num_classes)
    train = replace(SEARCH_TRAIN_DEFAULTS, epochs=epochs, seed=seed, progress=False)
    config = SearchConfig(target=target)
    start = time.perf_counter()
    if (out / "search.json").is_file():  # a finished cell of an earlier invocation with the same --work
        summary = json.loads((out / "search.json").read_text())
        current = json.loads(json.dumps(asdict(config)))  # a field added since that cell ran is at its default
        if summary["config"]["search"] != {k: current[k] for k in summary["config"]["search"] if k in current}:
            raise SystemExit(f"{out} holds a search with other settings; delete it or use another --work")
        seconds = sum(h.get("epoch_time", 0.0) for h in summary["history"])
    else:
        _, summary = search(model, data, train, config, out)
        seconds = time.perf_counter() - start
    steering, history = summary["steering"], summary["history"]
    # the search evaluates its last epoch once, after the projection (accuracy); older summaries have it in history
    val_by_epoch = [h.get("val_acc", summary["accuracy"]["val"]) for h in history]
    lowest = min(val_by_epoch)
    deviation = steering["max_rel_deviation_after_warmup"]
    end = summary["before_projection"]["macs_ratio"] / target - 1.0
    return {
        "model": model_name, "parent": source, "target": target, "epochs": epochs, "seed": seed,
        "max_rel_deviation": deviation, "end_rel_deviation": end, "projection_moved": summary["projection"]["moved"],
        "lowest_val_acc": lowest, "parent_val_acc": parent_val, "val_by_epoch": val_by_epoch,
        "hard_ratio_by_epoch": [h["hard_macs_ratio"] for h in history],
        "acc_before_finetune": summary["accuracy"]["test"], "final_macs_ratio": summary["final"]["macs_ratio"],
        "tracks": deviation <= 0.15 and abs(end) <= 0.05, "no_collapse": lowest >= 0.5 * parent_val,
        "trace": steering["trace"], "seconds": seconds,
    }


def figure(rows: list[dict], model: str, path: Path) -> None:
    fig = Figure(figsize=(9, 4.5), dpi=110)
    ax = fig.add_subplot()
    colors = {0.5: "tab:blue", 0.3: "tab:orange", 0.2: "tab:green"}
    for row in rows:
        total = row["trace"][-1]["step"] or 1
        steps = [t["step"] / total for t in row["trace"]]
        style = "-" if row["epochs"] > 1 else "--"
        color = colors.get(row["target"], "tab:gray")
        label = f"target {row['target']:g}, {row['epochs']} ep, parent {Path(row['parent']).stem}"
        ax.plot(steps, [t["hard_ratio"] for t in row["trace"]], style, color=color, label=label, linewidth=1.2)
        ax.plot(steps, [t["target"] for t in row["trace"]], ":", color=color, linewidth=0.8)
    ax.set_title(f"{model}: hard MACs ratio (solid/dashed) follows the ramped target (dotted)")
    ax.set_xlabel("fraction of the search")
    ax.set_ylabel("MACs / dense MACs")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def render(result: dict) -> str:
    lines = ["# Search stability: the hard cost follows the target, no collapse\n",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags'])}), "
             f"{result['machine']['logical_cpus']} logical CPUs, torch {result['machine']['torch']}; "
             f"training subset {result['limit_train']} images, val {result['val_size']} held out; seed {result['seed']}; "
             "every knob at the CLI default (search recipe of `dnas-prune search`).\n",
             "| model | parent | target | search epochs | max rel. deviation after warm-up | end vs target | "
             "projection moved | lowest hard val acc (parent) | acc before finetune | tracks | no collapse |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["cells"]:
        lines.append(f"| {r['model']} | {r['parent']} | {r['target']:g} | {r['epochs']} | {r['max_rel_deviation']:.3f} | "
                     f"{r['end_rel_deviation']:+.3f} | {r['projection_moved']:+.4f} | {r['lowest_val_acc']:.3f} "
                     f"({r['parent_val_acc']:.3f}) | {r['acc_before_finetune']:.3f} | {'yes' if r['tracks'] else 'NO'} | "
                     f"{'yes' if r['no_collapse'] else 'NO'} |")
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in result["figures"]), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--parent", action="append", type=parse_parent, required=True, help="MODEL=SOURCE, repeatable")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5])
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="search_stability")
    p.add_argument("--work", type=Path, default=Path("runs/search_stability"))
    args = p.parse_args()
    data, _ = load_dataset("cifar", args.data, val_size=args.val_size, limit_train=args.limit_train, seed=args.seed)
    cells = []
    for model_name, source in args.parent:
        parent = load_pretrained(source, model_name, data.num_classes)
        evaluator = Trainer(parent, data, replace(SEARCH_TRAIN_DEFAULTS, progress=False), args.work / "parent_eval")
        parent_val = evaluator.evaluate(data.val)["acc"]
        for epochs in args.epochs:
            for target in args.targets:
                out = args.work / f"{model_name}_{Path(source).stem}_{target:g}_{epochs}ep"
                row = run_cell(model_name, source, data, target, epochs, args.seed, out, parent_val)
                cells.append(row)
                print(f"{model_name} {source} target {target:g} {epochs} ep: deviation {row['max_rel_deviation']:.3f}, "
                      f"end {row['end_rel_deviation']:+.3f}, lowest val {row['lowest_val_acc']:.3f} "
                      f"(parent {parent_val:.3f}), before finetune {row['acc_before_finetune']:.3f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    figures = []
    for model_name in dict.fromkeys(m for m, _ in args.parent):
        path = RESULTS / f"{args.name}_{model_name}.png"
        figure([c for c in cells if c["model"] == model_name], model_name, path)
        figures.append(path.name)
    result = {"command": "python experiments/search_stability.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "limit_train": args.limit_train, "val_size": args.val_size, "seed": args.seed, "cells": cells,
              "figures": figures}
    atomic_write_json(result, RESULTS / f"{args.name}.json")
    atomic_write_text(render(result), RESULTS / f"{args.name}.md")
    failed = [c for c in cells if not (c["tracks"] and c["no_collapse"])]
    print(f"{len(cells) - len(failed)}/{len(cells)} cells meet both promises; wrote {RESULTS / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
