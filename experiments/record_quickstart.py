"""Record a quickstart run: dense vs pruned accuracy, cost, speed-up, wall time and machine, from its report.json.

    /usr/bin/time -v dnas-prune run experiments/configs/quickstart.toml --out runs/qs > runs/qs.log 2>&1
    python experiments/record_quickstart.py --run runs/qs --log runs/qs.log --command "..."
writes experiments/results/quickstart.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text

from peers import machine

RESULTS = Path(__file__).parent / "results"


def wall_seconds(log: str) -> float:
    """The elapsed time /usr/bin/time -v printed (h:mm:ss or m:ss)."""
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", log)
    if match is None:
        raise SystemExit("record_quickstart.py: error: no '/usr/bin/time -v' elapsed line in the log")
    parts = [float(p) for p in match.group(1).split(":")]
    return sum(value * 60 ** i for i, value in enumerate(reversed(parts)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--note", default="")
    args = p.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    seconds = wall_seconds(args.log.read_text())
    dense, pruned = report["dense"], report["pruned"]
    record = {"command": args.command, "machine": machine(), "wall_seconds": seconds, "note": args.note,
              "config": (args.run / "config.toml").read_text(), "dense": dense, "pruned": pruned,
              "latency": report.get("latency"), "script": "python experiments/record_quickstart.py " + " ".join(sys.argv[1:])}
    atomic_write_json(record, RESULTS / "quickstart.json")
    m = record["machine"]
    latency = report["latency"]
    speed = "".join(f"- batch {b}: {latency['models']['dense']['latency'][b]['median_ms']:.2f} ms dense, "
                    f"{latency['models']['pruned']['latency'][b]['median_ms']:.2f} ms pruned: speed-up "
                    f"**{latency['ratios']['pruned'][b]['speedup']:.2f}x** ({latency['threads']} threads, median)\n"
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
        f"{speed}\nThe run's config:\n\n```toml\n{record['config']}```\n\n"
        f"Recorded by `{record['script']}`.\n", RESULTS / "quickstart.md")
    print(f"quickstart: {seconds:.0f} s, dense {dense['test_acc']:.4f} -> pruned {pruned['test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
