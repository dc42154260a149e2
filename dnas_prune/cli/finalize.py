"""``dnas-prune finalize``: turn a search checkpoint into a plain pruned model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.cost import count_cost
from ..errors import DnasPruneError
from ..finalize import finalize
from ..models import spec_of
from ..report.monitor import log_text
from ..io.pruned import save_pruned
from ..search.hooks import load_supernet
from ..report.summary import width_table


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
    if args.round_to is not None and args.round_to < 1:
        raise DnasPruneError(f"--round-to must be a positive integer, got {args.round_to}")
    net = load_supernet(args.checkpoint)
    dense_spec = spec_of(net.model)
    model = finalize(net, round_to=args.round_to)
    cost = count_cost(model, net.input_size)
    summary = {}
    meta_path = Path(args.checkpoint).with_name("search.json")
    if meta_path.is_file():
        import json

        summary = json.loads(meta_path.read_text()).get("accuracy", {})
    save_pruned(model, args.output, input_size=list(net.input_size), dense_macs=net.dense_cost.macs,
                dense_params=net.dense_cost.params, search_accuracy=summary.get("test"))
    table = width_table(dense_spec, spec_of(model), net.dense_cost, cost)
    print(table)
    if not args.no_tensorboard:
        log_text(Path(args.checkpoint).parent / "tb", "architecture/finalized", table)
    print(f"wrote {args.output}")
    return 0
