"""The searchable supernet: learnable gates over residual blocks and channels of a ResNet.

Gates are applied by scaling a BatchNorm's affine parameters (``bn.weight * g``, ``bn.bias * g``), which is
the same as multiplying the BN output by ``g`` but costs no extra pass over the activations, and is
exactly what finalization folds into the weights. Three kinds of gate groups exist:

- block gate ``layerK.j``: scales the residual branch (folded into its last BN);
- inner gate ``layerK.j.conv1`` (and ``.conv2`` for bottlenecks): a block's inner channels, after their BN;
- stream gate ``layerK.stream`` (or ``stem``): the channels of a run joined by identity adds. Every
  producer of the run (stem or projection, and every branch's last BN) is scaled by the same vector, so a
  closed stream channel is zero throughout the stage and can be sliced out exactly.
"""

from __future__ import annotations

import fnmatch
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv

from ..errors import DnasPruneError, GatingError
from ..models import CifarResNet, build_model, spec_of
from ..models.cost import Cost, count_cost
from ..models.spec import SpecError, block_kind, check_rebuilt_alike
from .cost import CostTable
from .gates import Gate, make_gate


@dataclass
class GroupInfo:
    """A channel group (``inner``/``stream``) or a block gate (``block``) and where it lives."""

    name: str
    kind: str
    size: int
    stage: int
    gated: bool


@dataclass
class BlockInfo:
    name: str
    module: nn.Module
    kind: str  # "basic" | "bottleneck" | "projection"
    stage: int
    in_group: str
    out_group: str
    gate: str | None  # block-gate group name; None when excluded or for a projection-only block
    inner: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Decisions:
    """A supernet's hard decisions (:meth:`Supernet.decisions`), what its eval mode computes and finalization keeps.

    ``masks``: each gated group's own decision, a bool per channel (one value for a block gate), True = open.
    ``blocks``: each residual branch (``branch_blocks``): kept, i.e. its gate open and no inner group empty.
    ``widths``: each channel group (``channel_groups``): the channels the finalized model keeps, 0 for the inner
    groups of a removed branch; the one place pruned widths are computed.
    """

    masks: dict[str, Tensor]
    blocks: dict[str, bool]
    widths: dict[str, int]

    @property
    def blocks_kept(self) -> int:
        return sum(self.blocks.values())


def gated_bn(bn: nn.Module, x: Tensor, gate: Tensor | None) -> Tensor:
    """``bn(x) * gate`` per channel, computed by scaling BN's affine parameters (no extra activation pass)."""
    if gate is None:
        return bn(x)
    if type(bn) is not nn.BatchNorm2d or bn.weight is None:
        return bn(x) * gate.view(1, -1, 1, 1).to(x.dtype)
    gate = gate.to(bn.weight.dtype)  # a model cast to bf16 keeps fp32 gates
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or bn.running_mean is None
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        bn.weight * gate,
        bn.bias * gate,
        use_batch_stats,
        factor,
        bn.eps,
    )


def _family(model: nn.Module, name: str = "model") -> str:
    if isinstance(model, CifarResNet):
        return "cifar"
    if isinstance(model, tv.ResNet):
        if type(model).forward is not tv.ResNet.forward:
            raise GatingError(f"{name}: {type(model).__name__} overrides ResNet.forward; cannot gate it exactly")
        return "torchvision"
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)  # DataParallel/DDP, torch.compile
    hint = f"; pass the ResNet it wraps ({'.module' if hasattr(model, 'module') else '._orig_mod'})" if isinstance(
        inner, (CifarResNet, tv.ResNet)) else ""
    raise GatingError(f"{name}: {type(model).__name__} is not a CIFAR or torchvision ResNet; cannot gate it{hint}")


