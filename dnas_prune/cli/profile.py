"""``dnas-prune profile``: MACs, params and CPU latency of a registry model or a pruned-model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device.policy import MEMORY_FORMAT_CHOICES, memory_format_name
from ..errors import DnasPruneError
from ..io.pruned import default_input_size, load_pruned_with_metadata
from ..models import MODEL_NAMES, create_model, is_cifar_model, spec_of
from ..report.profile import profile_model


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("profile", help="MACs, params and CPU latency of a model")
    parser.add_argument("model", help=f"a pruned-model file or a registry name ({', '.join(MODEL_NAMES)})")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input size (default: the file's, else 3 32 32 for CIFAR and 3 224 224 for ImageNet models)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's current setting)")
    parser.add_argument("--repeats", type=int, default=50, help="timed forwards per batch size (capped at ~3 s)")
    parser.add_argument("--memory-format", type=memory_format_name, choices=MEMORY_FORMAT_CHOICES, default="auto",
                        help="auto picks the faster of nchw and channels_last per model and batch size "
                             "(default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    if any(bs < 1 for bs in args.batch_sizes):
        raise DnasPruneError(f"--batch-sizes must be positive integers, got {' '.join(map(str, args.batch_sizes))}")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise DnasPruneError(f"--repeats and --threads must be positive, got {args.repeats} and {args.threads}")
    path, metadata = Path(args.model), {}
    if path.is_file():
        model, metadata = load_pruned_with_metadata(path)
        default_size = metadata.get("input_size") or default_input_size(spec_of(model))
    elif args.model in MODEL_NAMES:
        model = create_model(args.model)
        default_size = (3, 32, 32) if is_cifar_model(args.model) else (3, 224, 224)
    else:
        raise DnasPruneError(f"{args.model!r} is neither an existing file nor a model name ({', '.join(MODEL_NAMES)})")
    input_size = tuple(args.input_size or default_size)
    result = profile_model(
        model, input_size, args.batch_sizes, repeats=args.repeats, threads=args.threads,
        memory_format=args.memory_format,
    )
    print(f"model: {args.model}  input: {'x'.join(map(str, input_size))}")
    dense = metadata.get("dense_macs"), metadata.get("dense_params")
    of_dense = (f"  ({result['macs'] / dense[0]:.1%} and {result['params'] / dense[1]:.1%} of the dense model's)"
                if all(dense) and tuple(input_size) == tuple(metadata.get("input_size") or ()) else "")
    print(f"MACs: {result['macs'] / 1e6:.2f} M  params: {result['params'] / 1e6:.3f} M{of_dense}")
    print(f"{'batch':>6} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'img/s':>9} {'repeats':>8}  threads  memory format")
    for bs, lat in result["latency"].items():
        print(
            f"{bs:>6} {lat['median_ms']:>10.3f} {lat['p10_ms']:>9.3f} {lat['p90_ms']:>9.3f} "
            f"{bs * 1e3 / lat['median_ms']:>9.1f} {lat['repeats']:>8}  {lat['threads']:>7}  {lat['memory_format']}"
        )
    for bs, lat in result["latency"].items():
        if lat["warning"]:
            print(f"warning: batch {bs}: {lat['warning']}")
    return 0
