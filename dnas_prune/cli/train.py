"""``dnas-prune train``: train a dense model on CIFAR-10; writes ``train.pt`` (resumable) and ``model.pt``."""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data import load_cifar10, resolve_data_root
from ..models import MODEL_NAMES, create_model, spec_of
from ..monitor import MonitorHooks, flatten_config
from ..training import TrainConfig, Trainer, atomic_torch_save, init_distributed

DEFAULTS = TrainConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a dense model", description=__doc__)
    p.add_argument("--model", required=True, help=f"one of: {', '.join(MODEL_NAMES)}")
    p.add_argument("--data", help="CIFAR-10 directory (default: $DNAS_PRUNE_DATA, else download to the cache)")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument("--out", default="runs/train", help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate")
    p.add_argument("--device", choices=("cpu", "cuda"), default=DEFAULTS.device)
    p.add_argument("--limit-train", type=int, help="train on the first N images of the training split")
    p.add_argument("--val-size", type=int, default=5000, help="images held out of train for validation")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=DEFAULTS.precision)
    p.add_argument("--memory-format", choices=("auto", "channels_last", "contiguous"), default=DEFAULTS.memory_format)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")
    return p


def run(args: argparse.Namespace) -> int:
    rank, _ = init_distributed()
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device, precision=args.precision,
        memory_format=args.memory_format, seed=args.seed, progress=not args.no_progress,
    )
    root = resolve_data_root(args.data)
    data = load_cifar10(root, val_size=args.val_size, limit_train=args.limit_train, seed=args.seed)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = create_model(args.model, num_classes=data.num_classes)
    out = Path(args.out)
    metadata = {"command": "train", "model": args.model, "data": str(root), "limit_train": args.limit_train,
                "val_size": args.val_size}
    monitor = None if args.no_tensorboard else MonitorHooks(log_dir=out / "tb")
    trainer = Trainer(model, data, config, out, hooks=monitor, metadata=metadata)
    try:
        metrics = trainer.fit(resume=args.resume)
        if monitor:
            monitor.log_hparams({**flatten_config(train=config), "model": args.model},
                                {k: metrics.get(k) for k in ("train_acc", "val_acc", "test_acc")})
    finally:
        if monitor:
            monitor.close()
    if rank == 0:
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        atomic_torch_save({"format": 1, "kind": "dnas_prune.dense", "spec": spec_of(trainer.model),
                           "state_dict": state, "metrics": metrics, "config": asdict(config)}, out / "model.pt")
        print(f"test accuracy {metrics['test_acc']:.4f}; wrote {out / 'model.pt'}")
    return 0
