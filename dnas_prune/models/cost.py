"""Exact MACs and parameter counts of plain models.

MACs count what dominates inference time: convolutions and linear layers (as ``torch.utils.flop_counter``
does, halved). Parameters are every trainable tensor, so BN's weight and bias count and its running
statistics (buffers) do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import DnasPruneError


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int

    def ratio_to(self, dense: "Cost") -> dict[str, float]:
        return {"macs": self.macs / dense.macs, "params": self.params / dense.params}


def conv_macs(conv: nn.Conv2d, out_hw: int) -> int:
    """MACs of one conv given its output spatial size (``H_out * W_out``)."""
    kh, kw = conv.kernel_size
    return kh * kw * (conv.in_channels // conv.groups) * conv.out_channels * out_hw


def check_input_size(model: nn.Module, input_size: Sequence[int]) -> None:
    """A one-line error for an ``input_size`` the model cannot take (else a conv fails deep in a forward)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else None
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size) or \
            (channels is not None and size[0] != channels):
        raise DnasPruneError(f"input_size must be (C, H, W) with C = {channels}, the model's input channels, and "
                             f"H, W > 0, got {size}")


@torch.no_grad()
def count_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> Cost:
    """MACs of one image of shape ``input_size`` (C, H, W) and the number of parameters."""
    check_input_size(model, input_size)
    macs = 0

    def on_conv(module: nn.Conv2d, inputs, output) -> None:
        nonlocal macs
        macs += conv_macs(module, output.shape[-1] * output.shape[-2])

    def on_linear(module: nn.Linear, inputs, output) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features * (output.numel() // output.shape[-1])

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(on_linear))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Cost(macs=int(macs), params=int(params))
