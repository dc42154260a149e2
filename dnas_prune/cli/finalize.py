"""``dnas-prune finalize``: turn a search checkpoint into a plain pruned model file."""

from __future__ import annotations

import argparse

from .. import stages


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finalize", help="remove closed gates and write the pruned model", description=__doc__)
    p.add_argument("checkpoint", help="RUN_DIR/supernet.pt written by `dnas-prune search`")
    p.add_argument("-o", "--output", required=True, help="pruned model file to write (e.g. pruned.pt)")
    p.add_argument("--round-to", type=int, help="re-project onto the budget with channel counts multiples of K (and of the "
                   "search's --channels-per-gate)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not add the architecture table to the run's TensorBoard logs (next to CHECKPOINT, in tb/)")
    return p


def run(args: argparse.Namespace) -> int:
    _, table = stages.finalize(args.checkpoint, args.output, round_to=args.round_to,
                               tensorboard=not args.no_tensorboard)
    print(table)
    print(f"wrote {args.output}")
    return 0
