"""Training-step throughput of fp32 vs bf16 autocast, NCHW vs channels_last, side by side on this machine.

Why: ``--precision auto`` picks bf16 only where the hardware has bf16 kernels. This measures what that choice is
worth here: rounds interleave the four variants and the best round of each counts, so load from other processes
hits them alike. It also prints what ``auto`` resolves to on this machine.

    python experiments/bench_precision.py [--model cifar_resnet20] [--batch-size 128] [--threads 1] [--rounds 3] [--name N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from dnas_prune.models import create_model
from dnas_prune.device.policy import resolve_precision
from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [(precision, fmt) for precision in ("fp32", "bf16") for fmt in ("nchw", "channels_last")]


def steps_per_second(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     precision: str, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="write results/NAME.json and .md (default: bench_precision_MODEL); one name "
                                       "per kind of CPU keeps their pages side by side")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    setups = {}
    for precision, fmt in VARIANTS:
        memory = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        model = create_model(args.model).to(memory_format=memory).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xs = x.contiguous(memory_format=memory)
        steps_per_second(model, opt, xs, y, precision, 1)  # warm-up: kernel selection, allocator
        setups[(precision, fmt)] = (model, opt, xs)
    best = {v: 0.0 for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:
            model, opt, xs = setups[v]
            best[v] = max(best[v], steps_per_second(model, opt, xs, y, v[0], args.steps) * args.batch_size)
    base = best[("fp32", "nchw")]
    report = {"command": "python experiments/bench_precision.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine(), "args": vars(args), "auto_resolves_to": resolve_precision("auto", torch.device("cpu")),
              "img_per_s": {f"{p}/{f}": round(v, 1) for (p, f), v in best.items()},
              "vs_fp32_nchw": {f"{p}/{f}": round(v / base, 3) for (p, f), v in best.items()}}
    m = report["machine"]
    lines = ["# Training-step throughput: fp32 vs bf16, NCHW vs channels_last", "",
             f"`{report['command']}`", "",
             f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
             "load average at the end "
             f"{', '.join(f'{a:.2f}' for a in m['load_average'])}. Model {args.model}, batch {args.batch_size}, "
             f"{args.threads} thread(s), synthetic 32x32 inputs, SGD step included; best of {args.rounds} interleaved "
             f"rounds of {args.steps} steps, seed {args.seed}. `--precision auto` resolves to "
             f"**{report['auto_resolves_to']}** here.", "",
             "| precision | memory format | img/s | vs fp32 NCHW |", "|---|---|---:|---:|"]
    for (p, f), v in best.items():
        lines.append(f"| {p} | {f} | {v:.0f} | {v / base:.3f} |")
    RESULTS.mkdir(exist_ok=True)
    name = args.name or f"bench_precision_{args.model}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
