"""``dnas-prune search``: learn block and channel gates under a MACs, params or measured-latency budget.

Writes ``OUT/supernet.pt`` (atomically, every epoch: everything needed to resume exactly) and
``OUT/search.json`` (final gate state, costs, accuracies).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import stages
from ..device.policy import init_distributed
from ..errors import DnasPruneError
from ..io.pruned import load_pretrained
from ..models import MODEL_NAMES, available_weights, check_model_name, create_model
from ..search.gate_optimizer import GATE_OPTIMIZERS
from ..search.gates import GATE_KINDS
from ..search.pruner import (CHANNEL_ORDERS, PRIORS, RANK_COSTS, THIN_BLOCK_CLOSERS, THIN_BRANCHES, SearchConfig,
                             budget_fields)
from ..train.recipes import SEARCH_RECIPE, seed_everything
from .common import add_training_args, load_data, train_config_from

DEFAULTS = SEARCH_RECIPE
SEARCH_DEFAULTS = SearchConfig()
_SCHEDULE_FLAGS = {
    "warmup": "fraction of the search before the budget starts to descend",
    "target_ramp": "fraction of the search over which the budget descends from the dense cost to the target; the "
                   "hard cost follows it at every step",
    "prior_spread": "gates start ranked by the --prior, logits at init +- this",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("search", help="search a pruned architecture under a budget", description=__doc__)
    p.add_argument("--model", help=f"architecture (not needed with a dnas_prune --pretrained file): {', '.join(MODEL_NAMES)}")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-macs", type=float, help="MACs budget as a fraction of the dense model, in (0, 1]")
    target.add_argument("--target-params", type=float, help="parameter budget as a fraction of the dense model, in (0, 1]")
    target.add_argument("--target-latency", type=float,
                        help="latency budget as a fraction of the dense model's, measured on this machine (a table of "
                             "per-layer timings is built once and cached; the result is timed and corrected at the end)")
    target.add_argument("--target-latency-ms", type=float, help="latency budget in ms per batch on this machine")
    p.add_argument("--latency-batch-size", type=int, default=SEARCH_DEFAULTS.latency_batch_size,
                   help="batch size the latency budget is measured at (default: %(default)s)")
    p.add_argument("--latency-threads", type=int,
                   help="torch threads the latency budget is measured at, as the model will be deployed (default: "
                        "torch's setting, e.g. OMP_NUM_THREADS; training uses that either way)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--pretrained", help="dense parent: 'cifar10' (the shipped pretrained weights of --model), a `dnas-prune train` model.pt "
                        "or a torchvision state_dict")
    p.add_argument("--gate", choices=GATE_KINDS, default=SEARCH_DEFAULTS.gate, help="gate kind (default: %(default)s)")
    p.add_argument("--gate-optimizer", choices=GATE_OPTIMIZERS, default=SEARCH_DEFAULTS.gate_optimizer,
                   help="optimizer of the gate logits (default: %(default)s)")
    p.add_argument("--no-cost-normalization", dest="cost_normalized", action="store_false",
                   help="do not divide each gate's gradient by its marginal cost (an ablation)")
    p.add_argument("--gate-lr", type=float, help="lr of the gates (default: scaled to the search length)")
    for field, text in _SCHEDULE_FLAGS.items():  # each flag's default is its SearchConfig field's
        p.add_argument(f"--{field.replace('_', '-')}", type=float, default=getattr(SEARCH_DEFAULTS, field),
                       help=f"{text} (default: %(default)s)")
    p.add_argument("--prior", choices=PRIORS, default=SEARCH_DEFAULTS.prior,
                   help="how gates are ranked before their gradients move them: taylor = at the end of warm-up, by "
                        "squared gradient per unit of cost, across all groups at once (as a global pruning "
                        "criterion); gamma = by |BN gamma| within each group, i.e. starting from a uniform cut "
                        "(default: %(default)s)")
    p.add_argument("--channel-order", choices=CHANNEL_ORDERS, default=SEARCH_DEFAULTS.channel_order,
                   help="which channels of a group stay: l1 = the gates set how many, the filters' L1 norms (at the "
                        "end of warm-up) which; learned = each channel's own gate decides (default: %(default)s)")
    p.add_argument("--rank-cost", choices=RANK_COSTS, default=SEARCH_DEFAULTS.rank_cost,
                   help="the cost a gate's importance is taken per (gradient normalization and the Taylor prior): "
                        "budget = the budget's metric; macs; auto = the budget's, except MACs for a latency budget's "
                        "channel gates (default: %(default)s)")
    p.add_argument("--round-to", type=int,
                   help="keep channel counts multiples of K (honoured by the final projection); default: for a latency "
                        "budget, the channel block of this CPU's convolution kernels (16 on AVX-512, 8 on AVX2), "
                        "otherwise 1; 1 turns rounding off")
    p.add_argument("--channels-per-gate", type=int, default=SEARCH_DEFAULTS.channels_per_gate,
                   help="one gate per K channels, so every searched width is a multiple of K (8 or 16 keep pruned "
                        "layers on fast CPU kernels; default: %(default)s)")
    p.add_argument("--gate-streams", action="store_true",
                   help="also gate the residual streams: the stem, the projections and every block's last BN, one "
                        "gate set per stage (default: keep them whole; compare.md's *_streams rows: gating them "
                        "finetuned worse)")
    p.add_argument("--block-gates", action=argparse.BooleanOptionalAction, default=SEARCH_DEFAULTS.block_gates,
                   help="also a gate per residual block (default: under a latency budget; otherwise a block goes when "
                        "all its inner channels close)")
    p.add_argument("--close-thin-blocks", action=argparse.BooleanOptionalAction,
                   default=SEARCH_DEFAULTS.close_thin_blocks,
                   help="with block gates: a block goes when its inner width would fall to one gate's channels "
                        "(see --thin-branch), so no block one channel wide pays a block's latency "
                        "(experiments/results/thin_blocks.md; default: under a latency budget)")
    p.add_argument("--close-thin-blocks-at", choices=THIN_BLOCK_CLOSERS, default=SEARCH_DEFAULTS.close_thin_blocks_at,
                   help="which closes thin blocks: search = the search holds a block under its inner channels while "
                        "it trains; projection = the search keeps them, the projection closes them and spends their "
                        "cost on the other blocks' channels; experiments/results/latency.md compares the two "
                        "(default: %(default)s)")
    p.add_argument("--thin-branch", choices=THIN_BRANCHES, default=SEARCH_DEFAULTS.thin_branch,
                   help="which branches count as thin (closed with their block): gate = one gate's channels wide; "
                        "step = also one --round-to step wide (default: %(default)s)")
    p.add_argument("--exclude", nargs="*", default=[], help="gate groups kept open (glob patterns, e.g. 'layer1.*')")
    add_training_args(p, DEFAULTS)
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")
    return p


def search_config_from(args: argparse.Namespace) -> SearchConfig:
    target = budget_fields(args.target_macs, args.target_params, args.target_latency, args.target_latency_ms)
    if args.round_to is not None and args.round_to < 1:
        raise DnasPruneError(f"--round-to must be a positive integer, got {args.round_to}")
    return SearchConfig(**target, latency_batch_size=args.latency_batch_size,
                        latency_threads=args.latency_threads, gate=args.gate, gate_optimizer=args.gate_optimizer,
                        cost_normalized=args.cost_normalized, gate_lr=args.gate_lr, warmup=args.warmup,
                        target_ramp=args.target_ramp, prior_spread=args.prior_spread, prior=args.prior,
                        channel_order=args.channel_order, rank_cost=args.rank_cost,
                        round_to=args.round_to, channels_per_gate=args.channels_per_gate, exclude=list(args.exclude),
                        gate_streams=args.gate_streams, block_gates=args.block_gates,
                        close_thin_blocks=args.close_thin_blocks, close_thin_blocks_at=args.close_thin_blocks_at,
                        thin_branch=args.thin_branch)


def run(args: argparse.Namespace) -> int:
    if args.model is None and args.pretrained is None:
        raise DnasPruneError("pass --model NAME (and optionally --pretrained CKPT)")
    if args.model is not None:
        check_model_name(args.model)
    search_config = search_config_from(args)
    train_config = train_config_from(args)
    out = Path(args.out)
    stages.check_out("search", out, args.resume, strict=True)  # before the data loads
    rank, _ = init_distributed()
    data, _ = load_data(args)
    seed_everything(args.seed)
    if args.pretrained:
        model = load_pretrained(args.pretrained, args.model, data.num_classes)
    else:
        model = create_model(args.model, num_classes=data.num_classes)
        if rank == 0 and not args.resume:
            shipped = "".join(f"'{w}', " for w in available_weights(args.model))
            print(f"note: no --pretrained, so the parent is a randomly initialized {args.model}: a search prunes a "
                  f"trained network (pass --pretrained {shipped}a model.pt or a state_dict)")
    _, summary = stages.search(model, data, train_config, search_config, out, resume=args.resume,
                               tensorboard=not args.no_tensorboard)
    if rank == 0:  # under torchrun, once
        print(f"search done: {stages.search_line(summary)}; wrote {out / 'supernet.pt'}")
    return 0
