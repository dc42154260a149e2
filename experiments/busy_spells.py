"""Which shapes does a shared host's busy spell slow? Why a latency landing cannot always hold at several threads.

On a shared VM the pruned/dense ratio at several threads toggles for minutes between a quiet level and a busy one,
while at one thread it holds (latency_budget_anchor_s*.md). This times several shapes of one model interleaved in
one process, ``--threads`` threads, for ``--minutes``: the dense model, the same with the later blocks of each
stage removed (``depth_cut``), with every width halved (``stream_half``: stem, stages and blocks), with only the
blocks' inner widths halved (``inner_half``: the residual stream stays full), and any finalized models given with
``--pruned``. Each window (``--rounds`` interleaved forwards per shape) gives every shape's median time over the
dense one's. A window is counted busy when ``inner_half`` reads in the upper of its two groups of readings (Otsu's
split, if the groups' medians differ by over ``--min-gap``): a rule on one shape, stated, not a guess at the host.
Then the same shapes at one thread for a minute. Writes experiments/results/{name}.{json,md}; run it with
nothing else on the machine.

``--spin-seconds S`` makes a known busy spell: a second process spins on one core for S seconds, rests S, and so on
(started and stopped between windows, each window records which); the page then also gives each shape's ratio with
and without it, the host's own spells aside. ``--hog memory`` makes it stream through arrays larger than any cache
instead: a neighbour's memory traffic rather than its CPU time (with ``--threads 1`` it takes no core from the timing).

    python experiments/busy_spells.py --pruned runs/latency_budget/cifar_resnet20_0.5_bs64/pruned.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dnas_prune import create_model
from dnas_prune.device.allocator import keep_freed_memory
from dnas_prune.device.policy import using_threads
from dnas_prune.device.timing import Runner
from dnas_prune.io.checkpoint import atomic_write_json, atomic_write_text
from dnas_prune.io.pruned import load_pruned
from dnas_prune.models import build_model
from dnas_prune.models.spec import spec_of

from peers import machine

RESULTS = Path(__file__).resolve().parent / "results"
SENTINEL = "inner_half"  # the shape whose two groups of readings define a busy window


def shapes_of(dense: dict, pruned: list[Path]) -> dict[str, dict]:
    """Architecture specs: the dense one, three hand-made cuts of it and the given finalized models."""
    depth = copy.deepcopy(dense)
    for i, stage in enumerate(depth["stages"]):  # keep each stage's first block, and half of the rest from stage 2
        keep = len(stage["blocks"]) if i == 0 else max(1, (len(stage["blocks"]) + 1) // 2)
        stage["blocks"] = stage["blocks"][:keep]
    stream = copy.deepcopy(dense)
    stream["stem"] //= 2
    for stage in stream["stages"]:
        stage["width"] //= 2
        for block in stage["blocks"]:
            block["inner"] = [w // 2 for w in block["inner"]]
    inner = copy.deepcopy(dense)
    for stage in inner["stages"]:
        for block in stage["blocks"]:
            block["inner"] = [w // 2 for w in block["inner"]]
    shapes = {"dense": dense, "depth_cut": depth, "stream_half": stream, SENTINEL: inner}
    for i, path in enumerate(pruned, 1):
        shapes[f"pruned{i}"] = spec_of(load_pruned(path))  # the files are in the JSON's command
    return shapes


HOGS = {  # what the second process of --spin-seconds runs: a known busy spell of one kind
    "spin": "while True: pass",  # one core's time, no memory traffic
    # far past any cache: memory bandwidth and the shared cache
    "memory": "import torch\ntorch.set_num_threads(1)\na = torch.ones(1 << 26)\nb = torch.empty_like(a)\n"
              "while True:\n    b.copy_(a)",
}
HOG_DOES = {"spin": "spun on one core", "memory": "streamed through two 256 MB arrays on one core"}  # for the page


class Spinner:
    """A second process running ``HOGS[hog]`` while ``on``: a busy spell whose times are known."""

    def __init__(self, hog: str = "spin") -> None:
        self.code = HOGS[hog]
        self.process: subprocess.Popen | None = None

    def set(self, on: bool) -> None:
        if on and self.process is None:
            self.process = subprocess.Popen([sys.executable, "-c", self.code])
        elif not on and self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def time_windows(shapes: dict[str, dict], batch_size: int, threads: int, seconds: float,
                 rounds: int, spin_seconds: float = 0.0, hog: str = "spin") -> list[dict[str, float]]:
    """Each window: every shape's median ms over ``rounds`` interleaved forwards (channels_last, fp32), and whether
    the spinner ran (``spin_seconds`` on, as long off, from the start; 0: never; ``hog``: what it runs)."""
    windows: list[dict[str, float]] = []
    spinner = Spinner(hog)
    with using_threads(threads), torch.inference_mode():
        runners = {k: Runner(build_model(spec), (3, 32, 32), batch_size, "channels_last", torch.float32)
                   for k, spec in shapes.items()}
        for runner in runners.values():
            runner.warmup(5, 10.0)
        start = time.monotonic()
        try:
            while time.monotonic() < start + seconds:
                spinning = spin_seconds > 0 and int((time.monotonic() - start) // spin_seconds) % 2 == 0
                spinner.set(spinning)
                times: dict[str, list[float]] = {k: [] for k in runners}
                for _ in range(rounds):
                    for k, runner in runners.items():
                        times[k].append(runner.once())
                windows.append({"at": time.strftime("%H:%M:%S"), "spinner": spinning,
                                **{k: statistics.median(v) * 1e3 for k, v in times.items()}})
                print(" ".join(f"{k}={windows[-1][k] / windows[-1]['dense']:.3f}" for k in runners if k != "dense"),
                      f"dense={windows[-1]['dense']:.2f} ms", "spinner" if spinning else "", flush=True)
        finally:
            spinner.set(False)
    return windows


def busy_threshold(ratios: list[float], min_gap: float) -> float:
    """Where the sentinel's readings split in two: the split of the sorted readings with the largest variance
    between its two groups (Otsu's rule in one dimension), when the groups' medians differ by over ``min_gap``
    (relative); otherwise above them all (no busy window)."""
    ordered = sorted(ratios)
    n, best = len(ordered), (0.0, 0)
    for i in range(1, n):
        low, high = ordered[:i], ordered[i:]
        between = i * (n - i) * (statistics.fmean(high) - statistics.fmean(low)) ** 2
        best = max(best, (between, i))
    i = best[1]
    if i == 0 or statistics.median(ordered[i:]) <= (1 + min_gap) * statistics.median(ordered[:i]):
        return float("inf")
    return (ordered[i - 1] + ordered[i]) / 2


def summarize(windows: list[dict[str, float]], shapes: dict[str, dict], min_gap: float) -> dict[str, dict]:
    threshold = busy_threshold([w[SENTINEL] / w["dense"] for w in windows], min_gap)
    busy = [w[SENTINEL] / w["dense"] > threshold for w in windows]
    summary = {}
    for k in shapes:
        if k == "dense":
            continue
        quiet_r = [w[k] / w["dense"] for w, b in zip(windows, busy) if not b]
        busy_r = [w[k] / w["dense"] for w, b in zip(windows, busy) if b]
        entry = {"quiet_ratio": statistics.median(quiet_r) if quiet_r else None,
                 "busy_ratio": statistics.median(busy_r) if busy_r else None}
        entry["busy_over_quiet"] = (entry["busy_ratio"] / entry["quiet_ratio"]
                                    if quiet_r and busy_r else None)
        summary[k] = entry
    dense_quiet = [w["dense"] for w, b in zip(windows, busy) if not b]
    dense_busy = [w["dense"] for w, b in zip(windows, busy) if b]
    summary["dense"] = {"quiet_ms": statistics.median(dense_quiet) if dense_quiet else None,
                        "busy_ms": statistics.median(dense_busy) if dense_busy else None}
    summary["windows"] = {"busy": sum(busy), "all": len(windows), "threshold": threshold}
    spun = [bool(w.get("spinner")) for w in windows]
    if any(spun):  # the known spell: each shape's median ratio with the spinner and without
        summary["spinner"] = {"windows": sum(spun), "busy_windows": sum(b and s for b, s in zip(busy, spun))}
        for k in shapes:
            name = "dense_ms" if k == "dense" else "ratio"
            for on in (True, False):
                values = [w[k] if k == "dense" else w[k] / w["dense"] for w, s in zip(windows, spun) if s == on]
                summary["spinner"].setdefault(k, {})[f"{name}_{'on' if on else 'off'}"] = (
                    statistics.median(values) if values else None)
    return summary


def widths(spec: dict) -> str:
    return " / ".join(f"{s['width']}: " + ",".join(str(b["inner"][0]) for b in s["blocks"]) for s in spec["stages"])


def render(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    fmt = lambda x, p=3: "–" if x is None else f"{x:.{p}f}"  # noqa: E731
    lines = ["# Busy spells: which shapes a shared host slows at several threads\n",
             f"Command: `{result['command']}`  ",
             f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), torch {m['torch']}; {result['model']}, batch "
             f"{result['batch_size']}, fp32, channels_last, {result['threads']} thread{'s' * (result['threads'] != 1)} "
             f"for {result['minutes']:g} min "
             f"({s['windows']['all']} windows of {result['rounds']} interleaved forwards per shape), then 1 thread "
             f"for {result['one_thread_minutes']:g} min.\n",
             f"A window is busy when `{SENTINEL}` reads in the upper of its two groups of readings (Otsu's split, "
             f"if their medians differ by over {100 * result['min_gap']:g} %; here above "
             f"{fmt(s['windows']['threshold'])}): "
             f"{s['windows']['busy']} of {s['windows']['all']} windows. Dense: {fmt(s['dense']['quiet_ms'], 2)} ms quiet, "
             f"{fmt(s['dense']['busy_ms'], 2)} ms busy.\n",
             "| shape | stage width: inner widths | ratio to dense, quiet | busy | busy / quiet | at 1 thread |",
             "|---|---|---:|---:|---:|---:|"]
    for k, spec in result["shapes"].items():
        if k == "dense":
            continue
        e = s[k]
        lines.append(f"| {k} | {widths(spec)} | {fmt(e['quiet_ratio'])} | {fmt(e['busy_ratio'])} | "
                     f"{fmt(e['busy_over_quiet'])} | {fmt(result['one_thread'][k])} |")
    lines += ["", "Ratios are medians over windows of each window's median time over the dense model's in the same "
              "window. The windows in order are in the JSON.", ""]
    if "spinner" in s:
        spin = s["spinner"]
        lines += [f"A second process {HOG_DOES[result.get('hog', 'spin')]} for {result['spin_seconds']:g} s, then rested "
                  f"as long, in turn "
                  f"from the start, over {spin['windows']} of the {s['windows']['all']} windows ({spin['busy_windows']} "
                  f"of them busy by the rule above). Dense: {fmt(spin['dense']['dense_ms_off'], 2)} ms without it, "
                  f"{fmt(spin['dense']['dense_ms_on'], 2)} ms with it.", "",
                  "| shape | ratio to dense, spinner off | spinner on | on / off |", "|---|---:|---:|---:|"]
        for k in result["shapes"]:
            if k == "dense":
                continue
            off, on = spin[k]["ratio_off"], spin[k]["ratio_on"]
            lines.append(f"| {k} | {fmt(off)} | {fmt(on)} | {fmt(on / off if on and off else None)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--pruned", type=Path, action="append", default=[], help="a finalized model (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--one-thread-minutes", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=15, help="interleaved forwards per shape in a window")
    p.add_argument("--min-gap", type=float, default=0.05, help="how far apart the medians of the sentinel's two "
                   "groups of readings must be for the upper one to count as busy")
    p.add_argument("--spin-seconds", type=float, default=0.0, help="a second process spins on one core this long, "
                   "then rests as long, in turn (0: none): a busy spell of known times")
    p.add_argument("--hog", choices=sorted(HOGS), default="spin", help="what the second process of --spin-seconds "
                   "does: " + "; ".join(f"{k}: {v}" for k, v in HOG_DOES.items()) + " (default: spin)")
    p.add_argument("--name", default="busy_spells")
    p.add_argument("--summary-only", action="store_true", help="only split and render again, from {name}.json")
    args = p.parse_args()
    if args.summary_only:
        result = json.loads((RESULTS / f"{args.name}.json").read_text())
        result["min_gap"] = args.min_gap
        result.pop("busy_factor", None)
        result["summary"] = summarize(result["windows"], result["shapes"], args.min_gap)
        atomic_write_json(result, RESULTS / f"{args.name}.json")
        atomic_write_text(render(result), RESULTS / f"{args.name}.md")
        return 0
    if args.spin_seconds < 0:
        p.error(f"--spin-seconds {args.spin_seconds:g}: give 0 (no spinner) or a positive number of seconds")
    for path in args.pruned:
        if not path.is_file():
            p.error(f"--pruned {path}: no such file; pass a dnas-prune finalize output")
    keep_freed_memory()
    torch.manual_seed(0)
    shapes = shapes_of(spec_of(create_model(args.model)), args.pruned)
    windows = time_windows(shapes, args.batch_size, args.threads, 60 * args.minutes, args.rounds, args.spin_seconds,
                           args.hog)
    single = time_windows(shapes, args.batch_size, 1, 60 * args.one_thread_minutes, args.rounds)
    one_thread = {k: statistics.median(w[k] / w["dense"] for w in single) for k in shapes}
    result = {"command": "python experiments/busy_spells.py " + shlex.join(sys.argv[1:]), "machine": machine(),
              "model": args.model, "batch_size": args.batch_size, "threads": args.threads, "minutes": args.minutes,
              "one_thread_minutes": args.one_thread_minutes, "rounds": args.rounds, "min_gap": args.min_gap,
              "spin_seconds": args.spin_seconds, "hog": args.hog,
              "seed": 0, "shapes": shapes, "windows": windows, "one_thread_windows": single,
              "one_thread": one_thread, "summary": summarize(windows, shapes, args.min_gap)}
    atomic_write_json(result, RESULTS / f"{args.name}.json")
    text = render(result)
    atomic_write_text(text, RESULTS / f"{args.name}.md")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
