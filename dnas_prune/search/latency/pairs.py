"""Side-by-side timings of two models for a while, in a new Python process: what a landing measures.

Why a new process: at several threads on a shared VM, a process that has trained a network times a narrow model
against the dense one steadily, while a process that only loaded the two (a deployment, a user's check) reads the
same pair from that value to well above it as the host's load comes and goes (experiments/results/
landing_process.md). A landing timed inside the search would aim at a reading no later process
sees; timed here, it sees what they see. The parent sends the table and the two specs as JSON on stdin; the child
prints one JSON list of ``[dense_ms, pruned_ms, ratio]`` per timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ...models.spec import Spec
from .cells import Timing

if TYPE_CHECKING:
    from .table import LatencyTable

Pair = tuple[float, float, float]  # dense ms, pruned ms, their paired ratio


def time_pairs_here(table: "LatencyTable", dense: Spec, pruned: Spec, at_least: int, seconds: float,
                    timing: Timing = Timing()) -> list[Pair]:
    """``table.measure_pair`` repeated until ``seconds`` have passed and at least ``at_least`` times."""
    pairs: list[Pair] = []
    started = time.monotonic()
    while len(pairs) < at_least or time.monotonic() - started < seconds:
        pairs.append(table.measure_pair(dense, pruned, timing))
    return pairs


def time_pairs_apart(table: "LatencyTable", dense: Spec, pruned: Spec, at_least: int, seconds: float,
                     timing: Timing = Timing()) -> list[Pair]:
    """:func:`time_pairs_here`, run in a new Python process with this process's interpreter and environment; here,
    with a warning, where no new process can run (an embedded interpreter, a sandbox)."""
    request = {"table": table.to_dict(), "dense": dense, "pruned": pruned, "at_least": at_least, "seconds": seconds,
               "timing": asdict(timing)}
    try:
        done = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(request), capture_output=True,
                              text=True)
        failure = f"exit {done.returncode}: " + (done.stderr.strip().splitlines() or ["no output"])[-1] \
            if done.returncode else None
    except OSError as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure is None:
        return [tuple(pair) for pair in json.loads(done.stdout.strip().splitlines()[-1])]  # type: ignore[misc]
    warnings.warn(f"could not time the pruned model in a new process ({failure}); timing it in this one, which "
                  "can read a multi-threaded ratio lower than a deployment will", stacklevel=2)
    return time_pairs_here(table, dense, pruned, at_least, seconds, timing)


def main() -> int:
    from .table import LatencyTable

    request: dict[str, Any] = json.loads(sys.stdin.read())
    table = LatencyTable.from_dict(request["table"])
    pairs = time_pairs_here(table, request["dense"], request["pruned"], request["at_least"], request["seconds"],
                            Timing(**request["timing"]))
    print(json.dumps(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
