"""``dnas-prune finetune``: train a finalized pruned model further; writes ``OUT/pruned.pt``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import stages
from ..device.policy import init_distributed
from ..errors import DnasPruneError
from ..io.pruned import load_pretrained, load_pruned_with_metadata
from ..models import MODEL_NAMES, available_weights, create_model
from ..models.cost import count_cost
from ..train.recipes import FINETUNE_RECIPE, seed_everything
from .common import add_training_args, load_data, train_config_from

DEFAULTS = FINETUNE_RECIPE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finetune", help="finetune a pruned model", description=__doc__)
    p.add_argument("pruned", help="pruned model file (from `dnas-prune finalize`)")
    p.add_argument("--out", required=True, help="run directory; writes finetune.pt (resumable) and pruned.pt")
    p.add_argument("--teacher", help="the dense parent to distill from: its model file, or the tag of the shipped "
                                     "weights it was pruned from (e.g. cifar10); needs --distill-weight > 0")
    add_training_args(p, DEFAULTS, weight_average=True)
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")
    return p


def run(args: argparse.Namespace) -> int:
    init_distributed()
    config = train_config_from(args)
    if args.teacher and not config.distill_weight > 0:
        raise DnasPruneError("--teacher is only used with --distill-weight > 0 (e.g. --distill-weight 0.5)")
    _, metadata = load_pruned_with_metadata(args.pruned)  # a wrong file fails now, before the data is loaded
    stages.check_out("finetune", args.out, args.resume, strict=True)
    data, root = load_data(args)
    teacher = shipped_parent(args.teacher, metadata, data.num_classes) if args.teacher else None
    seed_everything(args.seed)
    out = Path(args.out)
    trainer, metrics = stages.finetune(args.pruned, data, config, out, data_root=root, resume=args.resume,
                                       teacher=teacher, tensorboard=not args.no_tensorboard)
    if trainer.is_main:
        print(f"finetuned test accuracy {metrics['test_acc']:.4f}; wrote {out / 'pruned.pt'}")
    return 0


def shipped_parent(teacher: str, pruned_metadata: dict, num_classes: int):
    """``--teacher``: a model file, or a tag of shipped weights (as the search's --pretrained took it): the registry
    model carrying that tag whose dense MACs and params are the ones the pruned file records is its parent."""
    if not Path(teacher).exists():
        size = tuple(pruned_metadata.get("input_size") or (3, 32, 32))
        for name in MODEL_NAMES:
            if teacher in available_weights(name):
                cost = count_cost(create_model(name, num_classes=num_classes), size)
                if (cost.macs, cost.params) == (pruned_metadata.get("dense_macs"), pruned_metadata.get("dense_params")):
                    return create_model(name, num_classes=num_classes, weights=teacher)
    return load_pretrained(teacher, None, num_classes)
