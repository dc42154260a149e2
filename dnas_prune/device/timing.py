"""CPU latency of plain models, measured so that pruned-vs-dense comparisons are fair.

Two things make naive timing misleading on CPU: the memory format (narrow pruned widths can be much slower
in channels_last than in NCHW, so each model gets the faster one) and the machine's speed drifting between runs
(so :func:`compare_latency` interleaves the models' repeats, in both layouts, round-robin instead of timing
them one after the other, and picks each model's layout from those same rounds).
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import DnasPruneError
from ..models.cost import count_cost
from .allocator import keep_freed_memory
from .policy import MEMORY_FORMAT_CHOICES, MEMORY_FORMATS, memory_format_name, using_threads

# p90 over median above this: the timings were disturbed (other work on the machine) and the median is unreliable.
NOISY_RATIO = 1.5
# Longest a progress report stays silent (plain-line bars too: train/progress.py), one step or round under ten seconds.
QUIET_SECONDS = 8.0


def noise_warning(median_ms: float, p90_ms: float) -> str | None:
    """A warning when the p90 latency is over :data:`NOISY_RATIO` times the median, else None."""
    if median_ms > 0 and p90_ms / median_ms > NOISY_RATIO:
        return (f"p90 is {p90_ms / median_ms:.3g}x the median: the machine was busy while timing, so this latency "
                "is unreliable; re-run on an idle machine")
    return None


_PROGRESS: ContextVar[Callable[[str], None] | None] = ContextVar("dnas_prune_latency_progress", default=None)


@contextmanager
def latency_progress(log: Callable[[str], None]) -> Iterator[None]:
    """Within this block, :func:`compare_latency` reports each batch size it starts timing through ``log``
    (for callers such as the report, which measure through code that takes no callback)."""
    token = _PROGRESS.set(log)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class Runner:
    """A model copy in the requested dtype/memory format plus its input, timed one forward at a time."""

    def __init__(self, model: nn.Module, input_size: Sequence[int], batch_size: int, memory_format: str,
                 dtype: torch.dtype) -> None:
        keep_freed_memory()  # one allocator state for every timing (see device/allocator.py)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        fmt = MEMORY_FORMATS[memory_format]
        needs_copy = fmt is not torch.contiguous_format or (param is not None and param.dtype != dtype)
        with torch.inference_mode(False):  # copies made under inference mode could not be converted in place
            self.model = (copy.deepcopy(model) if needs_copy else model).eval()
            if needs_copy:
                self.model.to(dtype=dtype, memory_format=fmt)
        self.x = torch.randn(batch_size, *input_size, device=device, dtype=dtype).contiguous(memory_format=fmt)
        self.memory_format = memory_format
        self.times: list[float] = []

    def once(self) -> float:
        start = time.perf_counter()
        self.model(self.x)
        return time.perf_counter() - start

    def warmup(self, count: int, max_seconds: float) -> float:
        """Run up to ``count`` warm-up forwards within ``max_seconds``; returns the median of the later ones.

        The first forward (allocations, kernel selection) is excluded when there are others; the median
        keeps one noisy forward from shrinking the number of timed repeats.
        """
        deadline = time.perf_counter() + max_seconds
        times = [self.once()]
        while len(times) < count and time.perf_counter() < deadline:
            times.append(self.once())
        return statistics.median(times[1:] or times)

    def median(self) -> float:
        return statistics.median(self.times)

    def summary(self) -> dict[str, Any]:
        ms = sorted(t * 1e3 for t in self.times)
        median, p90 = statistics.median(ms), _quantile(ms, 0.9)
        return {
            "median_ms": median,
            "p10_ms": _quantile(ms, 0.1),
            "p90_ms": p90,
            "repeats": len(ms),
            "memory_format": self.memory_format,
            "warning": noise_warning(median, p90),  # None when the timings were steady
        }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile (statistics.quantiles needs at least two points)."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _repeats_within(repeats: int, seconds_per_repeat: float, max_seconds: float) -> int:
    """At most ``repeats``, fewer when they would exceed ``max_seconds``, but never below 3."""
    return max(3, min(repeats, int(max_seconds / max(seconds_per_repeat, 1e-9))))


def time_interleaved(runners: Sequence[Runner], warmup: int, repeats: int, max_seconds: float,
                     log: Callable[[str], None] | None = None) -> None:
    """Warm every runner up, then time them round-robin (one forward each per round, at most ``repeats`` rounds
    and about ``max_seconds`` per runner), appending to each runner's ``times``; ``log`` hears how many rounds
    are done whenever :data:`QUIET_SECONDS` have passed without a line.

    Why round-robin: a shared CPU's speed drifts by tens of percent over seconds; forwards timed in the same
    round see the same speed, so a per-round ratio between two runners (:func:`paired_ratio`) cancels the drift
    that separate timings would carry into their ratio.
    """
    said = time.perf_counter()
    round_seconds = sum(r.warmup(warmup, max_seconds / 3) for r in runners)
    rounds = _repeats_within(repeats, round_seconds, max_seconds * len(runners))
    for done in range(1, rounds + 1):
        for runner in runners:
            runner.times.append(runner.once())
        if log is not None and time.perf_counter() - said >= QUIET_SECONDS:
            said = time.perf_counter()
            log(f"  {done}/{rounds} rounds timed")


def paired_ratio(runner: Runner, reference: Runner) -> float:
    """The median over rounds of ``runner``'s time over ``reference``'s in the same round."""
    return statistics.median(t / r for t, r in zip(runner.times, reference.times))


def _formats(memory_format: str) -> list[str]:
    """The layouts to time: ``auto`` times NCHW and channels_last side by side and keeps each model's faster."""
    memory_format = memory_format_name(memory_format)
    if memory_format == "auto":
        return list(MEMORY_FORMATS)
    if memory_format not in MEMORY_FORMATS:
        raise DnasPruneError(f"memory_format must be one of {', '.join(MEMORY_FORMAT_CHOICES)}, got {memory_format!r}")
    return [memory_format]


