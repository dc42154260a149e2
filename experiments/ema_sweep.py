"""Which ``--ema-decay`` helps dense training, and by how much: one run, several weight averages side by side.

Trains one model exactly as ``dnas-prune train`` would with the same flags (the averages never touch the weights,
the optimizer or the random streams, so the live weights follow that command's trajectory step for step) and keeps
one exponential moving average per ``--decay`` beside it, updated after every step as ``--ema-decay`` does. After
the last epoch the live weights and every average are evaluated on the test split, so each average's gain is a
paired difference from one run, free of run-to-run spread. The averages are checkpointed with the trainer's state,
so ``--resume`` continues them. Writes JSON + Markdown to ``experiments/results/``.

    OMP_NUM_THREADS=1 python experiments/ema_sweep.py --name ema_sweep_cifar_resnet20 --decay 0.995 0.998 0.999 \
        -- --model cifar_resnet20 --data ../shared/data/cifar10-jpeg --epochs 30 --out /work/runs/ema_a --no-progress
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from dnas_prune.cli import build_parser
from dnas_prune.cli.common import load_data, train_config_from
from dnas_prune.train.recipes import seed_everything
from dnas_prune.models import create_model
from dnas_prune.train.loop import Trainer, TrainHooks, weight_average
from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"


class Averages(TrainHooks):
    """One EMA of the weights and BN buffers per decay, made from the live model at the first step (so it shares
    the trainer's memory format) and restored from a checkpoint on resume."""

    def __init__(self, decays: list[float]) -> None:
        self.decays = decays
        self.averages: dict[float, AveragedModel] = {}
        self._pending: dict[str, dict] = {}

    def after_step(self, trainer: Trainer, step: int, metrics: dict) -> None:
        if not self.averages:
            for d in self.decays:
                self.averages[d] = weight_average(trainer.model, d)
                if str(d) in self._pending:
                    self.averages[d].load_state_dict(self._pending[str(d)])
        for average in self.averages.values():  # an average's first update copies the weights, as --ema-decay's does
            average.update_parameters(trainer.model)

    def state_dict(self) -> dict:
        return {str(d): a.state_dict() for d, a in self.averages.items()} or dict(self._pending)

    def load_state_dict(self, state: dict) -> None:
        self._pending = dict(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/NAME.json and results/NAME.md")
    parser.add_argument("--decay", type=float, nargs="+", default=[], help="per-step EMA decays to keep")
    parser.add_argument("--note", help="how the run shared the machine (kept in the JSON)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite results/NAME.md from results/NAME.json (and --note into it)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the flags of dnas-prune train")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads((RESULTS / f"{args.name}.json").read_text())
        if args.note is not None:
            report["note"] = args.note
            (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / f"{args.name}.md").write_text(markdown(report))
        return 0
    if not args.decay:
        raise SystemExit("give --decay D [D ...]: the averages to keep")
    train_argv = [a for a in args.train_args if a != "--"]
    targs = build_parser().parse_args(["train", *train_argv])
    if getattr(targs, "ema_decay", 0.0):
        raise SystemExit("leave --ema-decay out of the train flags: this script keeps the averages itself")
    config = train_config_from(targs)
    data, root = load_data(targs)
    seed_everything(targs.seed)
    model = create_model(targs.model, num_classes=data.num_classes, zero_init_residual=targs.zero_init_residual)
    hooks = Averages(args.decay)
    trainer = Trainer(model, data, config, targs.out, callbacks=[hooks],
                      metadata={"command": "train", "model": targs.model, "data": root, "val_size": targs.val_size})
    start = time.perf_counter()
    metrics = trainer.fit(resume=targs.resume)
    rows = [{"weights": "live (what dnas-prune train reports without --ema-decay)", "decay": 0.0,
             "test_acc": metrics["test_acc"]}]
    for d, average in hooks.averages.items():
        rows.append({"weights": f"EMA, decay {d}", "decay": d,
                     "test_acc": trainer.evaluate(data.test, average.module)["acc"]})
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    report = {"name": args.name, "note": args.note or "", "machine": machine(), "config": asdict(config),
              "precision": trainer.precision, "threads": torch.get_num_threads(), "command": command,
              "steps": trainer.global_step, "wall_seconds_this_process": round(time.perf_counter() - start, 1),
              "history": trainer.history, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(report))
    for r in rows:
        print(f"{r['weights']}: test {r['test_acc']:.4f}")
    return 0


def markdown(report: dict) -> str:
    m, c, rows = report["machine"], report["config"], report["rows"]
    live = rows[0]["test_acc"]
    lines = [f"# Weight averaging: {report['name']}", "",
             f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs, "
             f"torch {m['torch']}, {report['precision']}, {report.get('threads', '?')} torch threads. One training run "
             f"of {c['epochs']} epochs ({report['steps']} steps), seed {c['seed']}; every average was updated after "
             "every step of that same run and evaluated on the test split once, after the last epoch. "
             f"{report.get('note', '')}".rstrip(), "", f"`{report['command']}`", "",
             f"Recipe: batch {c['batch_size']}, peak lr {c['lr']} ({c['schedule']}, {c['warmup_epochs']} warm-up "
             f"epochs), weight decay {c['weight_decay']}, label smoothing {c['label_smoothing']}, crop padding "
             f"{c['crop_padding']}, the last {c['clean_epochs']} epochs un-augmented.", "",
             "| weights | per-step decay | horizon (steps) | **test acc** | vs live |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        horizon = f"{1 / (1 - r['decay']):.0f}" if r["decay"] else "–"
        lines.append(f"| {r['weights']} | {r['decay'] or '–'} | {horizon} | **{r['test_acc']:.4f}** | "
                     f"{(r['test_acc'] - live) * 100:+.2f} |")
    history = report["history"]
    total = sum(h["epoch_time"] for h in history)
    lines += ["", f"Training: {total / 60:.1f} min in all, {total / len(history):.0f} s per epoch on average, "
              f"{sum(h['img_per_s'] for h in history) / len(history):.0f} img/s mean.", "",
              "| epoch | train loss | train acc | lr at the end | seconds | img/s |", "|---:|---:|---:|---:|---:|---:|"]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.4f} | {h['lr']:.4f} | "
                     f"{h['epoch_time']:.1f} | {h['img_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
