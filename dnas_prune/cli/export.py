"""``dnas-prune export``: turn a pruned-model file into TorchScript, ONNX or a torch.export archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.export import FORMATS, SUFFIXES, export, verify_export
from ..models import spec_of
from ..io.pruned import default_input_size, load_pruned_with_metadata


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a pruned model (onnx, torchscript, pt2)")
    parser.add_argument("pruned", type=Path, help="pruned-model file written by finalize / save_pruned")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: next to the input)")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input size (default: the one stored in the file)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size to trace with (default 1)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")
    parser.add_argument("--no-check", action="store_true", help="skip running the export against the model")
    return parser


def run(args: argparse.Namespace) -> int:
    model, metadata = load_pruned_with_metadata(args.pruned)
    input_size = tuple(args.input_size or metadata.get("input_size") or default_input_size(spec_of(model)))
    output = args.output or args.pruned.with_suffix(SUFFIXES[args.format])
    dynamic = not args.static_batch
    path = export(model, output, args.format, input_size, args.batch_size, dynamic_batch=dynamic, check=False)
    print(f"exported {args.format} to {path}")
    if args.no_check:
        print("check: skipped")
        return 0
    result = verify_export(path, model, args.format, input_size, args.batch_size + 1 if dynamic else args.batch_size)
    print(
        f"check: passed at batch {result['batch_size']} "
        f"(max abs diff {result['max_abs_diff']:.2e} <= tolerance {result['tolerance']:.2e})"
    )
    return 0
