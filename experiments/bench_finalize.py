"""How long finalization takes: wrap, randomize gates, ``finalize`` — timed per registry model.

    python experiments/bench_finalize.py [--models resnet152 cifar_resnet110] [--repeats 3]

Writes experiments/results/bench_finalize.{json,md}. Goal (issue 5): a ResNet-152 supernet finalizes in < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from dnas_prune import Supernet, count_cost, create_model, finalize
from dnas_prune.models import is_cifar_model
from peers import cpu_line

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet152", "resnet50", "cifar_resnet110", "cifar_resnet56"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rows = []
    for name in args.models:
        size = (3, 32, 32) if is_cifar_model(name) else (3, 224, 224)
        net = Supernet(create_model(name), size)
        with torch.no_grad():
            for gate in net.gates.values():
                gate.logits.normal_(0.5, 2.0)
        net.eval()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = finalize(net)
            times.append(time.perf_counter() - start)
        ratio = count_cost(model, size).macs / net.dense_cost.macs
        rows.append({"model": name, "input_size": list(size), "median_s": statistics.median(times),
                     "max_s": max(times), "macs_ratio": ratio})
        print(f"{name}: finalize median {statistics.median(times):.3f}s (max {max(times):.3f}s), "
              f"{ratio:.1%} of dense MACs")
    meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": cpu_line(), "threads": torch.get_num_threads(), "torch": torch.__version__, "seed": args.seed,
            "load_average_1min": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_finalize.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Finalization time", "", f"`{meta['command']}` — {meta['date']}, {meta['cpu']}, {meta['threads']} threads, "
             f"torch {meta['torch']}, seed {meta['seed']}, 1-min load average {meta['load_average_1min']:.1f} "
             "(the machine was shared with other jobs).", "",
             "Gate logits drawn from N(0.5, 2); time of `finalize(net)` alone (wrapping not included).", "",
             "| model | input | median s | max s | MACs kept |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {'x'.join(map(str, r['input_size']))} | {r['median_s']:.3f} | {r['max_s']:.3f} | "
              f"{r['macs_ratio']:.1%} |" for r in rows]
    (RESULTS / "bench_finalize.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
