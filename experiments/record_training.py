"""Turn finished ``dnas-prune train`` runs into a results page: per-epoch time, throughput and accuracy.

Each run directory holds the trainer's ``metrics.json`` (config, metadata, per-epoch history); this script adds
the command that produced it, the machine and the load it ran under, and writes JSON + a Markdown table. Several
runs (e.g. two recipes trained side by side) go into one page, compared on their validation accuracy.

    python experiments/record_training.py --name train_cifar_resnet20 \
        --run /work/runs/r20_bs128 "dnas-prune train --model cifar_resnet20 ... --out /work/runs/r20_bs128" \
        --run /work/runs/r20_bs64 "dnas-prune train ..." --note "both ran at once, 1 thread each"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"


def load_run(directory: Path, command: str) -> dict:
    metrics = json.loads((directory / "metrics.json").read_text())
    history = metrics["history"]
    if not history or history[-1]["epoch"] != metrics["config"]["epochs"]:
        raise SystemExit(f"{directory}: the run has not finished ({len(history)} of {metrics['config']['epochs']} epochs)")
    return {"dir": str(directory), "command": command, "config": metrics["config"], "metadata": metrics["metadata"],
            "precision": metrics.get("precision", metrics["config"]["precision"]),
            "history": history, "test_acc": history[-1].get("test_acc"), "val_acc": history[-1].get("val_acc"),
            "live_test_acc": history[-1].get("raw_test_acc", history[-1].get("test_acc")),
            "total_seconds": round(sum(h["epoch_time"] for h in history), 1)}


def _acc(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _average(config: dict) -> str:
    decay = config.get("ema_decay", 0.0)
    return f"EMA {decay}" if decay else "none"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Dense training: {report['name']}", "",
             f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} "
             f"logical CPUs, torch {m['torch']}. {report['note']}", ""]
    lines += ["| run | batch | peak lr | warm-up | weight decay | label smoothing | flips | crop padding | clean epochs "
              "| zero-init residual | weight average | precision | epochs | held out | val acc | **test acc** "
              "| live weights' test acc | training time | mean img/s |",
              "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        c, h = run["config"], run["history"]
        lines.append(f"| `{Path(run['dir']).name}` | {c['batch_size']} | {c['lr']} | {c['warmup_epochs']} | "
                     f"{c['weight_decay']} | {c['label_smoothing']} | {c.get('flip', 'random')} | {c.get('crop_padding', 4)} | "
                     f"{c.get('clean_epochs', 0)} | {'yes' if run['metadata'].get('zero_init_residual') else 'no'} | "
                     f"{_average(c)} | {run['precision']} | {c['epochs']} | "
                     f"{run['metadata'].get('val_size')} | {_acc(run['val_acc'])} | **{_acc(run['test_acc'])}** | "
                     f"{_acc(run['live_test_acc'])} | "
                     f"{run['total_seconds'] / 60:.1f} min | "
                     f"{sum(x['img_per_s'] for x in h) / len(h):.0f} |")
    for run in report["runs"]:
        c = run["config"]
        lines += ["", f"## `{Path(run['dir']).name}`", "", f"`{run['command']}`", "",
                  f"Recipe: SGD (Nesterov {c['nesterov']}, momentum {c['momentum']}), weight decay {c['weight_decay']} on "
                  f"conv/linear weights, label smoothing {c['label_smoothing']}, {c['schedule']} schedule, {run['precision']}, "
                  f"memory format {c['memory_format']}, seed {c['seed']}, random crops zero-padded by "
                  f"{c.get('crop_padding', 4)} pixels, flips {c.get('flip', 'random')}, the last {c.get('clean_epochs', 0)} "
                  "epochs un-augmented; "
                  f"{run['metadata'].get('val_size')} images held out "
                  "for validation. The test split is evaluated once, after the last epoch"
                  + (f", on an exponential moving average of the weights (decay {c['ema_decay']} per step; the live "
                     f"weights: {_acc(run['live_test_acc'])})." if c.get("ema_decay") else "."), "",
                  "| epoch | train loss | train acc | val acc | test acc | seconds | img/s |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for x in run["history"]:
            test = f"{x['test_acc']:.4f}" if "test_acc" in x else ""
            lines.append(f"| {x['epoch']} | {x['train_loss']:.4f} | {x['train_acc']:.4f} | {_acc(x.get('val_acc'))} | "
                         f"{test} | {x['epoch_time']:.1f} | {x['img_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/NAME.json and results/NAME.md")
    parser.add_argument("--run", nargs=2, action="append", required=True, metavar=("DIR", "COMMAND"),
                        help="a finished run directory and the command that produced it")
    parser.add_argument("--note", default="", help="how the runs shared the machine")
    args = parser.parse_args(argv)
    report = {"name": args.name, "machine": machine(), "note": args.note,
              "runs": [load_run(Path(d), command) for d, command in args.run]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report).split("\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