class Supernet(nn.Module):
    """Wraps a ResNet in place (weights are shared, not copied) and adds block and channel gates.

    In ``train()`` mode the gates are stochastic or soft; in ``eval()`` mode every decision is hard and the
    output is exactly what ``finalize(self)`` will compute.

    ``channels_per_gate=K`` gives each channel group one gate per K channels (``gcd(width, K)`` where K does not
    divide the width), so every searched width is a multiple of K: rounding is part of the search instead of a
    step after it. Which channels share a gate is fixed when wrapping: channels ranked by the summed ``|gamma|``
    of the BNs the gate scales, the top K on the first gate, the next K on the second, and so on, so a gate
    holds channels of similar importance.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: Sequence[int] = (3, 32, 32),
        gate: str = "sigmoid",
        exclude: Sequence[str] = (),
        init_logit: float = 3.0,
        channels_per_gate: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(channels_per_gate, bool) or not isinstance(channels_per_gate, int) or channels_per_gate < 1:
            raise DnasPruneError(f"channels_per_gate must be a positive integer, got {channels_per_gate!r}")
        self.family = _family(model)
        check_rebuilt_alike(model, spec_of(model))  # what finalization could not rebuild: before a search
        self.model = model
        self.input_size = tuple(int(v) for v in input_size)
        self.gate_kind = gate
        self.exclude = tuple(exclude)
        self.init_logit = float(init_logit)
        self.channels_per_gate = channels_per_gate
        self.budget: dict | None = None
        self.latency: Any = None  # a SupernetLatency (search/latency/table.py) when the budget is measured latency
        self.dense_cost: Cost = count_cost(model, self.input_size)
        self.groups: dict[str, GroupInfo] = {}
        self.blocks: list[BlockInfo] = []
        self._analyze()
        self.gates = nn.ModuleDict()
        self._gate_key: dict[str, str] = {}
        # {gate key: gate index of every channel}, only for groups whose gates span several channels
        self.channel_map = nn.Module()
        importance = self.channel_importance() if channels_per_gate > 1 else {}
        for info in self.groups.values():
            if info.gated:
                key = info.name.replace(".", "_")
                self._gate_key[info.name] = key
                step = 1 if info.kind == "block" else math.gcd(info.size, channels_per_gate)
                self.gates[key] = make_gate(gate, info.size // step, init_logit)
                if step > 1:
                    ranking = torch.argsort(importance[info.name], descending=True, stable=True).cpu()
                    assign = torch.empty(info.size, dtype=torch.long)
                    assign[ranking] = torch.arange(info.size) // step
                    self.channel_map.register_buffer(key, assign.to(importance[info.name].device))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("offset", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("hard_forward", torch.tensor(False))
        # per gate module (``gated_groups`` order): its logit shift on top of ``offset``, nonzero while the budget
        # holds its units closed (budget.solve_offset); files from before it load with zeros, or their block shifts
        self.register_buffer("gate_shifts", torch.zeros(len(self._gate_key), dtype=torch.float64))
        self.register_load_state_dict_pre_hook(Supernet._shifts_of_older_files)
        # each gate keeps the schedule as plain numbers: a loaded state_dict sets the buffers, so pass them on
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_schedule())
        self.channel_groups = [n for n, g in self.groups.items() if g.kind != "block"]
        self.branch_blocks = [info.name for info in self.blocks if info.kind != "projection"]
        self.group_sizes = torch.tensor([self.groups[n].size for n in self.channel_groups], dtype=torch.float64)
        self.cost_table = CostTable(model, self.input_size, self.blocks, self.channel_groups, self.branch_blocks,
                                    self.stem_group, self.final_group)
        # per residual branch (``branch_blocks`` order): its inner groups' indices in ``channel_groups``, padded with
        # ``len(channel_groups)`` (a constant width of 1)
        self.branch_inner = self.cost_table.branch_inner

    # ----------------------------------------------------------------- structure
    def _add_group(self, name: str, kind: str, size: int, stage: int) -> str:
        gated = not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude)
        self.groups[name] = GroupInfo(name, kind, size, stage, gated)
        return name

    def _analyze(self) -> None:
        model = self.model
        layers = []
        index = 1
        while isinstance(getattr(model, f"layer{index}", None), nn.Sequential):
            layers.append(getattr(model, f"layer{index}"))
            index += 1
        first_has_projection = next((layer[0].downsample is not None for layer in layers if len(layer)), True)
        stem_name = "stem" if first_has_projection or not len(layers[0]) else "layer1.stream"
        stream = self._add_group(stem_name, "stream", model.conv1.out_channels, 0 if stem_name == "stem" else 1)
        self.stem_group = stream
        self.stage_streams: list[str] = []
        for s, layer in enumerate(layers, start=1):
            for j, block in enumerate(layer):
                name = f"layer{s}.{j}"
                try:
                    kind = block_kind(block, name)
                except SpecError as exc:
                    raise GatingError(str(exc)) from None
                if block.downsample is not None:
                    if j != 0:
                        raise GatingError(f"{name}: a projection inside a stage is not supported")
                    ds = block.downsample
                    if not (isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
                            and isinstance(ds[1], nn.BatchNorm2d)):
                        raise GatingError(f"{name}.downsample: expected Sequential(Conv2d, BatchNorm2d)")
                    out_group = self._add_group(f"layer{s}.stream", "stream", ds[0].out_channels, s)
                else:
                    out_group = stream
                info = BlockInfo(name, block, kind, s, stream, out_group, None)
                if kind != "projection":
                    gate = self._add_group(name, "block", 1, s)
                    info.gate = gate if self.groups[gate].gated else None
                    if not self.groups[gate].gated:
                        del self.groups[gate]
                    convs = ["conv1"] if kind == "basic" else ["conv1", "conv2"]
                    info.inner = [self._add_group(f"{name}.{c}", "inner", getattr(block, c).out_channels, s) for c in convs]
                self.blocks.append(info)
                stream = out_group
            self.stage_streams.append(stream)
        self.final_group = stream

    def _producers(self) -> dict[str, list[tuple[nn.Conv2d, nn.Module]]]:
        """{channel group: the (conv, BN) pairs whose output channels it is}."""
        stem = (self.model.conv1, self.model.bn1)
        producers: dict[str, list[tuple[nn.Conv2d, nn.Module]]] = {self.stem_group: [stem]}
        for info in self.blocks:
            b = info.module
            if b.downsample is not None:
                producers.setdefault(info.out_group, []).append((b.downsample[0], b.downsample[1]))
            if info.kind == "projection":
                continue
            for c, group in enumerate(info.inner, start=1):
                producers.setdefault(group, []).append((getattr(b, f"conv{c}"), getattr(b, f"bn{c}")))
            last = 2 if info.kind == "basic" else 3
            producers.setdefault(info.out_group, []).append((getattr(b, f"conv{last}"), getattr(b, f"bn{last}")))
        return producers

    @torch.no_grad()
    def channel_importance(self, criterion: str = "gamma") -> dict[str, Tensor]:
        """{channel group: how much each channel carries}: the summed |gamma| of the BNs its gate scales
        (``"gamma"``, network slimming's measure) or the summed L1 norm of the conv filters that produce it
        (``"l1"``, Li et al.'s)."""
        if criterion not in ("gamma", "l1"):
            raise DnasPruneError(f"channel importance criterion must be 'gamma' or 'l1', got {criterion!r}")
        importance = {}
        for name, pairs in self._producers().items():
            total = torch.zeros(self.groups[name].size, dtype=torch.float64, device=self.model.conv1.weight.device)
            for conv, bn in pairs:
                if criterion == "l1":
                    total += conv.weight.detach().abs().flatten(1).sum(1).double()
                elif getattr(bn, "weight", None) is not None:
                    total += bn.weight.detach().abs().double()
            importance[name] = total
        return importance

    # ----------------------------------------------------------------- cost table
    # ----------------------------------------------------------------- gates
    @property
    def gated_groups(self) -> list[str]:
        """The groups that have a gate (channel groups and block gates), in network order."""
        return list(self._gate_key)

    def gate(self, name: str) -> Gate:
        return self.gates[self._gate_key[name]]

    def channel_assignment(self, name: str) -> Tensor:
        """The gate index of every channel of a gated channel group (``arange`` when each channel has its own);
        a copy, so a caller cannot regroup the channels by accident."""
        key = self._gate_key[name]
        assign = getattr(self.channel_map, key, None)
        if assign is None:
            return torch.arange(self.gates[key].size, device=self.gates[key].logits.device)
        return assign.clone()

    def channels_per_gate_of(self, name: str) -> int:
        """How many channels one gate of group ``name`` opens or closes (1 for block gates)."""
        return self.groups[name].size // self.gate(name).size

    def _per_channel(self, name: str, per_gate: Tensor) -> Tensor:
        assign = getattr(self.channel_map, self._gate_key[name], None)
        return per_gate if assign is None else per_gate[assign]

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        for gate in self.gates.values():
            yield from gate.parameters()

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def set_schedule(self, temperature: float | None = None, hard: bool | None = None,
                     offset: float | None = None, held: dict[str, float] | None = None) -> None:
        """Anneal the sigmoid temperature / switch to a hard straight-through forward / shift every logit by
        the budget's ``offset`` (decisions: ``logit + offset`` above the gate kind's threshold) and the logits of the
        gate modules it ``held`` closed by their own shifts, by group or block name (every other shift is reset)."""
        if temperature is not None:
            self.temperature.fill_(float(temperature))
        if hard is not None:
            self.hard_forward.fill_(bool(hard))
        if offset is not None:
            self.offset.fill_(float(offset))
        if held is not None:
            self.gate_shifts.zero_()
            for name, shift in held.items():
                self.gate_shifts[self.gated_groups.index(name)] = float(shift)
        self._sync_schedule()

    def _sync_schedule(self) -> None:
        # tensor operations only, so that a compiled forward does not read (and guard on) the values; new tensors,
        # not filled in place, since a forward's graph may still hold the old ones for its backward
        hard = bool(self.hard_forward)
        for index, gate in enumerate(self.gates.values()):
            gate.temperature = self.temperature.detach().clone()
            gate.offset = self.offset + self.gate_shifts[index]
            gate.hard = hard

    def _shifts_of_older_files(self, state: dict, prefix: str, *_: object) -> None:
        """A file without ``gate_shifts`` holds nothing, or (the first files that held) only blocks, by branch."""
        if prefix + "gate_shifts" in state:
            return
        shifts = torch.zeros_like(self.gate_shifts)
        by_branch = state.pop(prefix + "block_shifts", None)
        if by_branch is not None:
            for name, shift in zip(self.branch_blocks, by_branch.tolist()):
                if name in self._gate_key:
                    shifts[self.gated_groups.index(name)] = shift
        state[prefix + "gate_shifts"] = shifts

    def gate_values(self) -> dict[str, Tensor]:
        """The value each gated group multiplies in, in the current mode (sampled in training)."""
        self._sync_schedule()
        return {name: self._per_channel(name, self.gates[key]()) for name, key in self._gate_key.items()}

    def eval_gate_values(self) -> dict[str, Tensor]:
        """Per channel, the value each gated group multiplies in under eval: what finalization folds."""
        self._sync_schedule()
        return {name: self._per_channel(name, self.gates[key].eval_value()) for name, key in self._gate_key.items()}

    def gate_probabilities(self) -> dict[str, Tensor]:
        """P(open) per channel (per block for block gates)."""
        self._sync_schedule()
        return {name: self._per_channel(name, self.gates[key].expected_open().detach())
                for name, key in self._gate_key.items()}

    def decisions(self) -> Decisions:
        """The hard decisions, as eval mode computes them and finalization keeps them: the one way to read them."""
        masks = self._masks()
        blocks = self._blocks_kept(masks)
        removed = {g for info in self.blocks if info.kind != "projection" and not blocks[info.name] for g in info.inner}
        widths = {name: 0 if name in removed else int(masks[name].sum()) if name in masks else self.groups[name].size
                  for name in self.channel_groups}
        return Decisions(masks, blocks, widths)

    def _masks(self) -> dict[str, Tensor]:
        self._sync_schedule()
        return {name: self._per_channel(name, self.gates[key].hard_open()) for name, key in self._gate_key.items()}

    def _blocks_kept(self, masks: dict[str, Tensor]) -> dict[str, bool]:
        """Whether each residual branch survives finalization: its gate is open and no inner group is entirely
        closed (an all-closed inner group would leave only a constant, so it counts as closed)."""
        result = {}
        for info in self.blocks:
            if info.kind == "projection":
                continue
            alive = info.gate is None or bool(masks[info.gate].all())
            result[info.name] = alive and all(g not in masks or bool(masks[g].any()) for g in info.inner)
        return result

    @torch.no_grad()
    def set_gate_state(self, state: dict[str, Tensor | bool]) -> None:
        """Pin decisions (True = open) for the named groups; others stay free. A channel group takes one value
        per channel (as ``decisions().masks`` gives) or one per gate; channels that share a gate must agree."""
        for name, value in state.items():
            if name not in self._gate_key:
                raise DnasPruneError(f"no gate group named {name!r}; known: {', '.join(self._gate_key)}")
            gate = self.gate(name)
            value = torch.as_tensor(value, dtype=torch.bool).reshape(-1).to(gate.forced.device)
            size = self.groups[name].size
            if value.numel() == 1 and gate.size > 1:
                value = value.expand(gate.size)
            elif value.numel() == size and gate.size != size:
                assign = self.channel_assignment(name).to(value.device)
                opened = torch.zeros(gate.size, dtype=torch.long, device=value.device).index_add_(0, assign, value.long())
                per_gate = torch.bincount(assign, minlength=gate.size)
                if not bool(((opened == 0) | (opened == per_gate)).all()):
                    raise DnasPruneError(f"gate state for {name!r} splits channels that share a gate "
                                         f"({self.channels_per_gate_of(name)} per gate); open or close them together")
                value = opened == per_gate
            if value.numel() != gate.size:
                raise DnasPruneError(f"gate state for {name!r} has {value.numel()} entries, expected {size} "
                                     f"(one per channel) or {gate.size} (one per gate)")
            gate.forced.copy_(value.to(torch.int8))

    @contextmanager
    def pinned(self, state: dict[str, Tensor | bool]) -> Iterator["Supernet"]:
        """Within this block the named groups are pinned to ``state`` (as :meth:`set_gate_state` does); afterwards
        every gate is pinned, or free, exactly as before. For reading a decision without making it."""
        saved = {key: gate.forced.clone() for key, gate in self.gates.items()}
        try:
            self.set_gate_state(state)
            yield self
        finally:
            with torch.no_grad():
                for key, forced in saved.items():
                    self.gates[key].forced.copy_(forced)

    @torch.no_grad()
    def release_gates(self) -> None:
        """Undo every pin: all gates follow their parameters again."""
        for gate in self.gates.values():
            gate.forced.fill_(-1)

    # ----------------------------------------------------------------- cost
    def cost_from_counts(self, counts: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor]:
        """MACs and params for given channel-group widths (in ``channel_groups`` order) and residual-branch
        factors (in ``branch_blocks`` order: P(open), or 0/1). Differentiable in both (see :class:`CostTable`)."""
        return self.cost_table(counts, blocks)

    def metric_from_counts(self, metric: str, counts: Tensor, blocks: Tensor) -> Tensor:
        """One budget metric (``"macs"``, ``"params"`` or ``"latency"``, in ms per batch from the attached
        :attr:`latency` model) at the inputs of :meth:`cost_from_counts`; differentiable as it is."""
        if metric == "latency":
            return self._latency_model().from_counts(counts, blocks)
        macs, params = self.cost_from_counts(counts, blocks)
        return macs if metric == "macs" else params

    def dense_metric(self, metric: str) -> float:
        """The dense model's value of :meth:`metric_from_counts`'s metric: what budget ratios divide by."""
        if metric == "latency":
            return self._latency_model().dense_ms()
        return float(getattr(self.dense_cost, metric))

    def _latency_model(self) -> Any:
        if self.latency is None:
            raise DnasPruneError("this supernet has no latency model: attach one (net.latency = "
                                 "latency_table(...).for_supernet(net)) or budget MACs or params")
        return self.latency

    def counts_and_blocks(self, hard: bool) -> tuple[Tensor, Tensor]:
        """The inputs of :meth:`cost_from_counts`: expected open channels per channel group and P(open) per residual
        branch, or with ``hard`` the widths and branches finalization keeps."""
        self._sync_schedule()
        if not hard:
            probs = {n: self._per_channel(n, self.gates[k].expected_open()) for n, k in self._gate_key.items()}
            counts = [probs[n].sum() if n in probs else self.group_sizes.new_tensor(float(self.groups[n].size)) for n in self.channel_groups]
            one = self.group_sizes.new_tensor(1.0)
            blocks = [probs[n].reshape(()) if n in probs else one for n in self.branch_blocks]
        else:
            decided = self.decisions()
            counts = [torch.tensor(decided.widths[n]) for n in self.channel_groups]
            blocks = [torch.tensor(float(decided.blocks[n])) for n in self.branch_blocks]
        counts_t = torch.stack([c.to(torch.float64).cpu() for c in counts])
        blocks_t = torch.stack([b.to(torch.float64).cpu() for b in blocks]) if blocks else torch.zeros(0, dtype=torch.float64)
        return counts_t, blocks_t

    def marginal_costs(self, metric: str) -> dict[str, float]:
        """{gated group: d cost / d (one more open gate)} at the current gate probabilities: per gate of a
        channel group (its channels times the cost of one channel), per block for a block gate. MACs and params
        are linear in each group's width, so this is exactly what opening one more gate adds while the others
        stay; for latency it is first order."""
        with torch.no_grad():
            counts, blocks = self.counts_and_blocks(hard=False)
        with torch.enable_grad():  # callers may be inside no_grad
            counts.requires_grad_(True)
            blocks.requires_grad_(True)
            inputs = (counts, blocks) if blocks.numel() else (counts,)
            cost = self.metric_from_counts(metric, counts, blocks)
            grads = [g if g is not None else torch.zeros_like(x)
                     for g, x in zip(torch.autograd.grad(cost, inputs, allow_unused=True), inputs)]
        per_count, per_block = grads[0], grads[1] if blocks.numel() else None
        result = {n: float(per_count[i]) * self.channels_per_gate_of(n)
                  for i, n in enumerate(self.channel_groups) if n in self._gate_key}
        if per_block is not None:
            result.update({n: float(per_block[i]) for i, n in enumerate(self.branch_blocks) if n in self._gate_key})
        return result

    def expected_cost(self) -> dict[str, Tensor]:
        """{"macs", "params"}: expected under the gate probabilities in training mode (differentiable);
        in eval mode the exact cost of the finalized model."""
        self._sync_schedule()
        counts, blocks = self.counts_and_blocks(hard=not self.training)
        macs, params = self.cost_from_counts(counts, blocks)
        return {"macs": macs, "params": params}

    def hard_cost(self) -> Cost:
        counts, blocks = self.counts_and_blocks(hard=True)
        macs, params = self.cost_from_counts(counts, blocks)
        return Cost(int(round(float(macs))), int(round(float(params))))

    # ----------------------------------------------------------------- forward
    def _block(self, info: BlockInfo, x: Tensor, values: dict[str, Tensor], alive: dict[str, bool] | None) -> Tensor:
        b = info.module
        stream = values.get(info.out_group)
        identity = x
        if b.downsample is not None:
            identity = gated_bn(b.downsample[1], b.downsample[0](x), stream)
        if info.kind == "projection":
            return F.relu(identity)
        if alive is not None and not alive[info.name]:
            return F.relu(identity) if b.downsample is not None else identity
        last = stream
        if info.gate is not None:
            last = values[info.gate] if last is None else values[info.gate] * last
        inner = [values[g] for g in info.inner if g in values]
        if alive is None and inner:
            # An inner group whose every value is exactly 0 (closed in a hard or sampled forward) leaves the branch
            # only its last BN's shift, a constant that eval and finalization drop with the block: drop it here too,
            # so training computes what eval computes.
            alive_now = torch.stack([(v != 0).any() for v in inner]).all().to(inner[0].dtype)
            last = alive_now if last is None else last * alive_now
        if info.kind == "basic":
            out = F.relu(gated_bn(b.bn1, b.conv1(x), values.get(info.inner[0])))
            out = gated_bn(b.bn2, b.conv2(out), last)
        else:
            out = F.relu(gated_bn(b.bn1, b.conv1(x), values.get(info.inner[0])))
            out = F.relu(gated_bn(b.bn2, b.conv2(out), values.get(info.inner[1])))
            out = gated_bn(b.bn3, b.conv3(out), last)
        return F.relu(out + identity)

    def forward(self, x: Tensor) -> Tensor:
        values = self.gate_values()
        alive = None if self.training else self._blocks_kept(self._masks())
        m = self.model
        x = F.relu(gated_bn(m.bn1, m.conv1(x), values.get(self.stem_group)))
        if self.family == "torchvision":
            x = m.maxpool(x)
        for info in self.blocks:
            x = self._block(info, x, values, alive)
        x = torch.flatten(m.avgpool(x), 1)
        return m.fc(x)

    # ----------------------------------------------------------------- persistence
    def config(self) -> dict:
        """Plain data that, with ``state_dict()``, rebuilds this supernet (see :meth:`from_config`)."""
        return {
            "spec": spec_of(self.model),
            "input_size": list(self.input_size),
            "gate": self.gate_kind,
            "exclude": list(self.exclude),
            "init_logit": self.init_logit,
            "channels_per_gate": self.channels_per_gate,
            "budget": self.budget,
        }

    @classmethod
    def from_config(cls, config: dict, state_dict: dict | None = None) -> "Supernet":
        model = build_model(config["spec"])
        net = cls(model, config["input_size"], config["gate"], config.get("exclude", ()), config.get("init_logit", 3.0),
                  config.get("channels_per_gate", 1))
        net.budget = config.get("budget")
        if state_dict is not None:
            net.load_state_dict(state_dict)
        return net