def measure_latency(model: nn.Module, input_size: Sequence[int] = (3, 32, 32), batch_size: int = 1,
                    **options: Any) -> dict[str, Any]:
    """Forward latency in milliseconds (median, p10, p90) of one batch, in eval mode without autograd.

    ``options`` are those of :func:`compare_latency` (``warmup``, ``repeats``, ``threads``, ``memory_format``,
    ``dtype``, ``max_seconds``), with its defaults: ``repeats`` is reduced so the timed loop takes about
    ``max_seconds``; ``threads`` is restored after.
    """
    result = compare_latency({"model": model}, input_size, (batch_size,), **{**options, "with_cost": False})
    return result["models"]["model"]["latency"][batch_size]


def compare_latency(
    models: dict[str, nn.Module],
    input_size: Sequence[int] = (3, 32, 32),
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
    memory_format: str = "auto",
    dtype: torch.dtype = torch.float32,
    max_seconds: float = 3.0,
    with_cost: bool = True,
) -> dict[str, Any]:
    """Latency of several models measured in one run, repeats interleaved round-robin, plus ratios vs the first.

    Returns ``{"threads", "input_size", "batch_sizes", "models": {name: {"macs", "params", "latency": {bs:
    {...}}}}, "ratios": {name: {bs: {"speedup", "macs_reduction", "efficiency"}}}}`` where ``speedup`` is the
    first model's time over this one's, taken per interleaved round (``1 / paired_ratio``: the ratio of medians
    moves with a load that came and went between the two models' rounds), ``macs_reduction`` the first's MACs
    over this one's, and ``efficiency = speedup / macs_reduction`` (1.0: latency falls exactly as MACs do).
    ``max_seconds`` caps the timed loop per model, layout and batch size. ``paired_ratio``: this model's time
    over the first's, per round.
    """
    if not models:
        raise ValueError("compare_latency needs at least one model")
    bad = [bs for bs in batch_sizes if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1]
    if bad or not batch_sizes:
        raise DnasPruneError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if repeats < 1 or (threads is not None and threads < 1):
        raise DnasPruneError(f"repeats and threads must be positive, got {repeats} and {threads}")
    names = list(models)
    result: dict[str, Any] = {
        "input_size": list(input_size),
        "batch_sizes": list(batch_sizes),
        "models": {name: {"latency": {}} for name in names},
    }
    if with_cost:
        for name in names:
            cost = count_cost(models[name], input_size)
            result["models"][name].update(macs=cost.macs, params=cost.params)
    formats = _formats(memory_format)
    with using_threads(threads) as used_threads, torch.inference_mode():
        result["threads"] = used_threads
        log = _PROGRESS.get()
        for i, bs in enumerate(batch_sizes):
            if log:  # each batch size takes up to ~len(models) * formats * max_seconds, plus warm-ups
                log(f"timing {', '.join(names)} at batch {bs} ({i + 1}/{len(batch_sizes)}, up to "
                    f"~{(1 + len(names)) * len(formats) * max_seconds:.0f} s)")
            runners = {name: [Runner(models[name], input_size, bs, fmt, dtype) for fmt in formats] for name in names}
            time_interleaved([r for each in runners.values() for r in each], warmup, repeats, max_seconds, log)
            # each model in its faster layout, chosen from the same interleaved rounds as everything else
            chosen = {name: min(each, key=Runner.median) for name, each in runners.items()}
            for name in names:
                result["models"][name]["latency"][bs] = {
                    **chosen[name].summary(), "batch_size": bs, "threads": used_threads,
                    "dtype": str(dtype).removeprefix("torch."),
                    # per round, over the first model's: a drift of the machine between rounds falls on both
                    "paired_ratio": paired_ratio(chosen[name], chosen[names[0]]),
                    "layout_ms": {r.memory_format: r.median() * 1e3 for r in runners[name]},
                }
    if with_cost:
        result["ratios"] = _ratios(result, names, batch_sizes)
    return result


def _ratios(result: dict[str, Any], names: list[str], batch_sizes: Sequence[int]) -> dict[str, Any]:
    dense = result["models"][names[0]]
    ratios: dict[str, Any] = {}
    for name in names:
        entry = result["models"][name]
        macs_reduction = dense["macs"] / entry["macs"]
        ratios[name] = {}
        for bs in batch_sizes:
            speedup = 1.0 / entry["latency"][bs]["paired_ratio"]  # per round: a load that comes and goes cancels
            ratios[name][bs] = {"speedup": speedup, "macs_reduction": macs_reduction, "efficiency": speedup / macs_reduction}
    return ratios
