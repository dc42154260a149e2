"""Is the latency table a good model of this device? (issue 28, deliverable 3)

For each model and batch size: build the latency table (measured afresh unless --reuse-tables), draw --archs random
finalized architectures (random block removal, random stream and inner widths at the architecture step, seeded:
the same architectures for every batch size of a model), time each beside the dense model (interleaved forwards,
the table's settings) and predict it from the table. Reports the median and 90th percentile of the absolute
relative error per model and batch size (goal: <= 10 % and <= 20 %) of two figures:

- latency relative to the dense model: predicted (table) vs measured (paired, drift-free);
- latency in ms: predicted vs the paired ratio times the dense model's median over the whole row.

The first is what a latency budget reads (a fraction of dense); the second also carries the machine's change of
speed between the table's build and the check, reported beside it (the dense model's range over the row).
Writes a predicted-vs-measured scatter of both.

    python experiments/latency_model.py                                   # the full check
    python experiments/latency_model.py --configs cifar_resnet20:1 --archs 5 --out /tmp/latency_smoke

Writes OUT/latency_model.{json,md,png} (default OUT: experiments/results). Time it on a quiet machine: other work
on the cores distorts both the table and the measurements.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text  # noqa: E402
from dnas_prune.report.report import save_figure  # noqa: E402
from dnas_prune.search.latency import (DEFAULT_CHANNEL_STEP, Timing, latency_table, random_spec,  # noqa: E402
                                       spec_uses)

RESULTS = Path(__file__).parent / "results"
DEFAULT_CONFIGS = ("cifar_resnet20:1", "cifar_resnet20:64", "cifar_resnet56:1", "cifar_resnet56:64", "resnet50:1")
ISA_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx")
GOAL_MEDIAN, GOAL_P90 = 0.10, 0.20


def lscpu() -> dict[str, Any]:
    """CPU model and its vector ISA flags, from lscpu (empty when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", "").strip(), "cpus": fields.get("CPU(s)", "").strip(),
            "isa_flags": [f for f in flags if f.startswith(ISA_PREFIXES)]}


def quantile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def macs_of(spec: dict, input_size: list[int]) -> int:
    return sum(u.macs_coef * u.cin * u.cout for u in spec_uses(spec, input_size))


def run_config(model: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    load_start = list(os.getloadavg())
    started = time.perf_counter()
    table = latency_table(model, batch_size, threads=args.threads, precision=args.precision,
                          memory_format=args.memory_format, channel_step=args.channel_step,
                          rebuild=not args.reuse_tables, progress=not args.no_progress)
    table_seconds = time.perf_counter() - started
    spec, size = table.dense_spec, list(table.input_size)
    step = args.arch_step or args.channel_step
    rng = random.Random(f"{args.seed}/{model}")
    timing = Timing(model_repeats=args.repeats, model_seconds=args.max_seconds)
    specs = [random_spec(spec, rng, step) for _ in range(args.archs)]
    predicted_dense = table.predict_ms(spec)
    count = iter(range(1, args.archs + 1))
    timed = table.measure_beside_dense(specs, timing, on_each=lambda: print(
        f"{model} bs {batch_size}: architecture {next(count)}/{args.archs} timed", flush=True))
    archs = []
    for arch, t in zip(specs, timed["models"]):
        predicted = table.predict_ms(arch)
        archs.append({"spec": arch, "macs": macs_of(arch, size), "measured_ratio": t["ratio"],
                      "predicted_ratio": predicted / predicted_dense,
                      "ratio_error": abs(predicted / predicted_dense - t["ratio"]) / t["ratio"],
                      "measured_ms": t["ms"], "predicted_ms": predicted,
                      "rel_error": abs(predicted - t["ms"]) / t["ms"],
                      "own_median_ms": t["median_ms"], "dense_median_ms": t["dense_median_ms"],
                      "noisy": t["warning"] is not None})
    ratio_errors = [a["ratio_error"] for a in archs]
    errors = [a["rel_error"] for a in archs]
    dense_levels = [a["dense_median_ms"] for a in archs]
    return {
        "model": model, "batch_size": batch_size, "input_size": size, "arch_step": step,
        "table": {"path": str(table.path), "settings": {k: v for k, v in table.settings.items() if k != "spec"},
                  "memory_format": table.memory_format, "constant_ms": table.constant_ms, "scale": table.scale,
                  "layer_shapes": len(table.layers), "built": table.info.get("built"),
                  "reference": table.info.get("reference"), "seconds_incl_load": table_seconds},
        "dense": {"measured_ms": timed["dense_ms"], "predicted_ms": predicted_dense, "macs": macs_of(spec, size),
                  "range_ms": [min(dense_levels), max(dense_levels)]},
        "median_ratio_error": quantile(ratio_errors, 0.5), "p90_ratio_error": quantile(ratio_errors, 0.9),
        "max_ratio_error": max(ratio_errors),
        "median_rel_error": quantile(errors, 0.5), "p90_rel_error": quantile(errors, 0.9),
        "max_rel_error": max(errors), "noisy_measurements": sum(a["noisy"] for a in archs),
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - started, "archs": archs,
    }


def figure(results: list[dict[str, Any]], title: str) -> plt.Figure:
    """Per model and batch size: predicted vs measured, relative to dense (top) and in ms (bottom)."""
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 8.4), squeeze=False)
    for col, r in enumerate(results):
        for row, (key, error, unit) in enumerate((("ratio", "ratio_error", "fraction of dense latency"),
                                                  ("ms", "rel_error", "ms per batch"))):
            ax = axes[row][col]
            measured = [a[f"measured_{key}"] for a in r["archs"]]
            predicted = [a[f"predicted_{key}"] for a in r["archs"]]
            dense = (1.0, 1.0) if key == "ratio" else (r["dense"]["measured_ms"], r["dense"]["predicted_ms"])
            top = max(measured + predicted + list(dense)) * 1.08
            line = [0.0, top]
            ax.fill_between(line, [0.9 * v for v in line], [1.1 * v for v in line], color="0.9", label="±10 %")
            ax.plot(line, line, color="0.4", lw=1, label="predicted = measured")
            ax.scatter(measured, predicted, s=18, label=f"random architectures ({len(measured)})", zorder=3)
            ax.scatter([dense[0]], [dense[1]], marker="*", s=90, color="C3", label="dense", zorder=4)
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            median, p90 = r[f"median_{error}"], r[f"p90_{error}"]
            ax.set_title(f"{r['model']}, batch {r['batch_size']}\n{'relative to dense' if key == 'ratio' else 'ms'}: "
                         f"median {median:.1%}, p90 {p90:.1%}", fontsize=9)
            ax.set_xlabel(f"measured ({unit})")
            ax.set_ylabel(f"predicted ({unit})")
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10 if n > 1 else 8)
    fig.tight_layout()
    return fig


