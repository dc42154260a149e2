"""``dnas-prune`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

Every user-facing failure is a :class:`~dnas_prune.errors.DnasPruneError`; it is printed as one line
on stderr and the process exits with status 2 — never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from ..errors import DnasPruneError

COMMANDS = ("train", "search", "finalize", "finetune", "export", "profile", "run")


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes (unknown flag, conflicting flags) get the same one-line error as everything else."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dnas-prune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        command = module.add_parser(sub)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args._run(args)
    except DnasPruneError as exc:
        print(f"dnas-prune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dnas-prune: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
