"""Side-by-side timings of two models for a while, in a new Python process: what a landing measures.

Why a new process: at several threads on a shared VM, a process that has trained a network times a narrow model
against the dense one steadily, while a process that only loaded the two (a deployment, a user's check) reads the
same pair from that value to well above it as the host's load comes and goes (experiments/results/
landing_process.md). A landing timed inside the search would aim at a reading no later process
sees; timed here, it sees what they see. The parent sends the table and the two specs as JSON on stdin; the child
(``apart.py``) prints one JSON line ``[dense_ms, pruned_ms, ratio]`` per timing as it is done, so the parent can
show each one (a landing times for tens of seconds and should not go quiet meanwhile).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from typing import Any, Callable, Protocol

from ...models.spec import Spec
from .cells import Timing

Pair = tuple[float, float, float]  # dense ms, pruned ms, their paired ratio
OnPair = Callable[[Pair], None]  # called with each timing as it is done
CHILD = __name__.rpartition(".")[0] + ".apart"  # the module the new process runs


class PairTimer(Protocol):
    """What these functions need of a latency table (``LatencyTable`` is one)."""

    def measure_pair(self, dense: Spec, pruned: Spec, timing: Timing = ..., threads: int | None = ...) -> Pair: ...

    def to_dict(self) -> dict[str, Any]: ...


def time_pairs_here(table: PairTimer, dense: Spec, pruned: Spec, at_least: int, seconds: float,
                    timing: Timing = Timing(), on_pair: OnPair | None = None, threads: int | None = None) -> list[Pair]:
    """``table.measure_pair`` repeated until ``seconds`` have passed and at least ``at_least`` times (at
    ``threads``, or the table's)."""
    pairs: list[Pair] = []
    started = time.monotonic()
    while len(pairs) < at_least or time.monotonic() - started < seconds:
        pairs.append(table.measure_pair(dense, pruned, timing, threads))
        if on_pair is not None:
            on_pair(pairs[-1])
    return pairs


def time_pairs_apart(table: PairTimer, dense: Spec, pruned: Spec, at_least: int, seconds: float,
                     timing: Timing = Timing(), on_pair: OnPair | None = None, threads: int | None = None) -> list[Pair]:
    """:func:`time_pairs_here`, run in a new Python process with this process's interpreter and environment; here,
    with a warning, where no new process can run (an embedded interpreter, a sandbox)."""
    request = {"table": table.to_dict(), "dense": dense, "pruned": pruned, "at_least": at_least, "seconds": seconds,
               "timing": asdict(timing), "threads": threads}
    pairs: list[Pair] = []
    try:
        # errors go to a file, not a pipe: a chatty child cannot block on it; leaving Popen closes its pipes
        with tempfile.TemporaryFile("w+") as errors, \
                subprocess.Popen([sys.executable, "-m", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errors, text=True) as child:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(json.dumps(request))
            child.stdin.close()
            for line in child.stdout:
                pairs.append(tuple(json.loads(line)))  # type: ignore[arg-type]
                if on_pair is not None:
                    on_pair(pairs[-1])
            child.wait()
            errors.seek(0)
            failure = f"exit {child.returncode}: " + (errors.read().strip().splitlines() or ["no output"])[-1] \
                if child.returncode else None
    except OSError as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure is None:
        return pairs
    warnings.warn(f"could not time the pruned model in a new process ({failure}); timing it in this one, which "
                  "can read a multi-threaded ratio lower than a deployment will", stacklevel=2)
    return time_pairs_here(table, dense, pruned, at_least, seconds, timing, on_pair, threads)
