"""Does the process that trained a network time it as a new process does? Why a landing times in a new process.

Runs issue 28's acceptance search in this process (``dnas-prune search ... --target-latency T`` and ``finalize``
through the CLI's ``main``, so this process has trained the supernet), then times the dense parent and the
finalized model side by side (``compare_latency``, the table's threads) ``--rounds`` times here, each followed by
one timing in a new process (``latency_budget.py --time-pair``), so that both sample the machine's same minute.
Also lists the landing's own timings (search.json), which the search takes in a new process.
Writes experiments/results/{name}.{json,md}. Run it with nothing else on the machine.

    python experiments/landing_process.py --data ../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dnas_prune.cli import main as cli
from dnas_prune.device.timing import compare_latency
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text

from latency_budget import count_within, load_pair
from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"


def within(ratios: list[float], target: float) -> str:
    return "{} of {}".format(*count_within(ratios, target))


def render(result: dict) -> str:
    m, target = result["machine"], result["target"]
    here = [r["this_process"] for r in result["rounds"]]
    fresh = [r["new_process"] for r in result["rounds"]]
    landing = [x for t in result["landing_tries"] for x in t["measured_ratios"]]
    lines = ["# A process that trained vs new processes: the same pair, timed side by side in turns\n",
             f"Command: `{result['command']}`  ",
             f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {result['threads']} threads, torch {m['torch']}; "
             f"batch {result['batch_size']}, target {target:g}, fp32.\n",
             "| timed in | readings | median | range | within ±10 % of the target |", "|---|---:|---:|---|---:|"]
    for name, ratios in (("this process, after its search", here), ("a new process, between them", fresh),
                         ("the landing (its own new process, during the search)", landing)):
        lines.append(f"| {name} | {len(ratios)} | {statistics.median(ratios):.3f} | {min(ratios):.3f}–{max(ratios):.3f} "
                     f"| {within(ratios, target)} |")
    lines += ["", "| round | at | this process | new process |", "|---:|---|---:|---:|"]
    for i, r in enumerate(result["rounds"], 1):
        lines.append(f"| {i} | {r['at']} | {r['this_process']:.3f} | {r['new_process']:.3f} |")
    lines += ["", "Commands run in this process:", ""] + [f"- `{c}`" for c in result["cli"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("runs/landing_process"))
    p.add_argument("--name", default="landing_process")
    args = p.parse_args()
    out = args.work / f"cifar_resnet20_{args.target:g}_bs{args.batch_size}"
    search = ["search", "--model", "cifar_resnet20", "--pretrained", "cifar10", "--data", args.data,
              "--target-latency", f"{args.target:g}", "--latency-batch-size", str(args.batch_size), "--epochs", "1",
              "--limit-train", "2048", "--out", str(out), "--no-tensorboard", "--no-progress"]
    finalize = ["finalize", str(out / "supernet.pt"), "-o", str(out / "pruned.pt"), "--no-tensorboard"]
    for command in (search, finalize):
        code = cli(command)
        if code:
            raise SystemExit(f"dnas-prune {shlex.join(command)} failed (exit {code})")
    tries = json.loads((out / "search.json").read_text())["projection"]["measured"]
    pair, bs, rounds = load_pair("cifar_resnet20", "cifar10", out / "pruned.pt"), args.batch_size, []
    for _ in range(args.rounds):
        timed = compare_latency(pair, (3, 32, 32), [bs], threads=torch.get_num_threads(), with_cost=False)["models"]
        new = subprocess.run([sys.executable, str(Path(__file__).with_name("latency_budget.py")), "--data", args.data,
                              "--batch-size", str(bs), "--time-pair", str(out / "pruned.pt"), "--threads",
                              str(torch.get_num_threads())], capture_output=True, text=True, check=True)
        rounds.append({"at": time.strftime("%H:%M:%S"), "this_process": timed["pruned"]["latency"][bs]["paired_ratio"],
                       "new_process": json.loads(new.stdout.strip().splitlines()[-1])["ratio"]})
        print(f"{rounds[-1]['at']} this process {rounds[-1]['this_process']:.3f}, "
              f"new process {rounds[-1]['new_process']:.3f}", flush=True)
    result = {"command": "python experiments/landing_process.py " + shlex.join(sys.argv[1:]), "machine": machine(),
              "threads": torch.get_num_threads(), "target": args.target, "batch_size": bs,
              "cli": ["dnas-prune " + shlex.join(c) for c in (search, finalize)], "landing_tries": tries,
              "rounds": rounds}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(result, RESULTS / f"{args.name}.json")
    atomic_write_text(render(result), RESULTS / f"{args.name}.md")
    print(f"wrote {RESULTS / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
