"""One table over every `compare.py` result: per model and MACs target, accuracy as the mean over the seeds that ran.

Reads ``results/compare_<model>*.json`` (one file per model and seed, each written by ``compare.py``), groups rows by
(model, target, method), and writes ``results/compare.md`` and ``results/compare.json``: test accuracy per seed and
its mean, MACs ratio, params and the batch-64 speed-up (from the seed-0 file's interleaved latency run), and whether
the goals hold: ours >= the best peer at 50 % MACs, >= best peer + 0.5 points at 20 %, speed-up >= 4.0x at <= 20 %.
Peers are compared by their mean over the same seeds ours has.

    python experiments/compare_summary.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("tp_magnitude", "tp_slimming", "uniform_l1")
OURS = "ours"
# Reports from before the Pruner (e5a8561, no "search" field) ran the Lagrangian search; their goals are checked for
# these variants, named as compare.py named them then. The default search; the same with kept widths rounded to multiples of 8 after it, or searched in whole gates of 8
# channels (--channels-per-gate 8); and the ramped budget without block gates (--target-ramp 0.5 --no-block-gates),
# unrounded, rounded after the search and searched in gates of 8 channels.
OURS_VARIANTS = ("ours", "ours_round8", "ours_g8", "ours_ramp_inner_only", "ours_ramp_inner_only_round8",
                 "ours_ramp_inner_only_g8", "ours_ramp_inner_only_g8_1search",
                 "ours_ramp_inner_only_g4_1search")


def load_reports(results: Path) -> list[dict[str, Any]]:
    reports = []
    for path in sorted(results.glob("compare_*.json")):
        report = json.loads(path.read_text())
        if "tables" in report:
            reports.append({**report, "file": path.name})
    return reports


def search_of(report: dict[str, Any]) -> str:
    """Which search a report's "ours" rows ran: "pruner" (written since e5a8561) or "lagrangian" (before)."""
    return report.get("search", "lagrangian")


def variants_of(model: dict[str, Any], rows: dict[str, Any]) -> list[str]:
    """The "ours" methods whose goals a table lists: the old fixed set, or every ours row the table has."""
    if model.get("search", "lagrangian") == "lagrangian":
        return list(OURS_VARIANTS)
    return [OURS] + sorted(m for m in rows if m.startswith(OURS + "_"))


def parent_of(report: dict[str, Any]) -> str:
    """Which dense parent a report pruned: the hash of its model file (older reports: its dense test accuracy)."""
    return report.get("parent") or f"test acc {report['dense']['test_acc']:.4f}"


