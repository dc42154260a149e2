"""A model's profile: its exact cost and its measured latency per batch size, what ``dnas-prune profile`` prints.

The timing itself lives in :mod:`dnas_prune.device.timing`; this adds the cost beside it for the report.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..device.timing import measure_latency
from ..models.cost import count_cost


def profile_model(
    model: nn.Module, input_size: Sequence[int] = (3, 32, 32), batch_sizes: Sequence[int] = (1, 64), **kw: Any
) -> dict[str, Any]:
    """MACs, params and latency per batch size (``kw`` goes to :func:`~dnas_prune.device.timing.measure_latency`)."""
    cost = count_cost(model, input_size)
    latency = {bs: measure_latency(model, input_size, bs, **kw) for bs in batch_sizes}
    return {"macs": cost.macs, "params": cost.params, "input_size": list(input_size), "latency": latency}
