"""How one grid cell is timed: the module that stands for a unit at given widths, and the timer with a table's
settings (device, threads, dtype, memory format, batch).

CUDA: on a ``cuda`` device every forward is timed between two ``torch.cuda.synchronize()`` calls (wall clock
of the forward, launch overhead included). This path is written but untested here: the project's machines have
no GPU. The CPU path times through :func:`dnas_prune.device.timing.measure_latency`, as ``profile`` does.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ...device.policy import MEMORY_FORMATS
from ...device.timing import measure_latency, noise_warning

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Timing:
    """How long to time things: per grid cell and per whole model (medians of ``repeats``, at most ~``seconds``)."""

    cell_warmup: int = 3
    cell_repeats: int = 25
    cell_seconds: float = 0.25
    model_warmup: int = 10
    model_repeats: int = 50
    model_seconds: float = 2.0


def cell_module(unit: dict[str, Any], cin: int, cout: int, batch_size: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """The module timed for one grid cell and its input size (C, H, W)."""
    h, w = unit["hw"]
    if unit["op"] == "conv":
        return _ConvUnit(unit, cin, cout), (cin, h, w)
    if unit["op"] == "add":
        return _AddUnit(batch_size, cin, h, w), (cin, h, w)
    if unit["op"] == "relu":
        return nn.ReLU(inplace=True), (cin, h, w)
    return _PoolFcUnit(cin, cout, unit["bias"]), (cin, h, w)


class _ConvUnit(nn.Module):
    """conv -> BN (-> ReLU) (-> max-pool), called through submodules as a block calls them."""

    def __init__(self, unit: dict[str, Any], cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, tuple(unit["kernel"]), tuple(unit["stride"]), tuple(unit["padding"]),
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True) if unit["relu"] else None
        mp = unit["maxpool"]
        self.pool = nn.MaxPool2d(tuple(mp["kernel"]), tuple(mp["stride"]), tuple(mp["padding"])) if mp else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        if self.relu is not None:
            x = self.relu(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class _AddUnit(nn.Module):
    """``x + other``; the other operand is a parameter so the timer converts its dtype and memory format."""

    def __init__(self, batch_size: int, channels: int, h: int, w: int) -> None:
        super().__init__()
        self.other = nn.Parameter(torch.randn(batch_size, channels, h, w), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.other


class _PoolFcUnit(nn.Module):
    def __init__(self, cin: int, cout: int, bias: bool) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, cout, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _time_cuda(module: nn.Module, input_size: Sequence[int], batch_size: int, dtype: torch.dtype,
               memory_format: str, warmup: int, repeats: int, max_seconds: float) -> dict[str, Any]:
    """Median and p90 ms of one forward on the GPU, each timed between two ``torch.cuda.synchronize()`` calls
    (untested here: no GPU on the project's machines)."""
    fmt = MEMORY_FORMATS[memory_format]
    module = copy.deepcopy(module).eval().to(device="cuda", dtype=dtype, memory_format=fmt)
    x = torch.randn(batch_size, *input_size, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        deadline = time.perf_counter() + max_seconds
        while len(times) < 3 or (len(times) < repeats and time.perf_counter() < deadline):
            torch.cuda.synchronize()
            start = time.perf_counter()
            module(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    median, p90 = statistics.median(times), sorted(times)[int(0.9 * (len(times) - 1))]
    return {"median_ms": median, "p90_ms": p90, "repeats": len(times), "warning": noise_warning(median, p90)}


class CellTimer:
    """Timing of a module's forward with fixed settings (device, threads, dtype, memory format, batch): a dict
    with ``median_ms``, ``p90_ms`` and ``warning`` (set when the p90 says the machine was busy)."""

    def __init__(self, device: str, batch_size: int, threads: int, dtype: torch.dtype, memory_format: str) -> None:
        self.device, self.batch_size, self.threads = device, batch_size, threads
        self.dtype, self.memory_format = dtype, memory_format

    def __call__(self, module: nn.Module, input_size: Sequence[int], warmup: int, repeats: int,
                 max_seconds: float, memory_format: str | None = None) -> dict[str, Any]:
        fmt = memory_format or self.memory_format
        if self.device == "cuda":
            return _time_cuda(module, input_size, self.batch_size, self.dtype, fmt, warmup, repeats, max_seconds)
        return measure_latency(module, tuple(input_size), self.batch_size, warmup=warmup, repeats=repeats,
                               threads=self.threads, memory_format=fmt, dtype=self.dtype, max_seconds=max_seconds)
