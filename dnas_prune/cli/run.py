"""``dnas-prune run``: pretrain (or load), search, finalize, finetune, export and report from one TOML config.

Every stage is skipped when its output exists, so re-running the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse

from ..config import load_config
from ..device.policy import launched_world_size
from ..errors import DnasPruneError
from ..pipeline import Pipeline


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="the whole pipeline from a TOML config", description=__doc__)
    p.add_argument("config", help="TOML config (see experiments/configs/)")
    p.add_argument("--out", help="run directory (default: the config's `out`, else runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key; VALUE is a TOML literal, else a string (repeatable)")
    return p


def run(args: argparse.Namespace) -> int:
    if launched_world_size() > 1:  # each process would run (and write) the whole pipeline alone
        raise DnasPruneError("dnas-prune run is one process; under torchrun run its stages' commands (train, search, "
                             "finetune), or run it without torchrun")
    config = load_config(args.config, args.overrides, out=args.out)
    status = Pipeline(config).run()
    ran = [stage for stage, s in status.items() if s == "ran"]
    print(f"run {config['']['out']}: {', '.join(ran) or 'nothing'} ran; "
          f"{len(status) - len(ran)} of {len(status)} stages skipped")
    return 0
