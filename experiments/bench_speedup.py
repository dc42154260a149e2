"""Realized CPU speed-up of pruned models vs their dense parent, measured in one interleaved run.

For each pruned file (and optionally a Torch-Pruning magnitude baseline pruned to the same MACs) it reports
latency at each batch size, speed-up = dense latency / pruned latency, and efficiency = speed-up / (dense
MACs / pruned MACs): 1.0 means latency fell exactly as much as MACs did.

    python experiments/bench_speedup.py --dense cifar_resnet56 --pruned runs/a/pruned.pt runs/b/pruned.pt \
        --torch-pruning
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnas_prune.models.cost import count_cost
from dnas_prune.errors import CheckpointError
from dnas_prune.models import MODEL_NAMES, CifarResNet, create_model
from dnas_prune.device.timing import compare_latency
from dnas_prune.io.pruned import FORMAT, load_pruned_with_metadata
from dnas_prune.io.checkpoint import safe_load
from peers import cpu_line, machine, torch_pruning_baseline

RESULTS = Path(__file__).resolve().parent / "results"


def load_dense(source: str, arch: str) -> nn.Module:
    """A registry name (random weights: fine for latency), a save_pruned file, or a trainer checkpoint of ``arch``."""
    if source in MODEL_NAMES and not Path(source).exists():
        return create_model(source).eval()
    state = safe_load(source, "a dense model checkpoint")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return load_pruned_with_metadata(source)[0]
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source}: neither a pruned-model file nor a checkpoint with a 'model' state_dict")
    model = create_model(arch)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: does not fit {arch}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def markdown(report: dict[str, Any]) -> str:
    bench = report["benchmark"]
    lines = [
        "# Realized speed-up vs dense (CPU)", "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}, seed {report['seed']}",
        f"- machine: {cpu_line(report['machine'])}, {bench['threads']} torch threads "
        f"({report['machine']['logical_cpus']} logical CPUs), torch {report['machine']['torch']}",
        f"- input {'x'.join(map(str, bench['input_size']))}; models timed interleaved round-robin in one run; "
        "memory format chosen per model and batch (faster of NCHW / channels_last)",
        "- speed-up = dense median / model median; efficiency = speed-up / (dense MACs / model MACs)", "",
    ]
    header = "| model | MACs (M) | params (M) | MACs reduction |"
    rule = "|---|---:|---:|---:|"
    for bs in bench["batch_sizes"]:
        header += f" bs{bs} median ms | bs{bs} speed-up | bs{bs} efficiency | bs{bs} format |"
        rule += "---:|---:|---:|---|"
    lines += [header, rule]
    for name, entry in bench["models"].items():
        row = f"| {name} | {entry['macs'] / 1e6:.2f} | {entry['params'] / 1e6:.3f} | {bench['ratios'][name][bench['batch_sizes'][0]]['macs_reduction']:.2f}x |"
        for bs in bench["batch_sizes"]:
            lat, ratio = entry["latency"][bs], bench["ratios"][name][bs]
            row += f" {lat['median_ms']:.3f} | {ratio['speedup']:.2f}x | {ratio['efficiency']:.2f} | {lat['memory_format']} |"
        lines.append(row)
    for name, info in report["torch_pruning"].items():
        match = "within 1 %" if info["macs_match"] else "NOT within 1 %"
        lines.append(f"\n{name}: {info['method']}, {info['steps']} steps, MACs {info['macs_vs_target']:.4f}x target ({match})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", default="cifar_resnet56", help="registry name, save_pruned file or trainer checkpoint")
    parser.add_argument("--arch", default="cifar_resnet56", help="architecture of a dense trainer checkpoint")
    parser.add_argument("--pruned", type=Path, nargs="+", required=True, help="pruned-model files")
    parser.add_argument("--torch-pruning", action="store_true", help="add a Torch-Pruning baseline per pruned file")
    parser.add_argument("--tp-method", choices=("magnitude", "groupnorm"), default="magnitude")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=3.0, help="timed-loop cap per model and batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    dense = load_dense(args.dense, args.arch)
    input_size = tuple(args.input_size or ((3, 32, 32) if isinstance(dense, CifarResNet) else (3, 224, 224)))
    models: dict[str, nn.Module] = {"dense": dense}
    baselines: dict[str, nn.Module] = {}
    tp_info: dict[str, Any] = {}
    for path in args.pruned:
        model, metadata = load_pruned_with_metadata(path)
        name = path.stem if path.stem not in models else str(path)
        models[name] = model
        if args.torch_pruning:
            target = count_cost(model, input_size).macs
            baseline, info = torch_pruning_baseline(dense, target, input_size, args.tp_method)
            baselines[f"torch_pruning@{name}"] = baseline
            tp_info[f"torch_pruning@{name}"] = info
            print(f"torch-pruning baseline for {name}: {info['steps']} steps, MACs {info['macs_vs_target']:.4f}x target",
                  file=sys.stderr)
    models.update(baselines)
    bench = compare_latency(models, input_size, args.batch_sizes, repeats=args.repeats, threads=args.threads,
                            max_seconds=args.max_seconds)
    report = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_speedup.py", *argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "machine": machine(),
        "dense": args.dense,
        "pruned_files": [str(p) for p in args.pruned],
        "torch_pruning": tp_info,
        "benchmark": bench,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_speedup.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out_dir / "bench_speedup.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
