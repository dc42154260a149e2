"""Record a quickstart run: dense vs pruned accuracy, cost, speed-up, wall time and machine, from its report.json.

    /usr/bin/time -v dnas-prune run experiments/configs/quickstart.toml --out runs/qs > runs/qs.log 2>&1
    python experiments/record_quickstart.py --run runs/qs --log runs/qs.log --command "..." \
        [--other-runs runs/qs_seed1 runs/qs_seed2 ...]
writes experiments/results/quickstart.{json,md}. ``--other-runs`` lists runs of the config with another seed or
setting (``--set seed=1 --set out=DIR``) beside the timed one, each with how its config differs, so the page shows
the spread over seeds and what a setting buys, not one draw.
"""

from __future__ import annotations

import argparse
import json
import shlex
import re
import sys
from pathlib import Path

from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.config import tomllib

from peers import machine

RESULTS = Path(__file__).parent / "results"
IGNORED = {"seed", "out", "progress", "tensorboard"}  # run bookkeeping, not the recipe


def wall_seconds(log: str) -> float:
    """The elapsed time /usr/bin/time -v printed (h:mm:ss or m:ss)."""
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", log)
    if match is None:
        raise SystemExit("record_quickstart.py: error: no '/usr/bin/time -v' elapsed line in the log")
    parts = [float(p) for p in match.group(1).split(":")]
    return sum(value * 60 ** i for i, value in enumerate(reversed(parts)))


def flat_config(run: Path) -> dict[str, object]:
    """A run's config.toml as dotted keys (``data.limit_train``)."""
    def walk(table: dict, prefix: str) -> dict[str, object]:
        found: dict[str, object] = {}
        for key, value in table.items():
            found.update(walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return found
    return walk(tomllib.loads((run / "config.toml").read_text()), "")


def run_row(run: Path, timed: dict[str, object]) -> dict:
    """One run's seed, how its config differs from the timed run's (seed and paths aside), dense and pruned test
    accuracy and MACs ratio."""
    report, config = json.loads((run / "report.json").read_text()), flat_config(run)
    differs = [f"{k}={config.get(k)}" for k in sorted(set(config) | set(timed))
               if k not in IGNORED and config.get(k) != timed.get(k)]
    return {"run": str(run), "seed": config.get("seed"), "differs": differs, "dense_acc": report["dense"]["test_acc"],
            "pruned_acc": report["pruned"]["test_acc"], "macs_ratio": report["pruned"]["macs_ratio"]}


def runs_table(rows: list[dict]) -> str:
    """The timed run and the other runs, one row each; empty when there is only the timed one."""
    if len(rows) < 2:
        return ""
    lines = "".join(f"| {r['seed']} | {', '.join(r['differs']) or 'as timed'} | {r['dense_acc']:.4f} | "
                    f"{r['pruned_acc']:.4f} | {100 * (r['pruned_acc'] - r['dense_acc']):+.2f} | {r['macs_ratio']:.3f} |\n"
                    for r in rows)
    return ("The timed run (first row) and runs of the same config with another seed or setting "
            "(`--set seed=N --set KEY=VALUE`), same machine:\n\n"
            "| seed | config | dense | pruned | points | MACs ratio |\n|---:|---|---:|---:|---:|---:|\n" + lines + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--note", default="")
    p.add_argument("--other-runs", type=Path, nargs="*", default=[], metavar="RUN",
                   help="runs of the same config with another seed or setting, listed beside the timed one")
    args = p.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    seconds = wall_seconds(args.log.read_text())
    dense, pruned = report["dense"], report["pruned"]
    timed = flat_config(args.run)
    rows = [run_row(run, timed) for run in [args.run, *args.other_runs]]
    record = {"command": args.command, "machine": machine(), "wall_seconds": seconds, "note": args.note,
              "config": (args.run / "config.toml").read_text(), "dense": dense, "pruned": pruned,
              "latency": report.get("latency"), "runs": rows, "script": shlex.join(["python", "experiments/record_quickstart.py", *sys.argv[1:]])}
    atomic_write_json(record, RESULTS / "quickstart.json")
    m = record["machine"]
    latency = report["latency"]
    speed = "".join(f"- batch {b}: {latency['models']['dense']['latency'][b]['median_ms']:.2f} ms dense, "
                    f"{latency['models']['pruned']['latency'][b]['median_ms']:.2f} ms pruned: speed-up "
                    f"**{latency['ratios']['pruned'][b]['speedup']:.2f}x** ({latency['threads']} threads, per interleaved round)\n"
                    for b in map(str, latency["batch_sizes"]))
    atomic_write_text(
        "# Quickstart run\n\n"
        f"`{args.command}` on {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs, "
        f"torch {m['torch']}. {args.note}\n\n"
        f"- wall time, install excluded: **{seconds / 60:.1f} min** ({seconds:.0f} s)\n"
        f"- dense (shipped parent): {dense['test_acc']:.4f} test accuracy, {dense['macs'] / 1e6:.2f} M MACs, "
        f"{dense['params'] / 1e3:.1f} k params\n"
        f"- pruned: **{pruned['test_acc']:.4f}** test accuracy ({100 * (pruned['test_acc'] - dense['test_acc']):+.2f} "
        f"points), {pruned['macs'] / 1e6:.2f} M MACs ({pruned['macs_ratio']:.3f} of dense), "
        f"{pruned['params'] / 1e3:.1f} k params; after the search, before finetuning: {pruned['search_test_acc']:.4f}\n"
        f"{speed}\n{runs_table(rows)}The run's config:\n\n```toml\n{record['config']}```\n\n"
        f"Recorded by `{record['script']}`.\n", RESULTS / "quickstart.md")
    print(f"quickstart: {seconds:.0f} s, dense {dense['test_acc']:.4f} -> pruned {pruned['test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
