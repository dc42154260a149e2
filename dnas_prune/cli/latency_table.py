"""``dnas-prune latency-table``: build (or load from the cache) the per-layer latency table of a model on this
device, the latency model a ``--target-latency`` search prunes against, and print its summary."""

from __future__ import annotations

import argparse

from ..device.policy import MEMORY_FORMAT_CHOICES, PRECISIONS, memory_format_name
from ..errors import DnasPruneError
from ..models import MODEL_NAMES, check_model_name, create_model
from ..search.latency import DEFAULT_CHANNEL_STEP, latency_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("latency-table", help="measure (or load) the per-layer latency table of a model",
                              description=__doc__)
    p.add_argument("--model", required=True, help=f"registry model ({', '.join(MODEL_NAMES)})")
    p.add_argument("--batch-size", type=int, required=True, help="batch size the latency is for")
    p.add_argument("--num-classes", type=int, help="classes of the model's head, as the search's model has them (the "
                                                   "table is the parent's; default: the registry model's own)")
    p.add_argument("--image-size", type=int,
                   help="side of the square input (default: 32 for CIFAR models, 224 for ImageNet models)")
    p.add_argument("--threads", type=int, help="torch intra-op threads, fixed while measuring (default: torch's "
                                               "current setting)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="dtype of the timed forwards; auto: bf16 where the hardware runs it natively (default: "
                        "%(default)s, as profile and the run report time)")
    p.add_argument("--memory-format", type=memory_format_name, choices=MEMORY_FORMAT_CHOICES, default="auto",
                   help="auto: the faster layout for the dense model, chosen once when the table is built "
                        "(default: %(default)s)")
    p.add_argument("--channel-step", type=int, default=DEFAULT_CHANNEL_STEP,
                   help="grid spacing of the widths, interpolated between (default: %(default)s, the spacing the "
                        "search's tables have; a table of another spacing is cached apart and only read here)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda timing (synchronize around each forward) is untested (default: %(default)s)")
    p.add_argument("--rebuild", action="store_true", help="measure again even if the table is cached")
    p.add_argument("--no-check", action="store_true",
                   help="trust a cached table as it is; by default two shrunk models are timed beside the dense one "
                        "first, and a table that no longer reads this device's ratios is measured again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while measuring")
    return p


def run(args: argparse.Namespace) -> int:
    input_size = None if args.image_size is None else (3, args.image_size, args.image_size)
    check_model_name(args.model)
    if args.num_classes is not None and args.num_classes < 1:
        raise DnasPruneError(f"--num-classes must be a positive integer, got {args.num_classes}")
    model = args.model if args.num_classes is None else create_model(args.model, num_classes=args.num_classes)
    table = latency_table(model, args.batch_size, input_size=input_size, threads=args.threads,
                          precision=args.precision, memory_format=args.memory_format, device=args.device,
                          channel_step=args.channel_step, rebuild=args.rebuild, progress=not args.no_progress,
                          check=not args.no_check)
    print(table.summary())
    return 0
