"""Cost of the search machinery and of TensorBoard monitoring per training step, in one interleaved run.

Three steps on cifar_resnet56, batch 256, bf16 autocast, channels_last, random data (as the trainer runs):

- ``plain``: forward, cross-entropy, backward, SGD step of the dense model;
- ``gated``: the same through the :class:`Pruner`'s supernet, then ``pruner.step()`` (cost-normalized gate
  gradients, gate optimizer step, the next step's offset solved onto the ramped target), mid-search (target
  descending, hard straight-through gates);
- ``monitored``: the gated step through the callbacks :class:`SearchHooks` then :class:`MonitorHooks` at its
  default frequencies (the search's callback calls ``pruner.step()`` in ``after_step``).

Repeats are interleaved (plain, gated, monitored, plain, ...) so machine noise hits all three alike. The
monitored step is timed on non-logging steps; the logging events (scalar step, histogram step, epoch end with
images) are timed separately and amortized over their default intervals, because a few dozen timed steps
cannot contain a representative share of once-per-200-steps events.

    python experiments/bench_overhead.py [--repeats 12] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from dnas_prune.models import create_model
from dnas_prune.report.monitor import HISTOGRAM_EVERY, SCALAR_EVERY, MonitorHooks
from dnas_prune.search.pruner import Pruner
from dnas_prune.search.hooks import SearchHooks
from dnas_prune.train.loop import Callbacks
from peers import cpu_line

RESULTS = Path(__file__).resolve().parent / "results"
MODEL, BATCH, TRAIN_IMAGES = "cifar_resnet56", 256, 45_000
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH
TOTAL_STEPS = 10 * STEPS_PER_EPOCH  # the search default: 10 epochs
MID_STEP = TOTAL_STEPS // 2 + 1  # target descending (ramp 0.1 to 0.6); never a logging step (not a multiple of 20, 175)


def sgd(params) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    with autocast():
        logits = model(x)
        ce = nn.functional.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    ce.backward()
    optimizer.step()


def pruner_step(pruner: Pruner, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One search step as any training loop writes it: forward, backward, optimizer.step(), pruner.step()."""
    pruner.steps_done = MID_STEP - 1  # every timed step at the same point of the schedule
    with autocast():
        logits = pruner.net(x)
        ce = nn.functional.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    ce.backward()
    optimizer.step()
    pruner.step()


