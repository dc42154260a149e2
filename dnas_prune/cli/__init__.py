"""``dnas-prune`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

Every user-facing failure is a :class:`~dnas_prune.errors.DnasPruneError`; it is printed as one line
on stderr and the process exits with status 2 — never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ..device.policy import close_distributed
from ..errors import DnasPruneError
from ..stages import CHECKPOINTS

COMMANDS = ("train", "search", "finalize", "finetune", "export", "profile", "latency-table", "run")

DESCRIPTION = """\
Prune a ResNet by differentiable architecture search: train the dense model, search which channels and
blocks to keep under a MACs, parameter or measured-latency budget, remove the rest, finetune the smaller
model, and export it to ONNX, TorchScript or torch.export with a report of its accuracy, cost and measured
CPU latency."""

EPILOG = """\
the whole recipe from one TOML file:
  dnas-prune run experiments/configs/quickstart.toml

step by step:
  dnas-prune search --model cifar_resnet20 --pretrained cifar10 --target-macs 0.5 --out runs/search
  (or train your own parent: dnas-prune train --model cifar_resnet20 --out runs/dense; --pretrained runs/dense/model.pt)
  dnas-prune finalize runs/search/supernet.pt -o runs/pruned.pt
  dnas-prune finetune runs/pruned.pt --out runs/finetune
  dnas-prune export runs/finetune/pruned.pt --format onnx
  dnas-prune profile runs/finetune/pruned.pt

data: --data DIR or $DNAS_PRUNE_DATA (CIFAR-10, else downloaded); `dnas-prune COMMAND --help` lists a command's flags."""


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes (unknown flag, conflicting flags) get the same one-line error as everything else. A flag is
    never taken for a longer one it begins (``--target-mac``), and a mistyped flag is named even when it leaves a
    required one missing (``--target-macss``: argparse would only say a budget is required)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.parsed: list[str] = []

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self.parsed = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """Every flag's help ends with its default unless its text already gives it (``--help`` is where the README
        sends users for defaults)."""
        action = super().add_argument(*args, **kwargs)
        text, default = action.help or "", action.default
        if not ("default" in text.lower() or not action.option_strings or action.nargs == 0 or default is None
                or default is False or default == argparse.SUPPRESS):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
            action.help = f"{text} (default: {shown})" if text else f"default: {shown}"
        return action

    def error(self, message: str) -> NoReturn:
        known = set(re.findall(r"--[\w-]+", self.format_help()))  # every flag of this command is in its help
        unknown = [a.split("=", 1)[0] for a in self.parsed if a.startswith("--") and a.split("=", 1)[0] not in known]
        if unknown and "required" in message:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dnas-prune", description=DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}  # name -> its parser, which reports its own unknown flags
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        command = module.add_parser(sub)
        command.set_defaults(_run=module.run)
        parser.commands[name] = command
    return parser


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """A warning as the CLI prints it: ``warning: ...``, one line, without the source line it was raised at."""
    return f"warning: {message}\n"


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the run stops between writes and says how to continue."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    formatwarning, warnings.formatwarning = warnings.formatwarning, one_line_warning
    main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # torchrun, schedulers stop so
    try:
        result = args._run(args)
    except DnasPruneError as exc:
        print(f"dnas-prune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = args.command in CHECKPOINTS and (Path(args.out) / CHECKPOINTS[args.command]).is_file()
        resume = ("re-run the same command to continue" if args.command == "run" else
                  "pass --resume with the same --out to continue" if saved else
                  "nothing was saved yet; re-run the same command to start again" if args.command in CHECKPOINTS
                  else "no output was left half-written")
        print(f"dnas-prune: interrupted; {resume}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
        if main_thread and previous is not None:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)
        close_distributed()
    return int(result or 0)
