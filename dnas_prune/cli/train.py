"""``dnas-prune train``: train a dense model; writes ``train.pt`` (resumable) and ``model.pt``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import stages
from ..device.policy import init_distributed
from ..errors import DnasPruneError
from ..io.pruned import load_pretrained
from ..models import MODEL_NAMES, check_model_name, create_model
from ..train.recipes import CLEAN_EPOCHS_PER, TRAIN_RECIPE, TRAIN_VAL_SIZE, seed_everything
from .common import add_training_args, load_data, train_config_from

DEFAULTS, DEFAULT_VAL_SIZE = TRAIN_RECIPE, TRAIN_VAL_SIZE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a dense model", description=__doc__)
    p.add_argument("--model", required=True, help=f"one of: {', '.join(MODEL_NAMES)}")
    p.add_argument("--out", default="runs/train", help="output directory (default: %(default)s)")
    p.add_argument("--pretrained", help="start from these weights (a model file, a state_dict of --model, or shipped "
                   "weights such as cifar10); a head for another number of classes is replaced by a new one, so "
                   "ImageNet weights train on your classes")
    p.add_argument("--zero-init-residual", action="store_true",
                   help="start every residual branch at zero (its last BN scale = 0), so each block begins as the identity")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")
    add_training_args(p, DEFAULTS, val_size=DEFAULT_VAL_SIZE, clean_epochs_per=CLEAN_EPOCHS_PER, weight_average=True)
    return p


def run(args: argparse.Namespace) -> int:
    check_model_name(args.model)
    if args.pretrained and args.zero_init_residual:
        raise DnasPruneError("--zero-init-residual initializes a new model; it does nothing to --pretrained weights")
    rank, _ = init_distributed()
    config = train_config_from(args)
    stages.check_out("train", args.out, args.resume, strict=True)  # before the data loads
    data, root = load_data(args)
    seed_everything(args.seed)
    if args.pretrained:
        model = load_pretrained(args.pretrained, args.model, data.num_classes, new_head=True)
    else:
        model = create_model(args.model, num_classes=data.num_classes, zero_init_residual=args.zero_init_residual)
    out = Path(args.out)
    metadata = {"command": "train", "model": args.model, "pretrained": args.pretrained, "data": root,
                "limit_train": args.limit_train, "val_size": args.val_size, "zero_init_residual": args.zero_init_residual}
    _, metrics = stages.train(model, data, config, out, metadata=metadata, resume=args.resume,
                              tensorboard=not args.no_tensorboard, hparams={"model": args.model})
    if rank == 0:
        print(f"test accuracy {metrics['test_acc']:.4f}; wrote {out / 'model.pt'}")
    return 0