def hooked_step(trainer: SimpleNamespace, hooks, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    """One step in the Trainer's order of hook calls."""
    with autocast():
        logits = trainer.model(x)
        ce = nn.functional.cross_entropy(logits.float(), y)
    loss = hooks.loss(trainer, ce, logits, step - 1)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    hooks.before_optimizer_step(trainer)
    trainer.optimizer.step()
    trainer.global_step = step
    trainer.pruner.steps_done = step - 1  # the stand-in trainer carries the pruner: every timed step at one point
    hooks.after_step(trainer, step, {"loss": ce.detach(), "lr": trainer.optimizer.param_groups[0]["lr"]})


def search_setup(seed: int) -> tuple[Pruner, torch.optim.Optimizer]:
    """A Pruner (default search, 10 epochs) at ``MID_STEP`` and the SGD of its model's weights."""
    torch.manual_seed(seed)
    model = create_model(MODEL)
    pruner = Pruner(model, (3, 32, 32), total_steps=TOTAL_STEPS, target_macs=0.5)
    pruner.net.to(memory_format=torch.channels_last).train()
    pruner.load_state_dict({**pruner.state_dict(), "steps_done": MID_STEP - 1})
    return pruner, sgd(model.parameters())


def monitored_setup(seed: int) -> tuple[SimpleNamespace, SearchHooks]:
    """The same as the Trainer would drive it: SearchHooks around a fresh Pruner, and a stand-in trainer."""
    pruner, optimizer = search_setup(seed)
    trainer = SimpleNamespace(model=pruner.net, optimizer=optimizer, pruner=pruner, is_main=True, global_step=0,
                              steps_per_epoch=STEPS_PER_EPOCH, epoch=0, config=SimpleNamespace(batch_size=BATCH))
    return trainer, SearchHooks(pruner)


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=12, help="timed steps per variant (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_overhead")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(BATCH, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), generator=generator)

    torch.manual_seed(args.seed)
    plain = create_model(MODEL).to(memory_format=torch.channels_last).train()
    plain_opt = sgd(plain.parameters())
    gated, gated_opt = search_setup(args.seed)
    mon_trainer, mon_inner = monitored_setup(args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_overhead_tb_"))
    monitor = MonitorHooks(log_dir, pruner=mon_inner.pruner)
    callbacks = Callbacks([mon_inner, monitor])  # as the Trainer runs them: the search's, then the monitor
    callbacks.on_epoch_start(mon_trainer, 0)

    variants = {
        "plain": lambda: plain_step(plain, plain_opt, x, y),
        "gated": lambda: pruner_step(gated, gated_opt, x, y),
        "monitored": lambda: hooked_step(mon_trainer, callbacks, x, y, MID_STEP),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    wall = time.perf_counter()
    for r in range(args.warmup + args.repeats):
        for name, fn in variants.items():
            elapsed = timed(fn)
            if r >= args.warmup:
                times[name].append(elapsed)
        print(f"round {r + 1}/{args.warmup + args.repeats}: " + ", ".join(
            f"{n} {t[-1]:.3f}s" for n, t in times.items() if t), flush=True)

    # Logging events, each on top of a normal hook call; the step's compute is not part of it.
    metrics = {"loss": torch.tensor(2.3), "lr": 0.05}
    scalar_step = SCALAR_EVERY * 7  # a scalar step that is neither a histogram step nor an epoch end
    hist_step = HISTOGRAM_EVERY * 3
    events = {"after_step (no logging)": lambda: callbacks.after_step(mon_trainer, MID_STEP, metrics),
              "scalar step": lambda: callbacks.after_step(mon_trainer, scalar_step, metrics),
              "histogram step (with scalars)": lambda: callbacks.after_step(mon_trainer, hist_step, metrics),
              "inner on_epoch_end (search, not logging)": lambda: mon_inner.on_epoch_end(mon_trainer, 0, {}),
              "on_epoch_end (with inner)": lambda: callbacks.on_epoch_end(mon_trainer, 0, {"train_acc": 0.5})}
    event_times = {name: statistics.median(timed(fn) for _ in range(7)) for name, fn in events.items()}
    monitor.close()
    wall = time.perf_counter() - wall

    med = {name: statistics.median(t) for name, t in times.items()}
    t_scalar = event_times["scalar step"] - event_times["after_step (no logging)"]
    t_hist = event_times["histogram step (with scalars)"] - event_times["scalar step"]
    t_epoch = event_times["on_epoch_end (with inner)"] - event_times["inner on_epoch_end (search, not logging)"]
    # Per epoch: scalars every 20 steps, histograms every 200, and at the epoch's last step both plus images.
    amortized = t_scalar / SCALAR_EVERY + t_hist / HISTOGRAM_EVERY + (t_epoch + t_scalar + t_hist) / STEPS_PER_EPOCH
    wrapper = med["monitored"] - med["gated"]
    result = {
        "command": " ".join(["python", "experiments/bench_overhead.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_line(), "logical_cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": list(os.getloadavg())},
        "setup": {"model": MODEL, "batch": BATCH, "precision": "bf16 autocast", "memory_format": "channels_last",
                  "data": "random", "seed": args.seed, "repeats": args.repeats, "warmup": args.warmup,
                  "scalar_every": SCALAR_EVERY, "histogram_every": HISTOGRAM_EVERY, "steps_per_epoch": STEPS_PER_EPOCH},
        "step_seconds": {name: {"median": med[name], "min": min(t), "max": max(t), "all": t} for name, t in times.items()},
        "logging_event_seconds": event_times,
        "ratios": {
            "gated_over_plain": med["gated"] / med["plain"],
            "monitored_over_gated_measured": med["monitored"] / med["gated"],
            "logging_amortized_seconds_per_step": amortized,
            "logging_overhead_amortized": amortized / med["gated"],
            "wrapper_seconds_per_step_measured": wrapper,
        },
        "acceptance": {"gated_over_plain_max": 1.15, "logging_overhead_goal": 0.02},
        "wall_seconds": wall,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    s, q, m = r["step_seconds"], r["ratios"], r["machine"]
    lines = [
        "# Step overhead: plain vs gated vs monitored",
        "",
        f"`{r['command']}` — {r['date']}",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, torch {m['torch']}, "
        f"Python {m['python']}. The machine is shared with other engineers' jobs (load average at the end: "
        f"{', '.join(f'{v:.1f}' for v in m['load_average_at_end'])}); repeats are interleaved so that noise hits all "
        "variants alike, and medians are reported.",
        "",
        f"Setup: {r['setup']['model']}, batch {r['setup']['batch']}, {r['setup']['precision']}, "
        f"{r['setup']['memory_format']}, random data, seed {r['setup']['seed']}, {r['setup']['repeats']} timed steps "
        f"per variant after {r['setup']['warmup']} warm-up steps.",
        "",
        "| variant | median s/step | min | max |",
        "|---|---|---|---|",
        *[f"| {name} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} |" for name, v in s.items()],
        "",
        f"- gated / plain: **{q['gated_over_plain']:.3f}** (acceptance <= {r['acceptance']['gated_over_plain_max']})",
        f"- logging overhead, amortized at the default frequencies: **{q['logging_overhead_amortized']:.3%}** of a "
        f"gated step ({q['logging_amortized_seconds_per_step'] * 1e3:.2f} ms/step; goal <= "
        f"{r['acceptance']['logging_overhead_goal']:.0%})",
        f"- monitored / gated, measured directly on non-logging steps: {q['monitored_over_gated_measured']:.3f} "
        "(the wrapper itself does a tensor add and a few attribute reads per step; this ratio is step-to-step noise)",
        "",
        "Logging events (median of 7, seconds):",
        "",
        *[f"- {name}: {v * 1e3:.2f} ms" for name, v in r["logging_event_seconds"].items()],
        "",
        f"Scalars every {r['setup']['scalar_every']} steps, histograms every {r['setup']['histogram_every']}, and "
        f"at each epoch's last step (every {r['setup']['steps_per_epoch']}) scalars, histograms and images.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
