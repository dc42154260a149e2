"""Throughput of the Trainer's step loop vs a bare bf16 channels_last SGD loop on the same model and batch.

The Trainer adds batch augmentation, schedule, metrics and hooks on top of forward/backward/step; this
checks that overhead stays small (ratio >= 0.9). Rounds alternate between the two loops and the best round
of each counts, so load from other processes on the machine hits both alike. Throughput is reported per
wall-clock second and per CPU second of this process; on a shared, oversubscribed machine the CPU-time
figure is the meaningful one (wall time then mostly measures the scheduler).

    python experiments/bench_train.py [--model cifar_resnet20] [--batch-size 256] [--steps 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dnas_prune.train.cifar import CifarData, Split
from dnas_prune.models import create_model
from dnas_prune.train.loop import TrainConfig, Trainer
from peers import cpu_line

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_data(n: int, seed: int) -> CifarData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    empty = Split(images[:0], labels[:0])
    return CifarData(train=Split(images, labels), val=empty, test=empty, classes=[str(c) for c in range(10)])


def bare_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, steps: int) -> None:
    """Forward + backward + SGD step on one pre-made batch."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = criterion(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def timed(fn, images: int) -> tuple[float, float]:
    """(img per wall second, img per CPU second of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = synthetic_data(args.batch_size * args.steps, args.seed)
    config = TrainConfig(epochs=args.rounds + 1, batch_size=args.batch_size, precision="bf16",
                         memory_format="channels_last", seed=args.seed, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(create_model(args.model), data, config, tmp)
        trainer.channels_last = True
        trainer.model.to(memory_format=torch.channels_last)

        bare = create_model(args.model).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch_size, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,), generator=g)

        trainer.train_epoch(0)  # warm-up: oneDNN primitive creation, allocator
        bare_steps(bare, x, y, opt, 2)
        images = args.steps * args.batch_size
        trainer_rounds, bare_rounds = [], []
        for r in range(args.rounds):
            trainer_rounds.append(timed(lambda: trainer.train_epoch(r + 1), images))
            bare_rounds.append(timed(lambda: bare_steps(bare, x, y, opt, args.steps), images))

    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model": args.model, "batch_size": args.batch_size, "steps_per_round": args.steps, "rounds": args.rounds,
        "seed": args.seed,
        "machine": {"cpu": cpu_line(), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_1min": os.getloadavg()[0]},
        "trainer_img_per_s": max(w for w, _ in trainer_rounds), "bare_img_per_s": max(w for w, _ in bare_rounds),
        "trainer_img_per_cpu_s": max(c for _, c in trainer_rounds), "bare_img_per_cpu_s": max(c for _, c in bare_rounds),
        "trainer_rounds_wall_cpu": trainer_rounds, "bare_rounds_wall_cpu": bare_rounds,
    }
    result["ratio"] = result["trainer_img_per_s"] / result["bare_img_per_s"]
    result["ratio_cpu_time"] = result["trainer_img_per_cpu_s"] / result["bare_img_per_cpu_s"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    (RESULTS / "bench_train.md").write_text(
        f"# Trainer step loop vs bare bf16 channels_last loop\n\n"
        f"`{result['command']}`\n\n"
        f"{args.model}, batch {args.batch_size}, seed {args.seed}; best of {args.rounds} alternating rounds of "
        f"{args.steps} steps.\n"
        f"Machine: {m['cpu']}, {m['torch_threads']} torch threads / {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"1-min load average at the end {m['load_average_1min']:.1f}.\n\n"
        f"| loop | img/s wall (best) | img/CPU-s (best) | rounds (wall / CPU) |\n|---|---|---|---|\n"
        f"| Trainer (BatchStream + augmentation, schedule, metrics, hooks) | {result['trainer_img_per_s']:.0f} | "
        f"{result['trainer_img_per_cpu_s']:.0f} | {', '.join(f'{w:.0f}/{c:.0f}' for w, c in trainer_rounds)} |\n"
        f"| bare (pre-made batch, autocast, SGD) | {result['bare_img_per_s']:.0f} | "
        f"{result['bare_img_per_cpu_s']:.0f} | {', '.join(f'{w:.0f}/{c:.0f}' for w, c in bare_rounds)} |\n\n"
        f"Ratio Trainer / bare: **{result['ratio']:.3f}** wall-clock, **{result['ratio_cpu_time']:.3f}** "
        f"per CPU second (acceptance >= 0.9).\n")
    print(f"trainer {result['trainer_img_per_s']:.0f} img/s, bare {result['bare_img_per_s']:.0f} img/s, "
          f"ratio {result['ratio']:.3f} wall, {result['ratio_cpu_time']:.3f} per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
