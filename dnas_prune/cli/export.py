"""``dnas-prune export``: turn a pruned-model file into TorchScript, ONNX or a torch.export archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import stages
from ..errors import DnasPruneError
from ..io.export import FORMATS, SUFFIXES


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a pruned model (onnx, torchscript, pt2)")
    parser.add_argument("pruned", type=Path, help="pruned-model file written by finalize / save_pruned")
    parser.add_argument("--format", choices=FORMATS,
                        help="default: told by the -o suffix (.onnx, .torchscript, .pt2), else onnx")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: next to the input)")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input size (default: the one stored in the file)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size to trace with (default 1)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")
    parser.add_argument("--no-check", action="store_true", help="skip running the export against the model")
    return parser


def output_format(output: Path | None, format: str | None) -> str:
    """The format asked for: ``--format``, else the output's suffix, else onnx; a known suffix of another format
    is refused (``-o model.pt2`` written as ONNX loads nowhere)."""
    told = next((f for f, suffix in SUFFIXES.items() if output is not None and output.suffix == suffix), None)
    if format and told and told != format:
        raise DnasPruneError(f"-o {output} names a {told} file but --format is {format}; make them agree")
    if format is None and output is not None and output.suffix not in ("", *SUFFIXES.values()):
        raise DnasPruneError(f"cannot tell the format of -o {output} from its suffix; pass --format "
                             f"({', '.join(FORMATS)})")
    return format or told or "onnx"


def run(args: argparse.Namespace) -> int:
    args.format = output_format(args.output, args.format)
    output = args.output or args.pruned.with_suffix(SUFFIXES[args.format])
    path, result = stages.export(args.pruned, output, args.format, input_size=args.input_size,
                                 batch_size=args.batch_size, dynamic_batch=not args.static_batch,
                                 check=not args.no_check)
    print(f"exported {args.format} to {path}")
    if result is None:
        print("check: skipped")
        return 0
    print(
        f"check: passed at batch {result['batch_size']} "
        f"(max abs diff {result['max_abs_diff']:.2e} <= tolerance {result['tolerance']:.2e})"
    )
    return 0
