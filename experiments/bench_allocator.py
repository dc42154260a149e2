"""glibc's default allocator vs freed memory kept (dnas_prune.device.allocator): forward latency, page faults per
forward, and training throughput of the shipped parents, measured side by side in one run.

The allocator state is process-wide and cannot be undone, so each state runs in its own child process; children
alternate (default, kept, default, kept, ...) for ``--rounds`` rounds and each figure is the median over rounds,
so a drift of the machine falls on both. A child times plain forwards (channels_last, inference mode) and a bare
fp32 SGD step, not through dnas_prune's timing or training code, which keep freed memory themselves.

    python experiments/bench_allocator.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dnas_prune.device.allocator import keep_freed_memory
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.models import create_model

from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("cifar_resnet20", "cifar_resnet56")
BATCH_SIZES = (1, 64)
TRAIN_MODEL, TRAIN_BATCH = "cifar_resnet20", 128
STATES = ("default", "kept")


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds, minor page faults per call) of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times, start_faults = [], faults()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (faults() - start_faults) / repeats


def child(state: str, threads: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    allocator = keep_freed_memory() if state == "kept" else "default"
    out: dict[str, Any] = {"allocator": allocator, "forward": {}}
    with torch.inference_mode():
        for name in MODELS:
            model = create_model(name, weights="cifar10").eval().to(memory_format=torch.channels_last)
            for bs in BATCH_SIZES:
                x = torch.randn(bs, 3, 32, 32).contiguous(memory_format=torch.channels_last)
                seconds, per_call = timed(lambda: model(x), 5, repeats)
                out["forward"][f"{name}@{bs}"] = {"ms": seconds * 1e3, "faults": per_call}
    model = create_model(TRAIN_MODEL).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(TRAIN_BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (TRAIN_BATCH,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    seconds, per_call = timed(step, 5, max(10, repeats // 2))
    out["train"] = {"img_s": TRAIN_BATCH / seconds, "faults": per_call}
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# glibc's default allocator vs freed memory kept", "",
        "Every dnas_prune timing and training loop keeps freed memory (`dnas_prune.device.allocator`); this measures "
        "what that changes. Each state runs in its own process, alternated; figures are medians over rounds.", "",
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs, torch {m['torch']}; "
        f"{report['threads']} thread(s), fp32, channels_last; {report['rounds']} rounds",
        f"- kept state as recorded by the child: {report['kept_allocator']}", "",
        "| what | default: ms (range over rounds) | kept: ms (range over rounds) | default / kept | default: page "
        "faults per call | kept: page faults per call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, row in report["forward"].items():
        name, bs = key.split("@")
        spans = {s: [run["forward"][key]["ms"] for run in report["runs"][s]] for s in STATES}
        lines.append(f"| {name} forward, batch {bs} | "
                     + " | ".join(f"{row[s]['ms']:.2f} ({min(spans[s]):.2f}-{max(spans[s]):.2f})" for s in STATES)
                     + f" | {row['ratio']:.2f} | {row['default']['faults']:.0f} | {row['kept']['faults']:.0f} |")
    lines += ["", "Where no page faults differ (batch 1) the two states should time alike: a ratio away from 1.00 there "
              "is the machine's noise, and the ranges show how much."]
    t = report["train"]
    lines += ["", f"Training ({TRAIN_MODEL}, batch {TRAIN_BATCH}, fp32 SGD step): default {t['default']['img_s']:.0f} "
              f"img/s, kept {t['kept']['img_s']:.0f} img/s ({t['ratio']:.2f}x); page faults per step "
              f"{t['default']['faults']:.0f} vs {t['kept']['faults']:.0f}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--child", choices=STATES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "allocator")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.repeats)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {state: [] for state in STATES}
    for r in range(args.rounds):
        for state in STATES:
            cmd = [sys.executable, __file__, "--child", state, "--threads", str(args.threads), "--repeats",
                   str(args.repeats)]
            result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
            runs[state].append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {state}: "
                  f"{runs[state][-1]['forward']['cifar_resnet20@64']['ms']:.1f} ms (cifar_resnet20, batch 64), "
                  f"{runs[state][-1]['train']['img_s']:.0f} img/s training", flush=True)

    def median(state: str, *path: str) -> float:
        values = []
        for run in runs[state]:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    forward = {}
    for key in runs["default"][0]["forward"]:
        row = {s: {"ms": median(s, "forward", key, "ms"), "faults": median(s, "forward", key, "faults")} for s in STATES}
        forward[key] = {**row, "ratio": row["default"]["ms"] / row["kept"]["ms"]}
    train = {s: {"img_s": median(s, "train", "img_s"), "faults": median(s, "train", "faults")} for s in STATES}
    train["ratio"] = train["kept"]["img_s"] / train["default"]["img_s"]
    report = {"command": shlex.join(["python", "experiments/bench_allocator.py", *sys.argv[1:]]), "machine": machine(),
              "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats, "dtype": "fp32",
              "kept_allocator": runs["kept"][0]["allocator"], "forward": forward, "train": train, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report, args.out.with_suffix(".json"))
    atomic_write_text(markdown(report), args.out.with_suffix(".md"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