def _met(median: float, p90: float) -> str:
    return "met" if median <= GOAL_MEDIAN and p90 <= GOAL_P90 else "not met"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Latency model: predicted vs measured latency of random pruned architectures",
        "",
        "Issue 28, deliverable 3: the per-layer latency table (`dnas_prune/search/latency/`) predicts the latency",
        "of finalized architectures it has not seen. Goal: median absolute relative error <= 10 % and 90th",
        "percentile <= 20 % per model and batch size.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu'].get('model', '?')} ({m['cpu'].get('cpus', '?')} CPUs), torch {m['torch']} "
        f"(dispatch {m['cpu_capability']}), threads: {m['threads']}, {report['precision']}, memory format "
        f"{report['memory_format']}; ISA flags: {' '.join(m['cpu'].get('isa_flags', []))}.",
        f"Load average (1/5/15 min) at the start {' / '.join(f'{v:.2f}' for v in report['load_average_start'])}, "
        f"at the end {' / '.join(f'{v:.2f}' for v in report['load_average_end'])}. Seed {report['seed']}, "
        f"{report['archs']} architectures per row, table grid step {report['channel_step']}; "
        f"run took {report['seconds'] / 60:.1f} min ({report['date']}).",
        "",
        "| model | batch | relative to dense: median / p90 / max error | goal | in ms: median / p90 / max error | goal "
        "| dense measured (range over the row) / predicted | constant, scale | table built | noisy timings |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        built = r["table"]["built"]
        built_text = f"{built['seconds']:.0f} s" if built else "cached"
        low, high = r["dense"]["range_ms"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['median_ratio_error']:.1%} / {r['p90_ratio_error']:.1%} / "
            f"{r['max_ratio_error']:.1%} | {_met(r['median_ratio_error'], r['p90_ratio_error'])} | "
            f"{r['median_rel_error']:.1%} / {r['p90_rel_error']:.1%} / {r['max_rel_error']:.1%} | "
            f"{_met(r['median_rel_error'], r['p90_rel_error'])} | {r['dense']['measured_ms']:.3f} "
            f"({low:.3f}-{high:.3f}) / {r['dense']['predicted_ms']:.3f} ms | {r['table']['constant_ms']:+.3f} ms, "
            f"{r['table']['scale']:.3f} | {built_text} | "
            f"{r['noisy_measurements']}/{len(r['archs'])} |")
    lines += [
        "",
        f"![predicted vs measured latency]({report.get('figure', 'latency_model.png')})",
        "",
        "Each architecture is a random finalized spec of the dense model: an overall keep level uniform in",
        "[0.15, 1], every stream and inner width that level times its full width jittered by x[0.6, 1.4] and",
        f"rounded to a multiple of {report['arch_step']} channels (widths a search with that many channels per gate",
        "reaches; the table's grid holds every such width up to about 10 steps, and a thinned set above), each",
        "block removed with probability 0.5 * (1 - level).",
        "",
        "Measured: each architecture's forwards interleaved with the dense model's (the table's threads, dtype,",
        "batch and layout); 'relative to dense' is the median over rounds of the architecture's time over the dense",
        "one's in the same round, which the machine's drift does not move; 'in ms' is that ratio times the dense",
        "model's median over the whole row. Predicted: the table's layer sums with its fitted constant and scale",
        "(relative to dense: over the table's prediction of the dense model). The dense model's range is the",
        "lowest and highest of its medians beside each architecture: how much this machine's speed changed within",
        "the row, which the ms figure cannot escape and the relative one cancels. 'noisy timings' counts",
        "architectures whose p90 was over 1.5x their median. Per-architecture specs and numbers are in",
        "latency_model.json.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="MODEL:BATCH",
                        help="model and batch size pairs (default: %(default)s)")
    parser.add_argument("--archs", type=int, default=30, help="random architectures per pair (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's current setting)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32")
    parser.add_argument("--memory-format", choices=("auto", "nchw", "channels_last"), default="auto")
    parser.add_argument("--channel-step", type=int, default=DEFAULT_CHANNEL_STEP, help="table grid step")
    parser.add_argument("--arch-step", type=int, help="width step of the random architectures (default: the table's "
                                                      "--channel-step, the widths a search with that many channels "
                                                      "per gate reaches)")
    parser.add_argument("--repeats", type=int, default=50, help="timed forwards per architecture (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=2.0,
                        help="cap on the timed loop per architecture (default: %(default)s)")
    parser.add_argument("--reuse-tables", action="store_true", help="use cached tables (still checked against the "
                        "device, and measured again if they no longer match) instead of measuring afresh")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="page name (default: latency_model, with _step/_threads suffixes when those "
                        "are set), e.g. for a run on another CPU")
    args = parser.parse_args()
    configs = []
    for item in args.configs:
        model, _, batch = item.partition(":")
        if not batch.isdigit() or int(batch) < 1:
            parser.error(f"--configs takes MODEL:BATCH pairs, got {item!r}")
        configs.append((model, int(batch)))
    if args.archs < 1:
        parser.error("--archs must be positive")
    started, load_start = time.perf_counter(), list(os.getloadavg())
    results = [run_config(model, batch, args) for model, batch in configs]
    threads = args.threads or torch.get_num_threads()
    report = {
        "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seed": args.seed, "archs": args.archs, "channel_step": args.channel_step,
        "arch_step": args.arch_step or args.channel_step, "precision": args.precision,
        "memory_format": args.memory_format,
        "machine": {"cpu": lscpu(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
                    "torch": torch.__version__},
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - started, "goal": {"median": GOAL_MEDIAN, "p90": GOAL_P90},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # off the table's grid (architectures in steps of 1 channel, as the default search's widths), or at a thread
    # count asked for, a page of its own
    stem = ("latency_model" + ("" if report["arch_step"] == args.channel_step else f"_step{report['arch_step']}")
            + ("" if args.threads is None else f"_threads{args.threads}"))
    stem = args.name or stem
    report["figure"] = f"{stem}.png"
    save_figure(figure(results, f"Latency table vs measurement: {report['machine']['cpu'].get('model', 'CPU')}, "
                                f"threads: {threads}, {args.precision}, architectures in steps of "
                                f"{report['arch_step']} channels"), args.out / report["figure"])
    atomic_write_text(markdown(report), args.out / f"{stem}.md")
    atomic_write_json(report, args.out / f"{stem}.json")  # last: it marks a complete run
    for r in results:
        print(f"{r['model']} bs {r['batch_size']}: relative to dense, median error {r['median_ratio_error']:.1%}, "
              f"p90 {r['p90_ratio_error']:.1%}; in ms {r['median_rel_error']:.1%}, {r['p90_rel_error']:.1%} "
              f"over {len(r['archs'])} architectures")
    print(f"wrote {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