def collect(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """"model, parent P" -> target -> method -> {"acc": {seed: acc}, "macs_ratio", "params", "speedup_bs64", "file"}.

    Rows are only merged across seeds of the same dense parent, series and search: a retrained parent, runs that
    ``compare.py --series`` names apart, or runs of the Pruner next to the Lagrangian search's, start a table of
    their own.
    """
    models: dict[str, Any] = {}
    for report in reports:
        key = f"{report['model']}, parent {parent_of(report)}" + (f", {report['series']}" if report.get("series") else "")
        search = search_of(report)  # recorded for new reports only: the old tables' compare.json stays as it was
        key += "" if search == "lagrangian" else f", {search} search"
        model = models.setdefault(key, {"dense": {}, "targets": {}, "files": [],
                                        **({} if search == "lagrangian" else {"search": search})})
        model["files"].append({"file": report["file"], "seed": report["seed"], "command": report["command"],
                               "epochs": f"{report['search_epochs']}+{report['finetune_epochs']}",
                               "date": report["date"]})
        model["dense"][report["seed"]] = report["dense"]
        for target, table in report["tables"].items():
            ratios = table.get("latency", {}).get("bench", {}).get("ratios", {})
            for name, row in table["rows"].items():
                if row.get("status") == "failed":
                    model.setdefault("failed", {}).setdefault(target, {})[name] = row["error"]
                if row.get("status") != "done":
                    continue
                entry = model["targets"].setdefault(target, {}).setdefault(name, {"acc": {}})
                entry["acc"][report["seed"]] = row["test_acc"]
                if "macs_ratio" not in entry or report["seed"] == 0:
                    entry.update(macs_ratio=row["macs_ratio"], params=row["params"], file=report["file"],
                                 speedup_bs64=ratios.get(name, {}).get("64", {}).get("speedup"))
    return models


def goals(target: str, rows: dict[str, Any], variants: list[str]) -> list[str]:
    """The issue's goals for one table, for each of the search's ``variants``."""
    lines = []
    for variant in variants:
        lines += [f"{variant}: {line}" for line in _goals(target, rows, variant)]
    return lines


def _goals(target: str, rows: dict[str, Any], variant: str) -> list[str]:
    """The goals for one method, checked on the seeds it and each peer share."""
    if variant not in rows:
        return ["did not run at this target"]
    ours = rows[variant]
    lines = []
    best_name, best_gap = None, None
    for peer in PEERS:
        if peer not in rows:
            continue
        shared = sorted(set(ours["acc"]) & set(rows[peer]["acc"]))
        if not shared:
            continue
        gap = statistics.mean(ours["acc"][s] for s in shared) - statistics.mean(rows[peer]["acc"][s] for s in shared)
        if best_gap is None or gap < best_gap:
            best_name, best_gap = (peer, shared), gap
    if best_name is None:
        return ["no peer ran at this target"]
    need = 0.005 if float(target) <= 0.2 + 1e-9 else 0.0
    peer, shared = best_name
    verdict = "met" if best_gap >= need - 1e-12 else "NOT met"
    lines.append(f"accuracy minus the best peer ({peer}, mean over seeds {shared}) = {100 * best_gap:+.2f} points; "
                 f"goal >= {100 * need:+.1f}: **{verdict}**")
    if float(target) <= 0.2 + 1e-9:
        speedup = ours.get("speedup_bs64")
        verdict = "not measured" if speedup is None else ("met" if speedup >= 4.0 else "NOT met")
        shown = "–" if speedup is None else f"{speedup:.2f}x"
        lines.append(f"speed-up at batch 64: {shown}; goal >= 4.00x: **{verdict}**")
    return lines


def markdown(models: dict[str, Any]) -> str:
    lines = ["# Peers side by side: summary over models and seeds", "",
             "Made by `python experiments/compare_summary.py` from the per-run files below (each one `compare.py` run: "
             "same dense parent, same epochs and recipe for every method; the detail, commands and machine are in "
             "each file). Accuracy: test top-1 after finetuning, per seed and the mean. Speed-up: batch-64 latency "
             "of dense / pruned from the seed-0 file's interleaved timing.", ""]
    for name, model in models.items():
        lines += [f"## {name}", ""]
        for f in model["files"]:
            dense = model["dense"][f["seed"]]
            lines.append(f"- `{f['file']}`: seed {f['seed']}, epochs (search/prune + finetune) {f['epochs']}, "
                         f"dense test acc {dense['test_acc']:.4f}, {dense['macs'] / 1e6:.2f} M MACs; {f['date']}")
        lines.append("")
        for target in sorted(model["targets"], key=float, reverse=True):
            rows = model["targets"][target]
            seeds = sorted({s for r in rows.values() for s in r["acc"]})
            lines += [f"### {name} at {target} of dense MACs", "",
                      "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | MACs ratio | params (M) "
                      "| bs64 speed-up |",
                      "|---|" + "---:|" * (len(seeds) + 4)]
            for method in sorted(rows, key=lambda m: (m != OURS, m not in PEERS, m)):
                r = rows[method]
                accs = " | ".join(f"{r['acc'][s]:.4f}" if s in r["acc"] else "–" for s in seeds)
                mean = statistics.mean(r["acc"].values())
                speedup = "–" if r["speedup_bs64"] is None else f"{r['speedup_bs64']:.2f}x"
                lines.append(f"| {method} | {accs} | {mean:.4f} ({len(r['acc'])}) | {r['macs_ratio']:.3f} | "
                             f"{r['params'] / 1e6:.4f} | {speedup} |")
            failed = model.get("failed", {}).get(target, {})
            lines += [""] + [f"- {m} failed: {error}" for m, error in sorted(failed.items()) if m not in rows]
            lines += [f"- {g}" for g in goals(target, rows, variants_of(model, rows))] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder with compare_*.json; writes compare.md/json")
    args = parser.parse_args(argv)
    reports = load_reports(args.results)
    if not reports:
        print(f"no compare_*.json in {args.results}: run experiments/compare.py first", file=sys.stderr)
        return 2
    models = collect(reports)
    (args.results / "compare.json").write_text(json.dumps(models, indent=2) + "\n")
    (args.results / "compare.md").write_text(markdown(models))
    print(markdown(models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
