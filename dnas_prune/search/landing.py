"""Landing a latency budget on the device's own measurement, after the search.

The latency table predicts what a shape costs; a budget is kept only if the finalized model, timed beside the dense
one as a deployment would run it, reads inside the window under the target. :class:`Landing` projects the supernet
on the table, times what that gives, and re-aims until it does (``Pruner.project`` runs it for a latency budget).
The helpers read a landing's record: which ratio a try's timings give, whether it settled, which try was pinned.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..device.load import OthersCpu, crowded
from ..device.policy import process_rank
from ..models import spec_of
from .budget import budget_state, cost_floor, cost_ratios, project_to_budget
from .fold import fold
from .supernet import Supernet

LANDING_TIMINGS = 5  # side-by-side timings per landing try of a latency budget, at least (see landing_ratio)
LANDING_ANCHOR_TIMINGS = 2  # side-by-side timings at one thread per landing try, when the table has several
LANDING_SHAPE_PROBES = 40  # 1 % steps of the aim a landing tries past a shape already timed, at most


def landing_ratio(pairs: list[tuple[float, float, float]]) -> float:
    """The ratio a landing reads from side-by-side timings ``(dense ms, pruned ms, ratio)``: each model's quickest
    timing over the other's. On a shared CPU the pruned/dense ratio at several threads holds steady while the host
    is quiet and jumps up in its busy spells (a narrow model waits on the threads relatively more than the dense
    one), often by more than any window around a target spans, so no shape reads within it in both; the landing
    aims what the model runs at on a quiet machine. Busy spells can last most of a try, so a single quiet timing
    is worth keeping (latency_budget_blocks_s*.md: each try's timings, landed on their midhinge). The lowest
    paired ratio would do that too, but one dense timing caught by a spell makes it far too low, and the landing
    then aimed at a nearly dense model; a slow timing is never either model's quickest."""
    return min(pair[1] for pair in pairs) / min(pair[0] for pair in pairs)


def settled(error: float, tolerance: float) -> bool:
    """Whether a landing try's relative ``error`` from its target lies in the middle half of the window
    ``[-tolerance, 0]``, where the landing stops: an edge is one drift of the host away from leaving it."""
    return abs(error + tolerance / 2) <= tolerance / 4


def off_window(error: float, tolerance: float) -> float:
    """How far a landing's relative ``error`` from its target lies outside the window ``[-tolerance, 0]``."""
    return max(0.0, error, -tolerance - error)


def try_to_pin(tries: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The landing try to finalize: the one nearest the window ``[-tolerance, 0]`` (relative error from the target),
    and among tries inside it, the one nearest its middle (each try's reading is revised with every new timing, so
    several can end up inside)."""
    return min(tries, key=lambda t: (off_window(t["error"], tolerance), abs(t["error"] + tolerance / 2)))


def pinned_try(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The landing try that was finalized, from a search summary's ``projection["measured"]`` (records written
    before tries were marked: the one nearest its target, which was the rule then)."""
    return next((t for t in tries if t.get("pinned")), None) or min(tries, key=lambda t: abs(t["error"]))


@dataclass
class Landing:
    """The landing of ``net`` (a supernet after its search, with a latency table attached) on a latency budget:
    ``target`` (a fraction of the dense model's latency) or ``target_ms`` (ms per batch), within ``tolerance``
    under it, each try timed for ``seconds``; widths in multiples of ``round_to``. :meth:`run` leaves the supernet
    pinned on the try it chose and returns every try."""

    net: Supernet
    target: float
    target_ms: float | None
    tolerance: float
    seconds: float
    round_to: int | None

    def run(self, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Project on the latency model, time the model that gives against the dense one, side by side, and
        re-project until the measurement is in the middle half of the window ``[target x (1 - tolerance),
        target]`` (at most four tries, each a shape not timed before, see :meth:`_untried_shape`; the one nearest
        the window, then its middle, is pinned). The window lies under the target: a budget is a cap, and a later
        timing on a shared machine reads a narrow model relatively slower more often than faster.

        Each try times the pair for ``seconds`` in a new process, as a deployment would run it
        (``LatencyTable.time_pairs``), at the table's threads. At several threads a shared host's busy spells
        slow the narrow model by more than the window (``landing_ratio``) and can last a whole try; at one thread
        the pair's ratio holds steady. So each try also times the pair at one thread (its *anchor*), and a try
        reads as its anchor times one factor, the table's threads over one, taken at the quietest timing of all
        tries: a try that fell wholly in a busy spell is read through the others' quiet timings, and what is
        pinned is the shape's own measurement, not the table's guess for it; a ms target reads that ratio times
        the dense model's quickest timing of all tries. The next try aims through the table
        as the nearest try reads it. With several processes, rank 0 measures, the others follow. ``log`` gets a
        line per try and per timing, so a landing of tens of seconds does not go quiet."""
        net = self.net
        floor = cost_floor(net, "latency", self.round_to)
        rank, world_size = process_rank()
        leader, distributed = rank == 0, world_size > 1
        tries: list[dict[str, Any]] = []
        shapes: list[str] = []  # each try's architecture, as JSON: a shape is timed once
        middle = 1.0 - self.tolerance / 2  # of the window, relative to the target
        trial = self.target * middle  # on the table, first
        if leader:
            was_training = net.training
            net.eval()
            say = log or (lambda line: None)
            table = net.latency.table
            threads = table.settings["threads"]
            for attempt in range(1, 5):
                found = self._untried_shape(min(1.0, max(trial, floor)), floor, dict(zip(shapes, tries)))
                if found is None:
                    say("latency landing: no other shape between the tries; keeping the one nearest the window")
                    break
                trial, spec, predicted = found
                started = time.monotonic()
                say(f"latency landing, try {attempt}/4: the table puts the projected model at {predicted:.3f} of "
                    f"dense; timing it beside the dense model for {self.seconds:g} s")

                def show(pair: tuple[float, float, float], at: str = "") -> None:
                    say(f"  dense {pair[0]:.3g} ms, pruned {pair[1]:.3g} ms: {pair[2]:.3f} of dense{at}")

                with OthersCpu() as others:
                    pairs = table.time_pairs(table.dense_spec, spec, at_least=LANDING_TIMINGS,
                                             seconds=self.seconds, on_pair=show)
                if crowded(others.cores, threads):
                    say(f"  other processes kept {others.cores:.1f} of this machine's {os.cpu_count()} cores busy "
                        f"meanwhile: these readings can be off by more than the window")
                anchor_pairs = pairs if threads == 1 else table.time_pairs(
                    table.dense_spec, spec, at_least=LANDING_ANCHOR_TIMINGS, seconds=0.0, threads=1,
                    on_pair=lambda pair: show(pair, " (1 thread)"))
                tries.append({"projected_to": trial, "predicted_ratio": predicted, "own_ratio": landing_ratio(pairs),
                              "dense_ms": statistics.median(pair[0] for pair in pairs),
                              "dense_quickest_ms": min(pair[0] for pair in pairs),
                              "measured_ratios": sorted(pair[2] for pair in pairs),
                              "anchor_ratios": sorted(pair[2] for pair in anchor_pairs),
                              "anchor_ratio": landing_ratio(anchor_pairs),
                              "others_cores": others.cores, "seconds": time.monotonic() - started})
                shapes.append(json.dumps(spec, sort_keys=True))
                # the table's threads over one thread, at the quietest try (one spell can fill a try)
                over_anchor = min(t["own_ratio"] / t["anchor_ratio"] for t in tries)
                # and the dense model's ms at its quickest timing of all tries: a ms target is read quiet too
                dense_ms = min(t["dense_quickest_ms"] for t in tries)
                for t in tries:
                    t["measured_ratio"] = over_anchor * t["anchor_ratio"]
                    t["measured_ms"] = t["measured_ratio"] * dense_ms
                    t["error"] = (t["measured_ms"] / self.target_ms if self.target_ms is not None
                                  else t["measured_ratio"] / self.target) - 1.0
                say(f"  the device reads {tries[-1]['measured_ratio']:.3f} of dense here "
                    f"({100 * tries[-1]['error']:+.1f} % from the target; the landing aims at "
                    f"{-50 * self.tolerance:g} %, within -{100 * self.tolerance:g} % to 0)")
                if settled(tries[-1]["error"], self.tolerance):
                    break
                aim = middle * (self.target_ms / dense_ms if self.target_ms is not None else self.target)
                nearest = min(tries, key=lambda t: abs(t["measured_ratio"] - aim))
                # where the table must read for the device to read the aim, as the nearest try's shape reads it
                trial = aim * nearest["predicted_ratio"] / nearest["measured_ratio"]
            net.train(was_training)
            if any(crowded(t["others_cores"], threads) for t in tries):
                warnings.warn("other processes used the cores the latency landing timed on: its measurements can be "
                              "off by more than the window; search and finalize on an otherwise idle machine (the "
                              "tries' others_cores in search.json)", stacklevel=3)
            pinned = try_to_pin(tries, self.tolerance)
            pinned["pinned"] = True
            if abs(pinned["error"]) > self.tolerance:  # what the user asked for was not reached: say so
                warnings.warn(f"the latency landing pinned a model the device reads {100 * pinned['error']:+.0f} % "
                              f"from the target, outside ±{100 * self.tolerance:g} %: no shape it timed came closer "
                              "(each try in search.json); the table may be stale for this machine now (delete it "
                              "from the cache to rebuild) or the target near what this model can reach",
                              stacklevel=3)
            trial = pinned["projected_to"]
        if distributed:
            chosen = torch.tensor([trial], dtype=torch.float64)
            torch.distributed.broadcast(chosen, src=0)
            trial = float(chosen)
        project_to_budget(net, "latency", trial, self.round_to, strict=False)
        return tries

    def _untried_shape(self, trial: float, floor: float,
                       timed: dict[str, dict[str, Any]]) -> tuple[float, dict[str, Any], float] | None:
        """(aim, architecture spec, table ratio) of the landing's next try: the projection at ``trial``, or, when
        that gives a shape already timed (widths move in coarse steps, so nearby aims share a shape), the nearest
        aim past it, towards where that try erred, that gives a new one without reaching a try on the far side.
        None when there is no such aim: the landing has timed every shape it could pin. ``timed``: the tries so
        far by their architecture spec's JSON."""
        net = self.net

        def shape_at(aim: float) -> tuple[dict[str, Any], float]:
            with net.pinned(budget_state(net, "latency", aim, self.round_to, strict=False)):
                return spec_of(fold(net)), cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"]

        spec, predicted = shape_at(trial)
        same = timed.get(json.dumps(spec, sort_keys=True))
        if same is None:
            return trial, spec, predicted
        centre = -self.tolerance / 2  # the landing's aim, relative to the target
        up = same["error"] < centre  # it ran faster than the aim: a larger model
        beyond = [t["projected_to"] for t in timed.values()
                  if (t["error"] > centre) == up and (t["projected_to"] > trial) == up]
        bound = (min(beyond, default=1.0) if up else max(beyond, default=floor))
        aim = trial
        for _ in range(LANDING_SHAPE_PROBES):
            aim = min(1.0, aim * 1.01) if up else max(floor, aim / 1.01)
            if (aim >= bound) if up else (aim <= bound):
                return None
            spec, predicted = shape_at(aim)
            if json.dumps(spec, sort_keys=True) not in timed:
                return aim, spec, predicted
        return None
