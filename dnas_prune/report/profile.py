"""A model's profile: its exact cost and its measured latency per batch size, what ``dnas-prune profile`` prints.

The timing itself lives in :mod:`dnas_prune.device.timing`; this adds the cost beside it, and says when a timing
cannot be trusted: other processes used the cores it needed, or so few repeats fit in its time that a busy spell
would not show in their spread.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..device.load import OthersCpu, crowded
from ..device.timing import measure_latency
from ..models.cost import count_cost

STEADY_REPEATS = 10  # fewer timed forwards than this cannot show a busy machine in their p90 / median


def profile_model(
    model: nn.Module, input_size: Sequence[int] = (3, 32, 32), batch_sizes: Sequence[int] = (1, 64), **kw: Any
) -> dict[str, Any]:
    """MACs, params and latency per batch size (``kw`` goes to :func:`~dnas_prune.device.timing.measure_latency`);
    each latency's ``warning`` also says when others crowded its cores or too few repeats fit."""
    cost = count_cost(model, input_size)
    latency = {}
    for bs in batch_sizes:
        with OthersCpu() as others:
            lat = measure_latency(model, input_size, bs, **kw)
        more = []  # noise_warning's own text (lat["warning"]) already ends by telling to re-run
        if crowded(others.cores, lat["threads"]):
            more.append(f"other processes kept {others.cores:.1f} cores busy while timing")
        if lat["repeats"] < min(STEADY_REPEATS, kw.get("repeats", STEADY_REPEATS)):
            more.append(f"only {lat['repeats']} repeats fit in the time allowed (a slow forward each): too few to "
                        "tell a busy machine from a steady one")
        if more and not lat["warning"]:
            more.append("re-run on an idle machine")
        latency[bs] = {**lat, "warning": "; ".join(([lat["warning"]] if lat["warning"] else []) + more) or None}
    return {"macs": cost.macs, "params": cost.params, "input_size": list(input_size), "latency": latency}
