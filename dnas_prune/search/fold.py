"""Folding: the plain, smaller model a supernet's hard gate decisions describe.

Closed blocks are removed (a block with a projection keeps only ``relu(projection(x))``), closed channels
are sliced out of every conv, BN and the fc that read or write them, and open gate values are folded into
BN's scale and shift. The result is ``build_model(spec)`` with loaded weights: no gate parameter, buffer,
hook or extra op remains, and its output equals ``supernet.eval()(x)``.

It lives beside the supernet it inverts because the :class:`~dnas_prune.search.pruner.Pruner` ends with it;
:mod:`dnas_prune.finalize` is the stage that first settles the final widths (rounding) and then folds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models import build_model
from ..models.spec import stem_of
from .supernet import Supernet


def fold_gate_into_bn(bn: nn.BatchNorm2d, keep: Tensor, gate: Tensor | None) -> dict[str, Tensor]:
    """The kept channels of ``bn`` with ``bn(x) * gate`` folded into its affine parameters."""
    weight, bias = bn.weight[keep], bn.bias[keep]
    if gate is not None:
        gate = gate.to(bn.weight.dtype).expand_as(bn.weight)  # a block gate alone (its stream ungated) is one
        # value for every channel; in the weights' dtype, as the supernet's forward multiplies it
        weight, bias = weight * gate[keep], bias * gate[keep]
    return {  # indexing with a tensor copies, so nothing here aliases the supernet
        "weight": weight,
        "bias": bias,
        "running_mean": bn.running_mean[keep],
        "running_var": bn.running_var[keep],
        "num_batches_tracked": bn.num_batches_tracked.clone(),
    }


def _put(state: dict[str, Tensor], prefix: str, tensors: dict[str, Tensor]) -> None:
    for key, value in tensors.items():
        state[f"{prefix}.{key}"] = value


@torch.no_grad()
def fold(net: Supernet) -> nn.Module:
    """The plain pruned model (eval mode) computing exactly what ``net.eval()`` computes."""
    values = net.eval_gate_values()
    decided = net.decisions()
    alive = decided.blocks
    keeps: dict[str, Tensor] = {}
    for name in net.channel_groups:
        mask = decided.masks.get(name)
        keeps[name] = torch.nonzero(mask).flatten() if mask is not None else torch.arange(net.groups[name].size)
    keeps = {name: k.to(net.model.conv1.weight.device) for name, k in keeps.items()}
    m = net.model
    state: dict[str, Tensor] = {}
    stem = keeps[net.stem_group]
    state["conv1.weight"] = m.conv1.weight[stem]
    _put(state, "bn1", fold_gate_into_bn(m.bn1, stem, values.get(net.stem_group)))

    stages: list[dict] = [{"width": len(keeps[g]), "stride": 1, "blocks": []} for g in net.stage_streams]
    for info in net.blocks:
        b, stage = info.module, stages[info.stage - 1]
        kin, kout = keeps[info.in_group], keeps[info.out_group]
        is_alive = info.kind != "projection" and alive[info.name]
        if not is_alive and b.downsample is None:
            continue
        if not stage["blocks"]:
            conv = b.downsample[0] if b.downsample is not None else (b.conv2 if info.kind == "bottleneck" else b.conv1)
            stage["stride"] = conv.stride[0]
        prefix = f"layer{info.stage}.{len(stage['blocks'])}"
        stream_gate = values.get(info.out_group)
        if b.downsample is not None:
            state[f"{prefix}.downsample.0.weight"] = b.downsample[0].weight[kout][:, kin]
            _put(state, f"{prefix}.downsample.1", fold_gate_into_bn(b.downsample[1], kout, stream_gate))
        if not is_alive:
            stage["blocks"].append({"inner": None, "downsample": True})
            continue
        last_gate = stream_gate
        if info.gate is not None:
            last_gate = values[info.gate] if last_gate is None else values[info.gate] * last_gate
        chain = [kin, *(keeps[g] for g in info.inner), kout]
        n = len(chain) - 1
        for c in range(n):
            conv, bn = getattr(b, f"conv{c + 1}"), getattr(b, f"bn{c + 1}")
            gate = last_gate if c == n - 1 else values.get(info.inner[c])
            state[f"{prefix}.conv{c + 1}.weight"] = conv.weight[chain[c + 1]][:, chain[c]]
            _put(state, f"{prefix}.bn{c + 1}", fold_gate_into_bn(bn, chain[c + 1], gate))
        stage["blocks"].append({"inner": [len(keeps[g]) for g in info.inner], "downsample": b.downsample is not None})
    final = keeps[net.final_group]
    state["fc.weight"] = m.fc.weight[:, final]
    if m.fc.bias is not None:
        state["fc.bias"] = m.fc.bias.clone()
    spec = {
        "format": 1,
        "family": net.family,
        "block": "bottleneck" if any(i.kind == "bottleneck" for i in net.blocks) else "basic",
        "num_classes": m.fc.out_features,
        "stem": len(stem),
        "stages": stages,
    }
    if net.family == "torchvision":
        spec.update(stem_of(m))  # the stem's conv and pool, as they were
    model = build_model(spec, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
