"""``dnas-prune finetune``: train a finalized pruned model further; writes ``OUT/pruned.pt``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..monitor import MonitorHooks, flatten_config
from ..pruned_io import load_pruned_with_metadata, save_pruned
from ..training import TrainConfig, Trainer, init_distributed
from .common import add_training_args, load_data, seed_everything, train_config_from

DEFAULTS = TrainConfig(epochs=10, lr=0.05, schedule="cosine", warmup_epochs=0.5)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finetune", help="finetune a pruned model", description=__doc__)
    p.add_argument("pruned", help="pruned model file (from `dnas-prune finalize`)")
    p.add_argument("--out", required=True, help="run directory; writes finetune.pt (resumable) and pruned.pt")
    add_training_args(p, DEFAULTS)
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")
    return p


def run(args: argparse.Namespace) -> int:
    rank, _ = init_distributed()
    config = train_config_from(args)
    model, metadata = load_pruned_with_metadata(args.pruned)
    data, root = load_data(args)
    seed_everything(args.seed)
    out = Path(args.out)
    monitor = None if args.no_tensorboard else MonitorHooks(log_dir=out / "tb")
    trainer = Trainer(model.train(), data, config, out, hooks=monitor, checkpoint_name="finetune.pt",
                      metadata={"kind": "dnas_prune.finetune", "source": str(args.pruned)})
    try:
        metrics = trainer.fit(resume=args.resume and (out / "finetune.pt").is_file())
        if monitor:
            monitor.log_hparams({**flatten_config(train=config), "source": str(args.pruned)},
                                {k: metrics.get(k) for k in ("train_acc", "val_acc", "test_acc")})
    finally:
        if monitor:
            monitor.close()
    if rank == 0:
        keep = {k: v for k, v in metadata.items() if k not in ("macs", "params")}
        save_pruned(trainer.model.eval(), out / "pruned.pt", **{**keep, "dataset": root,
                    "test_acc": metrics["test_acc"], "val_acc": metrics.get("val_acc"), "finetune_epochs": config.epochs})
        print(f"finetuned test accuracy {metrics['test_acc']:.4f}; wrote {out / 'pruned.pt'}")
    return 0
