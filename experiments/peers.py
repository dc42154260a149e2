"""Peer pruners shared by the experiment scripts: Torch-Pruning global channel pruning to a MACs target,
uniform L1-norm filter pruning, and the machine description every result file records."""

from __future__ import annotations

import copy
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dnas_prune.models.cost import count_cost
from dnas_prune.models import build_model, spec_of

MACS_TOLERANCE = 0.01
TP_STEPS = 400
TP_METHODS = {"magnitude": "MagnitudePruner", "groupnorm": "GroupNormPruner", "slimming": "BNScalePruner"}


def make_tp_pruner(model: nn.Module, input_size: tuple[int, ...], method: str) -> Any:
    """A Torch-Pruning pruner over ``model`` (in place): global ranking, fc outputs kept, 0.9 / 400 of the
    channels per step. ``slimming`` ranks by BN scale and can ``regularize`` (L1 on BN scales) during training."""
    import torch_pruning as tp

    pruner_cls = getattr(tp.pruner, TP_METHODS[method])
    importance = tp.importance.BNScaleImportance() if method == "slimming" else tp.importance.GroupMagnitudeImportance(p=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pruner_cls(
            model, torch.randn(1, *input_size), importance=importance, global_pruning=True, pruning_ratio=0.9,
            max_pruning_ratio=0.9, iterative_steps=TP_STEPS, ignored_layers=[model.fc],
        )


def tp_prune_to_macs(model: nn.Module, pruner: Any, target_macs: int, input_size: tuple[int, ...], method: str) -> dict[str, Any]:
    """Step ``pruner`` until ``model`` (pruned in place) is within 1 % above ``target_macs``.

    Stops at the first model within the band; when a step jumps past it the result says so instead of
    pretending to match.
    """
    import torch_pruning as tp

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs = count_cost(model, input_size).macs
        done = 0
        while macs > target_macs * (1 + MACS_TOLERANCE) and done < TP_STEPS:
            pruner.step()
            done += 1
            macs = count_cost(model, input_size).macs
    ratio = macs / target_macs
    importance = "BNScaleImportance" if method == "slimming" else "GroupMagnitudeImportance(p=2)"
    return {"method": f"torch_pruning.{TP_METHODS[method]} + {importance}, global ranking", "steps": done,
            "macs": macs, "macs_vs_target": ratio, "macs_match": abs(ratio - 1) <= MACS_TOLERANCE,
            "torch_pruning_version": tp.__version__}


def torch_pruning_baseline(dense: nn.Module, target_macs: int, input_size: tuple[int, ...], method: str) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned copy of ``dense`` at ``target_macs`` by iterative global Torch-Pruning (see :func:`make_tp_pruner`)."""
    model = copy.deepcopy(dense).eval()
    info = tp_prune_to_macs(model, make_tp_pruner(model, input_size, method), target_macs, input_size, method)
    return model.eval(), info


def as_plain(model: nn.Module) -> nn.Module:
    """``build_model(spec_of(model))`` holding ``model``'s weights: a plain model that ``save_pruned`` accepts."""
    plain = build_model(spec_of(model), device="meta")
    plain.load_state_dict({k: v.detach().contiguous() for k, v in model.state_dict().items()}, strict=True, assign=True)
    return plain.eval()


def _l1_keep(conv: nn.Conv2d, count: int) -> torch.Tensor:
    """Indices (ascending) of the ``count`` output filters of ``conv`` with the largest L1 norm."""
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    return torch.sort(torch.argsort(norms, descending=True, stable=True)[:count]).values


@torch.no_grad()
def l1_prune_to_widths(dense: nn.Module, inner: list[list[list[int] | None]]) -> nn.Module:
    """Li et al.'s L1-norm filter pruning to given widths: ``inner[s][j]`` lists the widths block ``j`` of stage
    ``s`` keeps for its inner convs, each conv keeping its filters of largest L1 norm; stream channels are kept."""
    spec = spec_of(dense)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    for s, (stage, widths) in enumerate(zip(spec["stages"], inner, strict=True), start=1):
        for j, (block, kept) in enumerate(zip(stage["blocks"], widths, strict=True)):
            if block["inner"] is None:
                continue
            module, prefix = getattr(dense, f"layer{s}")[j], f"layer{s}.{j}"
            previous = None
            for c, width in enumerate(kept, start=1):
                keep = _l1_keep(getattr(module, f"conv{c}"), width)
                weight = state[f"{prefix}.conv{c}.weight"][keep]
                state[f"{prefix}.conv{c}.weight"] = weight if previous is None else weight[:, previous]
                for key in ("weight", "bias", "running_mean", "running_var"):
                    state[f"{prefix}.bn{c}.{key}"] = state[f"{prefix}.bn{c}.{key}"][keep]
                block["inner"][c - 1] = len(keep)
                previous = keep
            last = f"{prefix}.conv{len(block['inner']) + 1}.weight"
            state[last] = state[last][:, previous]
    model = build_model(spec, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def uniform_l1(dense: nn.Module, ratio: float) -> nn.Module:
    """Li et al.'s L1-norm filter pruning with one ratio: every block's inner convs keep the
    ``round((1 - ratio) * width)`` (at least 1) filters of largest L1 norm; stream channels are untouched."""
    inner = [[None if b["inner"] is None else [max(1, round((1 - ratio) * w)) for w in b["inner"]]
              for b in stage["blocks"]] for stage in spec_of(dense)["stages"]]
    return l1_prune_to_widths(dense, inner)


def bisect_ratio(build: Callable[[float], nn.Module], target_macs: int, input_size: tuple[int, ...],
                 iterations: int = 40) -> tuple[nn.Module, float, dict[str, Any]]:
    """The ratio in [0, 1) whose ``build(ratio)`` has MACs closest to ``target_macs`` (MACs fall as ratio rises)."""
    low, high = 0.0, 0.999
    best: tuple[float, float] | None = None
    for _ in range(iterations):
        mid = (low + high) / 2
        macs = count_cost(build(mid), input_size).macs
        if best is None or abs(macs / target_macs - 1) < abs(best[1] / target_macs - 1):
            best = (mid, macs)
        if macs > target_macs:
            low = mid
        else:
            high = mid
    assert best is not None
    ratio, macs = best
    info = {"method": "uniform L1-norm filter pruning of every block's inner convs (stream channels kept)",
            "ratio": ratio, "macs": macs, "macs_vs_target": macs / target_macs,
            "macs_match": abs(macs / target_macs - 1) <= MACS_TOLERANCE}
    return build(ratio), ratio, info


# The vector/matrix extensions that decide which kernels oneDNN runs (bf16 native or emulated): "AMD EPYC" alone
# names both an AVX2-only and an AVX-512-bf16 CPU here.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict[str, Any]:
    cpu, flags = platform.processor() or "unknown", []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        first_cpu = cpuinfo.read_text().split("\n\n")[0].splitlines()
        fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first_cpu if ":" in line)}
        cpu = fields.get("model name", cpu)
        flags = sorted(set(fields.get("flags", "").split()) & set(ISA_FLAGS))
    return {"cpu": cpu, "cpu_flags": flags, "logical_cpus": torch.multiprocessing.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": list(os.getloadavg())}


def cpu_line(m: dict[str, Any] | None = None) -> str:
    """The CPU with the ISA extensions that decide its kernels, as every results page names it."""
    m = m or machine()
    return f"{m['cpu']} ({', '.join(m['cpu_flags']) or 'none of ' + ', '.join(ISA_FLAGS)})"
