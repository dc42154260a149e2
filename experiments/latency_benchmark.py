"""Accuracy at a measured latency: the latency-targeted search against MACs-targeted pruning (issue 28, deliverable 5).

Rows come from ``compare.py`` (same shipped parent, epochs, recipe and seed for every method): the defaults at MACs
targets, Torch-Pruning and uniform L1 at the same MACs targets, and the latency-targeted search
(``ours_latency_bs1``/``ours_latency_bs64``) at latency targets. ``--run`` trains the rows that are missing (one
compare.py call per set, resuming); without it the finished rows in the two out-dirs are used.

Then the dense parent and every finished row are timed in one run, forwards interleaved (``compare_latency``), at
batch 1 and 64 with ``--threads`` threads (the threads the latency rows' tables were measured with). Each method's
points (measured latency as a fraction of dense, test accuracy; dense included) form its curve; its accuracy at
0.5 and 0.25 of dense latency is read off the curve by linear interpolation between its two nearest points (no
extrapolation: "not reached" when the curve does not get there). Writes OUT.{json,md,png} (default
experiments/results/latency_MODEL, latency_MODEL_seedN for a seed other than 0).

    python experiments/latency_benchmark.py --model cifar_resnet20 --run \\
        --macs-dir runs/cmp_r20_s0 --latency-dir runs/lat_r20_s0
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dnas_prune.device.allocator import keep_freed_memory  # noqa: E402
from dnas_prune.device.timing import compare_latency  # noqa: E402
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text  # noqa: E402
from dnas_prune.io.pruned import load_pruned_with_metadata  # noqa: E402
from dnas_prune.models import MODEL_NAMES  # noqa: E402
from dnas_prune.report.report import save_figure  # noqa: E402

import compare  # noqa: E402
from latency_budget import checks_within, closes_thin_blocks, thin_branch  # noqa: E402
from peers import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = "ours_1sched_taylor_1search_l1order"  # what `dnas-prune run` does, with a MACs target
PEERS = ("tp_magnitude", "uniform_l1")
LATENCY_METHODS = {1: "ours_latency_bs1", 64: "ours_latency_bs64"}
# shown beside, when their rows exist: widths free of the CPU's channel blocks (the default at one thread before
# blocks held at every thread count), thin blocks closed by the projection, the latency defaults before closing thin
# blocks, before block gates, and two variants of the latter (gates ranked per unit of latency, the first latency
# search; the residual streams pruned too)
VARIANTS = {bs: [f"ours_latency_bs{bs}_free", f"ours_latency_bs{bs}_respend", f"ours_latency_bs{bs}_keepthin",
                 f"ours_latency_bs{bs}_noblockgates", f"ours_latency_bs{bs}_rankbudget", f"ours_latency_bs{bs}_streams"]
            for bs in LATENCY_METHODS}
MATCHED = (0.5, 0.25)
LABELS = {DEFAULT: "dnas_prune defaults, MACs target", "tp_magnitude": "Torch-Pruning (magnitude), MACs target",
          "uniform_l1": "uniform L1, MACs target", "ours_latency_bs1": "dnas_prune, latency target at batch 1",
          "ours_latency_bs64": "dnas_prune, latency target at batch 64",
          "ours_latency_bs1_free": "dnas_prune, latency target at batch 1, widths free (--round-to 1)",
          "ours_latency_bs64_free": "dnas_prune, latency target at batch 64, widths free (--round-to 1)",
          "ours_latency_bs1_round16": "dnas_prune, latency target at batch 1, widths in multiples of 16",
          "ours_latency_bs64_round16": "dnas_prune, latency target at batch 64, widths in multiples of 16",
          "ours_latency_bs1_respend": "dnas_prune, latency target at batch 1, thin blocks closed by the projection",
          "ours_latency_bs64_respend": "dnas_prune, latency target at batch 64, thin blocks closed by the projection",
          "ours_latency_bs1_keepthin": "dnas_prune, latency target at batch 1, widths free, thin blocks kept",
          "ours_latency_bs64_keepthin": "dnas_prune, latency target at batch 64, widths free, thin blocks kept",
          "ours_latency_bs1_noblockgates": "dnas_prune, latency target at batch 1, widths free, no block gates",
          "ours_latency_bs64_noblockgates": "dnas_prune, latency target at batch 64, widths free, no block gates",
          "ours_latency_bs1_rankbudget": "before block gates, ranked per latency, batch 1",
          "ours_latency_bs64_rankbudget": "before block gates, ranked per latency, batch 64",
          "ours_latency_bs1_streams": "before block gates, streams gated too, batch 1",
          "ours_latency_bs64_streams": "before block gates, streams gated too, batch 64"}
GOAL_OVER_MACS, GOAL_OVER_PEERS = 0.005, 0.01


def compare_args(args: argparse.Namespace, out_dir: Path, methods: list[str], targets: list[float]) -> list[str]:
    return ["--parent", "cifar10", "--model", args.model, "--seed", str(args.seed), "--search-epochs",
            str(args.search_epochs), "--finetune-epochs", str(args.finetune_epochs), "--out-dir", str(out_dir),
            "--results", str(out_dir / "compare_report"), "--targets", *map(str, targets), "--methods", *methods]


def finished_rows(out_dir: Path, methods: list[str], targets: list[float]) -> dict[str, dict]:
    rows = {}
    for method in methods:
        for target in targets:
            path = out_dir / "rows" / f"{method}@{target:g}.json"
            if path.is_file():
                row = json.loads(path.read_text())
                if row.get("status") == "done":
                    rows[f"{method}@{target:g}"] = {**row, "method": method, "target": target}
    return rows


def carried_points(previous: dict[str, Any], rename: dict[str, str], fresh: set[str]) -> dict[str, dict[str, list]]:
    """{batch: {method: points}} of an earlier run of this page (``previous``, its JSON) whose rows are not among
    ``fresh`` (this run's): rows whose models went with an earlier session. Each keeps the fraction of dense latency
    it measured side by side in that run and says when (``timed``); ``rename`` gives a method its current name
    (a row of the then-default that a later default made a variant)."""
    out: dict[str, dict[str, list]] = {}
    for bs, curves in previous["curves"].items():
        for method, points in curves.items():
            name = rename.get(method, method)
            for point in points:
                if point["method"] != "dense" and f"{name}@{point['target']:g}" not in fresh:
                    out.setdefault(bs, {}).setdefault(name, []).append(
                        {**point, "method": name, "timed": point.get("timed", previous["date"])})
    return out


def at_latency(points: list[tuple[float, float]], latency: float) -> float | None:
    """Accuracy at ``latency`` on the piecewise-linear curve through ``points`` (latency, accuracy), sorted by
    latency; None outside the curve's range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= latency <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (latency - x0) / (x1 - x0)
    return None


def matched_accuracies(curves: dict[str, list[dict]]) -> dict[str, list[float | None]]:
    """Each curve's accuracy at the MATCHED latencies (None where it does not get there)."""
    return {m: [at_latency([(q["latency_ratio"], q["test_acc"]) for q in points], x) for x in MATCHED]
            for m, points in curves.items()}


def goals(matched: dict[str, list[float | None]], bs: int) -> list[dict[str, float | None]]:
    """Per matched latency: the latency-targeted row's accuracy and its margins over the MACs-targeted defaults and
    over the best peer, each None when that curve does not get so fast (judged separately: a peer that cannot reach
    a latency is no rival there, and says so)."""
    out = []
    for i in range(len(MATCHED)):
        ours = matched.get(LATENCY_METHODS[bs], [None] * len(MATCHED))[i]
        macs = matched.get(DEFAULT, [None] * len(MATCHED))[i]
        peers = [matched[m][i] for m in PEERS if matched.get(m, [None] * len(MATCHED))[i] is not None]
        out.append({"ours": ours, "over_macs": None if ours is None or macs is None else ours - macs,
                    "over_peers": None if ours is None or not peers else ours - max(peers)})
    return out


def verdict(goal: dict[str, float | None], short: bool = False) -> str:
    if goal["ours"] is None:
        return "the latency-targeted curve does not get so fast"
    if short:
        parts = [f"{100 * goal['over_macs']:+.2f} over MACs rows" if goal["over_macs"] is not None
                 else "MACs rows do not get so fast",
                 f"{100 * goal['over_peers']:+.2f} over peers" if goal["over_peers"] is not None
                 else "no peer gets so fast"]
        return ", ".join(parts)
    macs = ("the MACs-targeted defaults do not get so fast" if goal["over_macs"] is None else
            f"latency-targeted − best MACs-targeted defaults {100 * goal['over_macs']:+.2f} (goal ≥ +0.5: "
            f"{'met' if goal['over_macs'] >= GOAL_OVER_MACS else 'not met'})")
    peers = ("no peer gets so fast (none of their rows reaches this latency)" if goal["over_peers"] is None else
             f"− best peer {100 * goal['over_peers']:+.2f}, among the peers that reach it (goal ≥ +1: "
             f"{'met' if goal['over_peers'] >= GOAL_OVER_PEERS else 'not met'})")
    return f"{macs}; {peers}"


def figure(report: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(report["batch_sizes"]), figsize=(6.2 * len(report["batch_sizes"]), 4.8),
                             squeeze=False)
    for ax, bs in zip(axes[0], report["batch_sizes"]):
        curves = report["curves"][str(bs)]
        for i, (method, points) in enumerate(curves.items()):
            xs, ys = zip(*sorted((p["latency_ratio"], 100 * p["test_acc"]) for p in points))
            style = "-o" if method.startswith("ours") else "--s"
            ax.plot(xs, ys, style, color=f"C{i}", label=report["labels"][method], ms=5)
        for x in MATCHED:
            ax.axvline(x, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{report['model']}, batch {bs}, {report['threads']} thread(s)")
        ax.set_xlabel("measured latency, fraction of dense (side by side)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Accuracy vs measured latency: {report['machine']['cpu']}, {report['epochs']} epochs, seed "
                 f"{report['seed']}", fontsize=10)
    fig.tight_layout()
    return fig


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Accuracy at a measured latency: {report['model']}", "",
        "Issue 28, deliverable 5: the latency-targeted search against the MACs-targeted defaults, Torch-Pruning and "
        "uniform L1, at the same measured latency.", "",
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs, torch {m['torch']}; "
        f"latency timed with {report['threads']} thread(s), fp32, each model in its faster layout"
        + (f", allocator: {report['allocator']}" if report.get("allocator") else ""),
        f"- every row: the shipped parent ({report['dense']['test_acc']:.4f} test), {report['epochs']} epochs in all "
        f"(ours: {report['search_epochs_note']}), seed {report['seed']}, one seed",
        f"- latency: dense and every row timed in one run, forwards interleaved, {report['timings']} times; a row's "
        "fraction is the median over those timings of the median over rounds of its time over dense's in the same "
        "round (the table lists each timing's)",
        "- matched latency: each method's accuracy read off its curve (dense and its rows, by measured latency) by "
        "linear interpolation; \"not reached\": the curve does not get there",
    ]
    if report.get("carried"):
        c = report["carried"]
        dates = sorted({p["timed"] for points in report["curves"].values() for q in points.values() for p in q
                        if p.get("timed")})
        lines.append(f"- rows marked *timed {' / '.join(dates)}* were trained and timed by an earlier run of this "
                     f"page (its previous run: `{c['command']}`, {c['threads']} thread(s), {_cpu(c['machine'])}), their "
                     "models gone with that session: their fractions of dense are that run's, each timed side by side "
                     "with dense there"
                     + ("; renamed since: " + ", ".join(f"{a} → {b}" for a, b in c["rename"].items())
                        if c["rename"] else ""))
    for r in report.get("renamed", []):
        lines.append(f"- rows renamed on {r['date']}, when a default changed (each trained under its old name, with the "
                     "same settings on this CPU): " + ", ".join(f"{a} → {b}" for a, b in r["mapping"].items()))
    lines += ["", f"![accuracy vs measured latency]({report['figure']})", ""]
    for bs in report["batch_sizes"]:
        lines += [f"## Batch {bs}", "", "| method | " + " | ".join(f"acc at {x:g} of dense latency" for x in MATCHED)
                  + " |", "|---|" + "---:|" * len(MATCHED)]
        for method, values in report["matched"][str(bs)].items():
            cells = [("not reached" if v is None else f"{100 * v:.2f}") for v in values]
            lines.append(f"| {report['labels'][method]} | " + " | ".join(cells) + " |")
        for x, goal in zip(MATCHED, goals(report["matched"][str(bs)], bs)):
            lines.append(f"\nGoal at {x:g}: {verdict(goal)}.")
        lines += ["", "| row | target | test acc | MACs ratio | measured latency (fraction of dense) | notes |",
                  "|---|---:|---:|---:|---:|---|"]
        for p in sorted((p for points in report["curves"][str(bs)].values() for p in points if p["method"] != "dense"),
                        key=lambda p: (p["method"], -p["latency_ratio"])):
            lines.append(f"| {p['method']} | {p['target']:g} {p['target_metric']} | {100 * p['test_acc']:.2f} | "
                         f"{p['macs_ratio']:.3f} | {p['latency_ratio']:.3f} "
                         f"({', '.join(f'{r:.3f}' for r in p['latency_ratios'])})"
                         + (f", *timed {p['timed']}*" if p.get("timed") else "") + f" | {p['notes']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _cpu(m: dict[str, Any]) -> str:
    """The CPU and its ISA, from peers.machine()'s record or latency_model.py's."""
    if isinstance(m["cpu"], dict):
        flags = [f for f in m["cpu"]["isa_flags"] if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")]
        return f"{m['cpu']['model']} ({', '.join(flags)})"
    return f"{m['cpu']} ({', '.join(m['cpu_flags'])})"


def _cpu_isa(m: dict[str, Any]) -> str:
    """The vendor and vector ISA (AVX-512 or AVX2; + AMX on Intel's newer Xeons), from peers.machine()'s record:
    what a CPU timing depends on most. AMD's and Intel's AVX-512 hosts read one pair apart from itself
    differently, so they are told apart."""
    flags, cpu = m.get("cpu_flags", []), str(m.get("cpu", ""))
    isa = ("AVX-512" if "avx512f" in flags else "AVX2") + (" + AMX" if "amx_bf16" in flags else "")
    vendor = next((v for v in ("AMD", "Intel") if v in cpu), None)
    return f"{vendor} {isa}" if vendor else isa


def benchmark_results(results: Path = RESULTS) -> list[Path]:
    """This script's JSON results: latency_MODEL.json and latency_MODEL_seedN.json."""
    return sorted(f for f in results.glob("latency_*.json")
                  if re.sub(r"_seed\d+$", "", f.stem.removeprefix("latency_")) in MODEL_NAMES)


def landing_window(row: dict) -> str:
    """Where a latency_budget.py row's landing aimed: under the target (since the window [target x (1 - tolerance),
    target]) or around it (before: within the tolerance either side). Rows written before the window was recorded
    say it by their first try, which aimed at the window's middle under the newer rule and at the target before."""
    window = row.get("landing_window")
    under = window[1] <= 0.0 if window else row["landing_tries"][0]["projected_to"] < row["target"]
    return "under" if under else "around"


def summary_markdown(results: Path = RESULTS) -> str:
    """experiments/results/latency.md: issue 28's results on one page, generated from the JSON that
    latency_benchmark.py, latency_model.py and latency_budget.py wrote (each page has its command and machine)."""
    lines = ["# Latency as a budget: results", "",
             "Generated by `python experiments/latency_benchmark.py --summary-only` from the JSON beside this page; "
             "each linked page has its command, machine, epochs and seed. Latencies are fractions of the dense "
             "model's, timed side by side (forwards interleaved), fp32, with freed memory kept (`allocator.md`: "
             "without it a batch-64 forward page-faults its activations afresh in some process states and not in "
             "others, which moved earlier batch-64 results by more than the goals' margins).", ""]
    benches = [(f.stem, json.loads(f.read_text())) for f in benchmark_results(results)]
    benches.sort(key=lambda nb: (nb[1]["model"], nb[1]["seed"]))
    lines += ["## Accuracy at a measured latency (deliverable 5)", ""]
    for name, b in benches:
        lines += [f"### {b['model']}, seed {b['seed']}: [{name}.md]({name}.md)", "",
                  f"{b['date']}, {_cpu(b['machine'])}, {b['threads']} thread(s), {b['epochs']} epochs, seed "
                  f"{b['seed']}, shipped parent {100 * b['dense']['test_acc']:.2f} %; the dense model ran at "
                  + ", ".join(f"{v['median_ms']:.3g} ms at batch {bs}"
                              for bs, v in b["bench"]["models"]["dense"]["latency"].items())
                  + " in the first timing"
                  + ("; rows of an earlier run keep the latency it measured (marked on the page)"
                     if b.get("carried") else "") + ".", "", f"![{name}]({b['figure']})", "",
                  "| batch | method | " + " | ".join(f"acc at {x:g} of dense latency" for x in MATCHED) + " |",
                  "|---:|---|" + "---:|" * len(MATCHED)]
        for bs in b["batch_sizes"]:
            for method, values in b["matched"][str(bs)].items():
                cells = [("not reached" if v is None else f"{100 * v:.2f}") for v in values]
                lines.append(f"| {bs} | {b['labels'][method]} | " + " | ".join(cells) + " |")
        verdicts = [f"batch {bs} at {x:g}: {verdict(goal, short=True)}" for bs in b["batch_sizes"]
                    for x, goal in zip(MATCHED, goals(b["matched"][str(bs)], bs))]
        lines += ["", "Goals (≥ +0.5 over the MACs-targeted defaults, ≥ +1 over the peers): " + "; ".join(verdicts) + ".",
                  ""]
        for bs in b["batch_sizes"]:  # the speed-up goal: batch 1 at 0.2 of dense latency (>= 3.5x on cifar_resnet56)
            for q in b["curves"][str(bs)].get(LATENCY_METHODS[bs], []):
                if q.get("target") == 0.2:
                    lines += [f"Latency target 0.2 at batch {bs}: measured {q['latency_ratio']:.3f} of dense side by "
                              f"side, a {1 / q['latency_ratio']:.1f}× speed-up, at {100 * q['test_acc']:.2f} % "
                              f"({q['macs_ratio']:.3f} of the MACs).", ""]
    model_files = sorted(results.glob("latency_model*.json"))  # latency_model, _step1 (off the grid), _threadsN
    if model_files:
        lines += ["## The latency model against measurements (deliverable 3)", ""]
    for model_file in model_files:
        m = json.loads(model_file.read_text())
        lines += [f"### [{model_file.stem}.md]({model_file.stem}.md): architectures in steps of {m['arch_step']} "
                  f"channel{'s' * (m['arch_step'] != 1)} (table grid step {m['channel_step']}), "
                  f"{m['machine']['threads']} thread{'s' * (m['machine']['threads'] != 1)}", "",
                  f"{m['date']}, {_cpu(m['machine'])}, {m['archs']} random finalized architectures per row; goal: "
                  f"median ≤ {100 * m['goal']['median']:g} %, p90 ≤ {100 * m['goal']['p90']:g} %.", "",
                  "| model | batch | error relative to dense, median / p90 | error in ms, median / p90 | dense: "
                  "measured in this run / the table's |",
                  "|---|---:|---:|---:|---:|"]
        for r in m["results"]:  # a dense model far off its table's ms: the device ran otherwise than when measured
            lines.append(f"| {r['model']} | {r['batch_size']} | {100 * r['median_ratio_error']:.1f} / "
                         f"{100 * r['p90_ratio_error']:.1f} % | {100 * r['median_rel_error']:.1f} / "
                         f"{100 * r['p90_rel_error']:.1f} % | {r['dense']['measured_ms']:.3g} / "
                         f"{r['dense']['predicted_ms']:.3g} ms |")
        lines += ["", f"![predicted vs measured]({m.get('figure', 'latency_model.png')})", ""]
    landings = sorted(results.glob("latency_budget*.json"))
    if landings:
        lines += ["## Landing on the target (deliverable 4, acceptance 1)", "",
                  "| page | CPU | model | batch | target | thin blocks | landing window | measured, side by side (median) | "
                  "speed-up | within ±10 % | fresh processes, range per thread count | later readings within ±10 % | "
                  "MACs ratio |",
                  "|---|---|---|---:|---:|---|---|---:|---:|---|---|---:|---:|"]
        for f in landings:
            landing = json.loads(f.read_text())
            for r in landing["rows"]:
                within, checks = checks_within(r, landing["threads"])
                fresh = "; ".join(f"{t} thr: {min(x['ratio'] for x in v):.3f}–{max(x['ratio'] for x in v):.3f}"
                                  for t, v in r.get("fresh_processes", {}).items()) or "-"
                isa = _cpu_isa(landing["machine"])
                thin = ("closed" + (", one step wide too" if thin_branch(r) == "step" else "")
                        if closes_thin_blocks(r) else "kept")
                lines.append(f"| [{f.stem}]({f.stem}.md) | {isa} | {r['model']} | {r['batch_size']} | {r['target']:g} | "
                             f"{thin} | {landing_window(r)} | "
                             f"{r['side_by_side_ratio']:.3f} | {1 / r['side_by_side_ratio']:.1f}× | "
                             f"{'yes' if r['lands'] else 'no'} | {fresh} | {within} of {checks} | "
                             f"{r['macs_ratio']:.3f} |")
        lines.append("")
        lines += repeatability_markdown([(json.loads(f.read_text())) for f in landings])
        if (results / "landing_process.md").exists():
            lines += ["Why the landing times the pair in a new process: [landing_process.md](landing_process.md) (the "
                      "process that ran the search reads the pair steadily, new processes beside it do not).", ""]
    lines += thin_step_markdown(results)
    return "\n".join(lines)


def repeatability_markdown(landings: list[dict[str, Any]]) -> list[str]:
    """How far one finalized pair reads apart from itself, per CPU ISA: each landing page's fresh-process readings of
    the same dense/pruned pair, tens of seconds apart, at one thread and at the table's threads. Where the spread at
    several threads is wider than the ±10 % window (max/min over 1.1/0.9), no landing can keep every later reading
    of that pair inside it, whatever it aims at: that part of acceptance 1 is the host's, not the search's."""
    per_isa: dict[str, list[dict[str, Any]]] = {}
    for landing in landings:
        for r in landing["rows"]:
            if r.get("fresh_processes"):
                per_isa.setdefault(_cpu_isa(landing["machine"]), []).append({"row": r, "threads": landing["threads"]})
    if not per_isa:
        return []

    def spread(readings: list[dict[str, Any]]) -> float:
        ratios = [x["ratio"] for x in readings]
        return max(ratios) / min(ratios)

    def quantiles(values: list[float]) -> str:
        values = sorted(values)
        return f"{statistics.median(values):.3f} / {values[round(0.9 * (len(values) - 1))]:.3f}"

    lines = ["How far one pair reads apart from itself: every row above with fresh-process readings (the same "
             "finalized model and dense model, each reading in a new process, tens of seconds apart), per CPU.",
             "", "| CPU | rows | landed within ±10 % | max/min of the pair's readings at the table's threads, median / "
             "p90 | at 1 thread, median / p90 | rows whose readings span more than the window (max/min > 1.1/0.9) |",
             "|---|---:|---:|---:|---:|---:|"]
    window = 1.1 / 0.9
    for isa, rows in sorted(per_isa.items()):
        several = [spread(x["row"]["fresh_processes"][str(x["threads"])]) for x in rows]
        one = [spread(x["row"]["fresh_processes"]["1"]) for x in rows if "1" in x["row"]["fresh_processes"]]
        lines.append(f"| {isa} | {len(rows)} | {sum(x['row']['lands'] for x in rows)} | {quantiles(several)} | "
                     f"{quantiles(one) if one else '-'} | {sum(s > window for s in several)} |")
    return lines + [""]


THIN_STEP = ("ours_latency_bs64", "ours_latency_bs64_thinstep")  # compare.py methods: the default, --thin-branch step


def thin_step_markdown(results: Path) -> list[str]:
    """latency.md's section on ``--thin-branch step``: compare.py pages (thin_step_*.json) that ran it and the
    default in one run (same parent, seed, epochs), their accuracies at the latency each measured side by side."""
    pages = sorted(results.glob("thin_step_*.json"))
    if not pages:
        return []
    lines = ["## `--thin-branch step` against the default, in the same run", "",
             "| page | CPU | model | seed | epochs | target | default: acc (measured latency) | step: acc (measured "
             "latency) | step − default |", "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for f in pages:
        page = json.loads(f.read_text())
        for target, table in page["tables"].items():
            rows, timed = table["rows"], table["latency"]["bench"]["models"]
            if any(rows.get(m, {}).get("status") != "done" or m not in timed for m in THIN_STEP):
                continue
            splits = sorted({compare.epoch_split(rows[m]) for m in THIN_STEP})
            epochs = f"{' / '.join(splits)}, {page['threads']} thread(s)"
            acc = [rows[m]["test_acc"] for m in THIN_STEP]
            cells = [f"{100 * a:.2f} ({timed[m]['latency']['64']['paired_ratio']:.3f})" for a, m in zip(acc, THIN_STEP)]
            lines.append(f"| [{f.stem}]({f.stem}.md) | {_cpu_isa(page['machine'])} | {page['model']} | {page['seed']} | "
                         f"{epochs} | {float(target):g} | {cells[0]} | {cells[1]} | {100 * (acc[1] - acc[0]):+.2f} |")
    return lines + ["", "Measured latency: each model's fraction of dense at batch 64 in the page's own side-by-side "
                    "timing.", ""]


def renamed_page(report: dict[str, Any], mapping: dict[str, str], date: str) -> dict[str, Any]:
    """``report`` (a page's JSON) with its rows' methods renamed at once by ``mapping`` (OLD -> NEW; a swap is one
    mapping): when a default changes, the old default's rows become a variant and a variant's rows the default, with
    their accuracies and the latencies they measured unchanged. The commands keep the names they ran with; the page
    records the mapping and its date under ``renamed``."""
    def name(key: str) -> str:
        method, at, target = key.partition("@")
        return mapping.get(method, method) + at + target

    def keys(d: dict) -> dict:
        return {name(k): v for k, v in d.items()}

    def points(ps: list[dict]) -> list[dict]:
        return [{**q, "method": name(q["method"])} for q in ps]

    out = json.loads(json.dumps(report))
    out["rows"] = {name(k): {**r, "method": name(r["method"])} for k, r in out["rows"].items()}
    if out.get("carried"):
        out["carried"]["rows"] = {name(k): {**r, "method": name(r["method"])} for k, r in out["carried"]["rows"].items()}
    for part in ("models", "ratios"):
        out["bench"][part] = keys(out["bench"][part])
    for bs in out["curves"]:
        order = [DEFAULT, *PEERS, LATENCY_METHODS[int(bs)], *VARIANTS[int(bs)]]
        rank = {m: i for i, m in enumerate(order)}
        curves = {name(m): points(ps) for m, ps in out["curves"][bs].items()}
        out["curves"][bs] = dict(sorted(curves.items(), key=lambda mp: rank.get(mp[0], len(order))))
        out["matched"][bs] = matched_accuracies(out["curves"][bs])
    out["labels"] = {**out["labels"], **LABELS}
    out["renamed"] = [*out.get("renamed", []), {"date": date, "mapping": mapping}]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search-epochs", type=int, default=2, help="compare.py's (the defaults search 1 of them)")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--macs-targets", type=float, nargs="+", default=[0.5, 0.2, 0.1])
    p.add_argument("--latency-targets", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], choices=sorted(LATENCY_METHODS))
    p.add_argument("--macs-dir", type=Path, help="compare.py out-dir of the MACs-targeted rows (required)")
    p.add_argument("--latency-dir", type=Path, help="compare.py out-dir of the latency-targeted rows (required)")
    p.add_argument("--run", action="store_true", help="train missing rows first (compare.py, resuming)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for timing (default 1, as compare.py)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed loop per model, layout and batch size")
    p.add_argument("--timings", type=int, default=3, help="side-by-side timings of all models; each model's latency is "
                   "the median of its paired ratios over them (default: %(default)s)")
    p.add_argument("--out", type=Path, help="writes OUT.json, OUT.md, OUT.png (default experiments/results/"
                                            "latency_MODEL, or latency_MODEL_seedN)")
    p.add_argument("--carry", type=Path, help="an earlier run's JSON of this page: its rows that are not in the "
                   "out-dirs (their models gone with an earlier session) keep the latency that run measured, marked "
                   "with its date")
    p.add_argument("--carry-as", action="append", default=[], metavar="OLD=NEW",
                   help="with --carry: a method's current name (e.g. ours_latency_bs1=ours_latency_bs1_keepthin)")
    p.add_argument("--summary-only", action="store_true", help="only regenerate the pages (every latency_MODEL*.md "
                   "and latency.md) from their JSON results, with the methods' labels of today (LABELS)")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="with --summary-only: rename rows' methods in every page's JSON at once (a default changed; "
                        "e.g. ours_latency_bs1=ours_latency_bs1_free ours_latency_bs1_round16=ours_latency_bs1), "
                        "recorded on the page, then regenerate its figure and pages")
    args = p.parse_args()
    if args.rename and not args.summary_only:
        p.error("--rename goes with --summary-only")
    for pair in args.rename + args.carry_as:
        if "=" not in pair:
            p.error(f"{pair!r}: give a renaming as OLD=NEW")
    if args.summary_only:
        mapping = dict(pair.split("=", 1) for pair in args.rename)
        for path in benchmark_results():
            report = json.loads(path.read_text())
            if mapping:
                report = renamed_page(report, mapping, time.strftime("%Y-%m-%d", time.gmtime()))
            labels = {**report["labels"], **{m: LABELS[m] for m in report["labels"] if m in LABELS}}
            if mapping or labels != report["labels"]:  # a label said what a method did less well than today's
                report["labels"] = labels
                save_figure(figure(report), path.with_suffix(".png"))
                atomic_write_json(report, path)
            atomic_write_text(markdown(report), path.with_suffix(".md"))
        atomic_write_text(summary_markdown(), RESULTS / "latency.md")
        return 0
    if args.macs_dir is None or args.latency_dir is None:
        p.error("--macs-dir and --latency-dir are required (unless --summary-only)")
    out = args.out or RESULTS / (f"latency_{args.model}" + (f"_seed{args.seed}" if args.seed else ""))
    command = shlex.join(["python", *sys.argv])
    macs_methods = [DEFAULT, *PEERS]
    latency_methods = [LATENCY_METHODS[bs] for bs in args.batch_sizes] + [v for bs in args.batch_sizes
                                                                          for v in VARIANTS[bs]]
    if args.run:
        torch.set_num_threads(args.threads)  # the latency rows' tables are measured with the threads timed here
        compare.main(compare_args(args, args.macs_dir, macs_methods, args.macs_targets))
        compare.main(compare_args(args, args.latency_dir, latency_methods[:len(args.batch_sizes)], args.latency_targets))
    rows = {**finished_rows(args.macs_dir, macs_methods, args.macs_targets),
            **finished_rows(args.latency_dir, latency_methods, args.latency_targets)}
    if not rows:
        raise SystemExit(f"no finished rows in {args.macs_dir} or {args.latency_dir}: pass --run to train them")
    lengths = {sum(row["epochs"].values()) for row in rows.values()}  # the page states one length for every row
    searched = {row["epochs"]["before_finetune"] for row in rows.values() if row["method"] not in PEERS}
    if len(lengths) > 1 or len(searched) > 1:  # and one search length for ours
        raise SystemExit(f"rows trained for different numbers of epochs ({sorted(lengths)} in all, {sorted(searched)} "
                         "searched): give out-dirs of one --search-epochs/--finetune-epochs, or pass --run")
    seeds = {row["seed"] for row in rows.values()}
    if seeds != {args.seed}:
        raise SystemExit(f"rows trained with seed(s) {sorted(seeds)}, not --seed {args.seed}: the page names one seed")
    previous = json.loads(args.carry.read_text()) if args.carry else None
    rename = dict(pair.split("=", 1) for pair in args.carry_as)
    carried = carried_points(previous, rename, set(rows)) if previous else {}
    dense, _ = compare.load_parent(compare.SHIPPED, args.model, 10)
    dense_json = next((d / "dense.json" for d in (args.macs_dir, args.latency_dir) if (d / "dense.json").is_file()), None)
    if dense_json is None:
        raise SystemExit(f"no dense.json in {args.macs_dir} or {args.latency_dir}: pass --run to write it")
    dense_acc = json.loads(dense_json.read_text())["test_acc"]
    models = {"dense": dense.eval()}
    for key, row in rows.items():
        models[key] = load_pruned_with_metadata(row["model_file"])[0].eval()
    started = time.perf_counter()
    benches = [compare_latency(models, (3, 32, 32), tuple(args.batch_sizes), threads=args.threads,
                               max_seconds=args.seconds) for _ in range(args.timings)]
    bench = benches[0]
    ratios = {key: {bs: sorted(b["models"][key]["latency"][bs]["paired_ratio"] for b in benches)
                    for bs in args.batch_sizes} for key in models}
    curves: dict[str, dict[str, list]] = {}
    matched: dict[str, dict[str, list]] = {}
    for bs in args.batch_sizes:
        methods = [*macs_methods, LATENCY_METHODS[bs], *VARIANTS[bs]]
        curves[str(bs)] = {}
        for method in methods:
            points = [{"method": "dense", "latency_ratio": 1.0, "test_acc": dense_acc}]
            for key, row in rows.items():
                if row["method"] == method:
                    points.append({"method": method, "target": row["target"],
                                   "target_metric": row.get("target_metric", "macs"), "test_acc": row["test_acc"],
                                   "macs_ratio": row["macs_ratio"], "notes": compare._notes(row),
                                   "latency_ratio": statistics.median(ratios[key][bs]),
                                   "latency_ratios": ratios[key][bs],
                                   "latency_ms": bench["models"][key]["latency"][bs]["median_ms"]})
            points += carried.get(str(bs), {}).get(method, [])
            if len(points) > 1:
                curves[str(bs)][method] = points
        matched[str(bs)] = matched_accuracies(curves[str(bs)])
    report = {
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "model": args.model, "seed": args.seed, "epochs": lengths.pop(),  # the rows' own, not today's flags
        "search_epochs_note": f"{searched.pop()} search epoch(s) + the rest finetuning, one lr schedule",
        "threads": bench["threads"], "allocator": keep_freed_memory(), "batch_sizes": args.batch_sizes,
        "timing_seconds": time.perf_counter() - started,
        "dense": {"test_acc": dense_acc}, "labels": LABELS,
        "rows": {k: {f: r.get(f) for f in ("method", "target", "target_metric", "test_acc", "macs_ratio", "info",
                                           "epochs", "seed")} for k, r in rows.items()},
        "carried": None if previous is None else {
            "from": previous["date"], "command": previous["command"], "rename": rename,
            "compare_commands": previous.get("compare_commands", []),
            "machine": previous["machine"], "threads": previous["threads"],
            "rows": {f"{r['method']}@{r['target']:g}": r for r in
                     ({**r, "method": rename.get(r["method"], r["method"])} for r in previous["rows"].values())
                     if f"{r['method']}@{r['target']:g}" not in rows}},
        "renamed": previous.get("renamed", []) if previous else [],
        "bench": bench, "timings": args.timings, "curves": curves, "matched": matched, "figure": out.name + ".png",
        "compare_commands": [shlex.join(["python", "experiments/compare.py", *compare_args(args, d, m, t)])
                             for d, m, t in ((args.macs_dir, macs_methods, args.macs_targets),
                                             (args.latency_dir, latency_methods, args.latency_targets))],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure(report), out.with_suffix(".png"))
    atomic_write_text(markdown(report), out.with_suffix(".md"))
    atomic_write_json(report, out.with_suffix(".json"))
    if out.resolve().parent == RESULTS.resolve():  # a page elsewhere (a trial) leaves the summary alone
        atomic_write_text(summary_markdown(), RESULTS / "latency.md")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
