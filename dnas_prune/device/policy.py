"""How this machine should run: precision, memory format, threads and the process group.

One place answers these for training, the search and the reports alike, so a run that trains in bf16 or in
channels_last is never timed or evaluated under a different policy by accident. ``auto`` choices are made from
what the hardware runs natively or from a short timing, not from a fixed table.
"""

from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DnasPruneError

PRECISIONS = ("auto", "bf16", "fp32")
# One vocabulary for every command (train/search/finetune/run/profile): "nchw" is torch's contiguous format.
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
MEMORY_FORMAT_CHOICES = ("auto", *MEMORY_FORMATS)
MEMORY_FORMAT_ALIASES = {"contiguous": "nchw"}  # the name training used before; still accepted


def memory_format_name(name: str) -> str:
    """The canonical name of a memory format (``"contiguous"`` -> ``"nchw"``); other names are returned as given."""
    return MEMORY_FORMAT_ALIASES.get(name, name)


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of the process group this process has joined, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """How many processes torchrun launched for this command (1 without torchrun), before any group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; ``(rank, world_size)``, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return process_rank()
    if launched_world_size() <= 1:
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def close_distributed() -> None:
    """Leave the process group, if any. A gloo group left for the interpreter's exit to tear down can abort the
    process ("terminate called without an active exception") after the run itself succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cpu_runs_bf16() -> bool:
    """Whether this CPU's oneDNN has native bf16 kernels (AVX-512 BF16 / AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for: bf16 autocast on a GPU with bf16 and on a CPU whose oneDNN has bf16
    kernels (AVX-512/AMX); fp32 elsewhere, because emulated bf16 on an AVX2-only CPU trains ~10x slower than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_runs_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when ``precision`` is ``"bf16"``, a disabled one otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def channels_last_unsafe_convs(model: nn.Module) -> list[str]:
    """The 1x1 convs with stride > 1 and fewer than 16 input channels. oneDNN's CPU weight-gradient kernel for them
    writes past its buffer in channels_last (oneDNN issue 6035: heap corruption with one thread, wrong gradients
    with more; reproduced here on an AVX2 CPU with 2-7 input channels), so CPU training keeps such models in NCHW."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 16]


_FORMAT_CACHE: dict[tuple, str] = {}


def choose_memory_format(model: nn.Module, input_size: Sequence[int], configured: str, batch_size: int,
                         device: torch.device, precision: str, *, announce: bool = True) -> bool:
    """Whether to train ``model`` in channels_last: as ``configured``, or (``"auto"``) by timing forward+backward
    of a copy in both formats on ``batch_size`` random images. Under DDP every rank follows rank 0."""
    unsafe = channels_last_unsafe_convs(model) if device.type == "cpu" else []
    if unsafe and configured == "channels_last":
        raise DnasPruneError(f"channels_last on the CPU miscomputes the weight gradient of {unsafe[0]} (a strided "
                             "1x1 conv with under 16 input channels, oneDNN issue 6035); use --memory-format "
                             "auto or nchw")
    if unsafe:
        return False
    if configured != "auto":
        return configured == "channels_last"
    shape = tuple(input_size)
    key = (type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()), batch_size, shape,
           str(device), precision)
    if key not in _FORMAT_CACHE:
        probe = copy.deepcopy(model).train()
        x = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0)).to(device)
        timings = {False: math.inf, True: math.inf}
        for channels_last in (False, True) * 4:  # interleaved, best of 4: robust to warm-up steps and noise
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            probe.to(memory_format=fmt)
            xs = x.contiguous(memory_format=fmt)
            start = time.perf_counter()
            with torch.enable_grad():  # evaluation may be the first caller, inside no_grad
                with autocast(device, precision):
                    out = probe(xs)
                out.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[channels_last] = min(timings[channels_last], time.perf_counter() - start)
        _FORMAT_CACHE[key] = "channels_last" if timings[True] < timings[False] else "nchw"
        if announce:
            print(f"memory format: {_FORMAT_CACHE[key]} (one step: NCHW {timings[False]:.3f}s, "
                  f"channels_last {timings[True]:.3f}s)", flush=True)
    choice = torch.tensor([int(_FORMAT_CACHE[key] == "channels_last")], device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:  # timings differ per rank
        dist.broadcast(choice, 0)
    return bool(choice.item())


@contextmanager
def using_threads(count: int | None) -> Iterator[int]:
    """Within this block torch uses ``count`` threads (unchanged if None); yields the number in use."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
