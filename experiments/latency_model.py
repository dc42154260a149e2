"""Is the latency table a good model of this device? (issue 28, deliverable 3)

For each model and batch size: build the latency table (measured afresh unless --reuse-tables), draw --archs random
finalized architectures (random block removal, random stream and inner widths at the architecture step, seeded:
the same architectures for every batch size of a model), measure each with the device timing the table uses
(median of repeats) and predict it from the table. Reports the median and 90th percentile of the absolute relative
error per model and batch size (goal: <= 10 % and <= 20 %), and a predicted-vs-measured scatter.

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
    archs = []
    for i in range(args.archs):
        arch = random_spec(spec, rng, step)
        measured = table.measure(arch, timing)
        predicted = table.predict_ms(arch)
        archs.append({"spec": arch, "macs": macs_of(arch, size), "measured_ms": measured["median_ms"],
                      "p90_ms": measured.get("p90_ms"), "noisy": measured.get("warning") is not None,
                      "predicted_ms": predicted,
                      "rel_error": abs(predicted - measured["median_ms"]) / measured["median_ms"]})
        print(f"{model} bs {batch_size} arch {i + 1}/{args.archs}: measured {measured['median_ms']:.3f} ms, "
              f"predicted {predicted:.3f} ms ({archs[-1]['rel_error']:.1%})", flush=True)
    dense_measured = table.measure(spec, timing)["median_ms"]
    errors = [a["rel_error"] for a in archs]
    return {
        "model": model, "batch_size": batch_size, "input_size": size, "arch_step": step,
        "table": {"path": str(table.path), "settings": {k: v for k, v in table.settings.items() if k != "spec"},
                  "memory_format": table.memory_format, "constant_ms": table.constant_ms, "scale": table.scale,
                  "layer_shapes": len(table.layers), "built": table.info.get("built"),
                  "seconds_incl_load": table_seconds},
        "dense": {"measured_ms": dense_measured, "predicted_ms": table.predict_ms(spec), "macs": macs_of(spec, size)},
        "median_rel_error": quantile(errors, 0.5), "p90_rel_error": quantile(errors, 0.9),
        "max_rel_error": max(errors), "noisy_measurements": sum(a["noisy"] for a in archs),
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - started, "archs": archs,
    }


def figure(results: list[dict[str, Any]], title: str) -> plt.Figure:
    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        measured = [a["measured_ms"] for a in r["archs"]]
        predicted = [a["predicted_ms"] for a in r["archs"]]
        top = max(measured + predicted + [r["dense"]["measured_ms"], r["dense"]["predicted_ms"]]) * 1.08
        line = torch.linspace(0, top, 2).tolist()
        ax.fill_between(line, [0.9 * v for v in line], [1.1 * v for v in line], color="0.9", label="±10 %")
        ax.plot(line, line, color="0.4", lw=1, label="predicted = measured")
        ax.scatter(measured, predicted, s=18, label=f"random architectures ({len(measured)})", zorder=3)
        ax.scatter([r["dense"]["measured_ms"]], [r["dense"]["predicted_ms"]], marker="*", s=90, color="C3",
                   label="dense (in the fit)", zorder=4)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_title(f"{r['model']}, batch {r['batch_size']}: median {r['median_rel_error']:.1%}, "
                     f"p90 {r['p90_rel_error']:.1%}", fontsize=9)
        ax.set_xlabel("measured latency (ms per batch, median)")
        ax.set_ylabel("predicted latency (ms per batch)")
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Latency model: predicted vs measured latency of random pruned architectures",
        "",
        "Issue 28, deliverable 3: the per-layer latency table (`dnas_prune/search/latency.py`) predicts the latency",
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
        "| model | batch | median error | p90 error | max error | goal | dense measured / predicted | "
        "constant, scale | table built | load avg (start, end) | noisy timings |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        ok = r["median_rel_error"] <= GOAL_MEDIAN and r["p90_rel_error"] <= GOAL_P90
        built = r["table"]["built"]
        built_text = f"{built['seconds']:.0f} s" if built else "cached"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['median_rel_error']:.1%} | {r['p90_rel_error']:.1%} | "
            f"{r['max_rel_error']:.1%} | {'met' if ok else 'not met'} | {r['dense']['measured_ms']:.3f} / "
            f"{r['dense']['predicted_ms']:.3f} ms | {r['table']['constant_ms']:+.3f} ms, {r['table']['scale']:.3f} | "
            f"{built_text} | {r['load_average_start'][0]:.2f}, {r['load_average_end'][0]:.2f} | "
            f"{r['noisy_measurements']}/{len(r['archs'])} |")
    lines += [
        "",
        "![predicted vs measured latency](latency_model.png)",
        "",
        "Each architecture is a random finalized spec of the dense model: an overall keep level uniform in",
        "[0.15, 1], every stream and inner width that level times its full width jittered by x[0.6, 1.4] and",
        f"rounded to a multiple of {report['arch_step']} channels (widths a search with that many channels per gate",
        "reaches; the table's grid holds every such width up to about 10 steps, and a thinned set above), each",
        "block removed with probability 0.5 * (1 - level).",
        "Measured: the median of repeated forwards with the table's settings; predicted: the table's layer sums",
        "with its fitted constant and scale. The dense model is part of the table's fit and is drawn apart;",
        "the errors are over the random architectures only. 'noisy timings' counts measurements whose p90 was",
        "over 1.5x their median (the machine was busy). Per-architecture specs and numbers are in",
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
    parser.add_argument("--reuse-tables", action="store_true", help="use cached tables instead of measuring afresh")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
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
    save_figure(figure(results, f"Latency table vs measurement: {report['machine']['cpu'].get('model', 'CPU')}, "
                                f"threads: {threads}, {args.precision}"), args.out / "latency_model.png")
    atomic_write_text(markdown(report), args.out / "latency_model.md")
    atomic_write_json(report, args.out / "latency_model.json")  # last: it marks a complete run
    for r in results:
        print(f"{r['model']} bs {r['batch_size']}: median error {r['median_rel_error']:.1%}, "
              f"p90 {r['p90_rel_error']:.1%} over {len(r['archs'])} architectures")
    print(f"wrote {args.out / 'latency_model.md'}")


if __name__ == "__main__":
    main()
