"""Where a gate is costed: the supernet's exact MACs and params as a function of its widths.

Every conv, BN and fc of the network is one row ``coef * width(in) * width(out) * branch``, where a width is a
channel group's count of open channels (a constant for fixed ones such as the 3 image channels) and ``branch`` is
1 outside residual branches and the branch's factor inside one. The cost of any decision is then five tensor ops
over the rows, exact for hard decisions (0/1 widths and branches give what the finalized model counts) and
differentiable in expected widths, which is what the budget solves against at every step and what the gates'
gradients are normalized by.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn


class CostTable:
    """The rows of one supernet's structure: ``table(counts, blocks)`` is ``(macs, params)``.

    Built from the supernet's analysis of ``model``: its ``blocks`` (each with ``name``, ``module``, ``kind``,
    ``in_group``, ``out_group`` and ``inner`` groups), its ``channel_groups`` and ``branch_blocks`` (the orders of
    ``counts`` and ``blocks``), and the groups of the stem's and the last stage's channels.
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int], blocks: Sequence[Any],
                 channel_groups: Sequence[str], branch_blocks: Sequence[str], stem_group: str,
                 final_group: str) -> None:
        hw = _output_sizes(model, input_size)
        gidx = {n: i for i, n in enumerate(channel_groups)}
        one = len(channel_groups)
        bidx = {n: i for i, n in enumerate(branch_blocks)}
        no_block = len(branch_blocks)
        rows: list[tuple[float, float, int, int, int]] = []

        def width(spec: str | int) -> tuple[int, float]:
            return (one, float(spec)) if isinstance(spec, int) else (gidx[spec], 1.0)

        def conv(module: nn.Conv2d, cin: str | int, cout: str | int, block: str | None) -> None:
            (i, ci), (o, co) = width(cin), width(cout)
            k = module.kernel_size[0] * module.kernel_size[1]
            rows.append((k * hw[id(module)] * ci * co, k * ci * co, i, o, bidx.get(block, no_block)))

        def bn(cout: str, block: str | None) -> None:
            rows.append((0.0, 2.0, one, gidx[cout], bidx.get(block, no_block)))

        conv(model.conv1, model.conv1.in_channels, stem_group, None)
        bn(stem_group, None)
        for info in blocks:
            b = info.module
            if b.downsample is not None:
                conv(b.downsample[0], info.in_group, info.out_group, None)
                bn(info.out_group, None)
            if info.kind == "projection":
                continue
            chain = [info.in_group, *info.inner, info.out_group]
            convs = ["conv1", "conv2"] if info.kind == "basic" else ["conv1", "conv2", "conv3"]
            for c, (cin, cout) in enumerate(zip(chain[:-1], chain[1:])):
                conv(getattr(b, convs[c]), cin, cout, info.name)
                bn(cout, info.name)
        classes = model.fc.out_features
        f, _ = width(final_group)
        rows.append((float(classes), float(classes), f, one, no_block))
        if model.fc.bias is not None:
            rows.append((0.0, float(classes), one, one, no_block))
        inner = [[gidx[g] for g in info.inner] for info in blocks if info.kind != "projection"]
        # per residual branch (``branch_blocks`` order): its inner groups' indices in ``channel_groups``, padded
        # with ``len(channel_groups)`` (a constant width of 1)
        self.branch_inner = torch.tensor([i + [one] * (2 - len(i)) for i in inner], dtype=torch.long).reshape(-1, 2)
        table = torch.tensor([r[:2] for r in rows], dtype=torch.float64)
        index = torch.tensor([r[2:] for r in rows], dtype=torch.long)
        self.macs_coef, self.params_coef = table[:, 0], table[:, 1]
        self.in_index, self.out_index, self.branch_index = index[:, 0], index[:, 1], index[:, 2]

    def __call__(self, counts: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor]:
        """MACs and params for channel-group widths ``counts`` (in ``channel_groups`` order) and residual-branch
        factors ``blocks`` (in ``branch_blocks`` order: P(open), or 0/1). Differentiable in both."""
        widths = torch.cat([counts.to(torch.float64), counts.new_ones(1, dtype=torch.float64)])
        # A branch whose inner group is empty leaves only a constant: finalization removes the block.
        alive = (widths[self.branch_inner] > 0).all(dim=1).to(torch.float64)
        factors = torch.cat([blocks.to(torch.float64) * alive, blocks.new_ones(1, dtype=torch.float64)])
        term = widths[self.in_index] * widths[self.out_index] * factors[self.branch_index]
        return (term * self.macs_coef).sum(), (term * self.params_coef).sum()


def _output_sizes(model: nn.Module, input_size: Sequence[int]) -> dict[int, int]:
    """{id(conv): its output's H * W} for one forward of ``input_size``."""
    hw: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: hw.__setitem__(id(mod), o.shape[-1] * o.shape[-2]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            param = next(model.parameters())
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return hw
