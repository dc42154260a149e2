"""Do rounded widths make a multi-threaded latency ratio steadier? For each latency search given: its landed model
and the same search finalized with every width a multiple of 8 and of 16 (``dnas-prune finalize --round-to R``:
re-projected around where it landed, on its table), timed with the dense parent, all interleaved,
at the table's batch size and threads, once in each of ``--rounds`` new processes per search (a shared machine's
load changes over minutes, not within one timing). Reports each model's median per-round ratio per process and
their spread (max over min).

Why: issue 28's acceptance times the pair at 2 threads on a shared VM, where a narrow model's ratio moved more than
the ±10 % band between processes; SIMD kernels run a width that is a multiple of their vector length without a
remainder loop. Writes experiments/results/{name}.{json,md}. Run it with nothing else on the machine.

    python experiments/width_stability.py RUN/cifar_resnet20_0.5_bs64 ... --name width_stability
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dnas_prune.device.timing import Runner, time_interleaved
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.finalize import finalize
from dnas_prune.io.pruned import load_pretrained, load_pruned_with_metadata, save_pruned
from dnas_prune.models import spec_of
from dnas_prune.search.hooks import load_supernet

from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDINGS = (8, 16)


@torch.no_grad()
def build(run: Path, out: Path) -> dict:
    """The landed model and ``finalize(net, round_to=R)`` of the same search (what ``dnas-prune finalize --round-to
    R`` gives: re-projected around where it landed, on its latency table), saved in ``out``; their table ratios."""
    net = load_supernet(run / "supernet.pt")
    out.mkdir(parents=True, exist_ok=True)
    models = {"landed": finalize(net), **{f"round{r}": finalize(net, round_to=r) for r in ROUNDINGS}}
    table = net.latency.table  # finalize attached the search's table
    dense_ms = table.predict_ms(table.dense_spec)
    for name, model in models.items():
        save_pruned(model, out / f"{name}.pt")
    return {"run": str(run), "batch_size": table.batch_size, "threads": table.settings["threads"],
            "memory_format": table.memory_format,
            "table_ratio": {name: table.predict_ms(spec_of(model)) / dense_ms for name, model in models.items()}}


def one_round(folder: Path, batch_size: int, threads: int, memory_format: str) -> dict[str, float]:
    """In this process: the dense parent and every model of ``folder``, interleaved; each one's median per-round
    ratio to the dense model."""
    torch.set_num_threads(threads)
    names = ["landed", *(f"round{r}" for r in ROUNDINGS)]
    models = {"dense": load_pretrained("cifar10", "cifar_resnet20", 10).eval(),
              **{n: load_pruned_with_metadata(folder / f"{n}.pt")[0].eval() for n in names}}
    with torch.inference_mode():
        runners = {n: Runner(m, (3, 32, 32), batch_size, memory_format, torch.float32) for n, m in models.items()}
        time_interleaved(list(runners.values()), 5, 40, 4.0)
    return {n: statistics.median(p / d for p, d in zip(runners[n].times, runners["dense"].times)) for n in names}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# {report['name']}", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Command: `{report['command']}`  ",
             f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), torch {m['torch']}; fp32, {report['rounds']} new "
             "processes per search, one after another.", "",
             "| search | model | table ratio | measured ratio per process | median | max / min |",
             "|---|---|---:|---|---:|---:|"]
    for run in report["runs"]:
        for name, table_ratio in run["table_ratio"].items():
            readings = [r[name] for r in run["rounds"]]
            lines.append(f"| {run['run']} (batch {run['batch_size']}, {run['threads']} threads) | {name} | "
                         f"{table_ratio:.3f} | {', '.join(f'{x:.3f}' for x in readings)} | "
                         f"{statistics.median(readings):.3f} | {max(readings) / min(readings):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="latency search outputs (their supernet.pt)")
    p.add_argument("--rounds", type=int, default=6, help="new processes per search")
    p.add_argument("--work", type=Path, default=Path("runs/width_stability"))
    p.add_argument("--name", default="width_stability")
    p.add_argument("--one-round", nargs=4, help=argparse.SUPPRESS)  # internal: FOLDER BATCH THREADS FORMAT
    args = p.parse_args()
    if args.one_round:
        folder, batch, threads, fmt = args.one_round
        print(json.dumps(one_round(Path(folder), int(batch), int(threads), fmt)))
        return
    if not args.runs:
        p.error("pass one or more latency search outputs (folders with supernet.pt)")
    for run in args.runs:
        if not (run / "supernet.pt").is_file():
            p.error(f"{run} has no supernet.pt (pass a latency search's --out folder)")
    runs = [build(run, args.work / f"{i}") for i, run in enumerate(args.runs)]
    for i, run in enumerate(runs):
        run["rounds"] = []
        for _ in range(args.rounds):
            command = [sys.executable, __file__, "--one-round", str(args.work / f"{i}"), str(run["batch_size"]),
                       str(run["threads"]), run["memory_format"]]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            run["rounds"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(run["run"], run["rounds"][-1], flush=True)
    report = {"name": args.name, "command": shlex.join(["python", "experiments/width_stability.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "rounds": args.rounds, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report, RESULTS / f"{args.name}.json")
    atomic_write_text(markdown(report), RESULTS / f"{args.name}.md")
    print(markdown(report))


if __name__ == "__main__":
    main()
