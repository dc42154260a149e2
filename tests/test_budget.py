"""Budgets: bad targets are refused up front, and the projection lands within ±1 % of the target."""

from __future__ import annotations

import pytest
import torch

from dnas_prune import Pruner, Supernet, count_cost, create_model, finalize, project_to_budget, solve_offset
from dnas_prune.search.budget import HOLD_SLACK, check_feasible, cost_floor
from dnas_prune.errors import BudgetError


def searched_like(name: str = "cifar_resnet20", seed: int = 0, gate: str = "sigmoid") -> Supernet:
    net = Supernet(create_model(name), gate=gate)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate_ in net.gates.values():
            gate_.logits.copy_(torch.randn(gate_.logits.shape, generator=g) * 2 + 1.0)
    return net.eval()


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("target", [0.9, 0.5, 0.2, 0.08])
def test_projection_lands_within_one_percent_and_matches_the_finalized_model(metric: str, target: float) -> None:
    net = searched_like(seed=int(target * 100))
    project_to_budget(net, metric, target)
    cost = count_cost(finalize(net), net.input_size)
    ratio = getattr(cost, metric) / getattr(net.dense_cost, metric)
    assert target - 0.01 <= ratio <= target + 0.01


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_every_width_a_multiple(round_to: int) -> None:
    net = searched_like("cifar_resnet56", seed=round_to)
    project_to_budget(net, "macs", 0.3, round_to=round_to)
    model = finalize(net)
    ratio = count_cost(model).macs / net.dense_cost.macs
    assert 0.29 <= ratio <= 0.31
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1:]
    assert all(w % round_to == 0 for w in widths), widths


def test_a_block_one_rounded_step_wide_is_not_thin() -> None:
    """close_thin_blocks closes a block whose branch is one gate wide (a rank-one update); a branch one ``round_to``
    step wide (16 channels of a 32- or 64-channel stage) is a branch of its own, and the projection may keep it."""
    from dnas_prune import spec_of
    from dnas_prune.search.budget import can_be_thin

    net = searched_like("cifar_resnet56", seed=3)
    net.budget = {"metric": "macs", "target": 0.3, "close_thin_blocks": True}
    assert can_be_thin(net, "layer2.0.conv1", None) and not can_be_thin(net, "layer2.0.conv1", 16)
    widths = set()
    for target in (0.5, 0.3):
        project_to_budget(net, "macs", target, round_to=16)
        widths |= {b["inner"][0] for s in spec_of(finalize(net))["stages"][1:] for b in s["blocks"] if b["inner"]}
    assert 16 in widths and all(w % 16 == 0 for w in widths), widths


def test_projection_keeps_the_highest_logits_even_where_the_sigmoid_saturates() -> None:
    """At the search's final temperature every open gate has P(open) == 1.0 in float32; the projection must
    still drop the weakest open channels, not the last ones by index."""
    net = searched_like(seed=11)
    with torch.no_grad():
        for gate in net.gates.values():  # all open, logits in [1, 5), in shuffled order
            gate.logits.copy_(1.0 + 4.0 * torch.randperm(gate.size).double().div(gate.size).float())
    net.set_schedule(temperature=0.05)
    assert all(bool((p == 1.0).all()) for p in net.gate_probabilities().values())
    project_to_budget(net, "macs", 0.5)
    shrunk = 0
    for name, mask in net.decisions().masks.items():
        if net.groups[name].kind != "block" and 0 < mask.sum() < mask.numel():
            logits = net.gate(name).logits.detach()
            assert logits[mask].min() > logits[~mask].max(), name
            shrunk += 1
    assert shrunk > 0


def test_targets_outside_the_range_or_below_the_floor_are_refused() -> None:
    net = searched_like()
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(BudgetError, match=r"\(0, 1\]"):
            check_feasible(net, "macs", bad)
    floor = cost_floor(net, "macs")
    assert 0 < floor < 0.01
    with pytest.raises(BudgetError, match="floor") as info:
        check_feasible(net, "macs", floor / 2)
    assert "\n" not in str(info.value)
    assert cost_floor(net, "macs", round_to=8) > floor


@pytest.mark.parametrize("target", [0.9, 0.5, 0.2])
def test_offset_puts_the_hard_cost_just_under_the_target(target: float) -> None:
    """The hard decisions at the solved offset cost at most the target, and opening the next-ranked gate would
    cost more: the offset is the budget met exactly, not approached."""
    net = searched_like()
    offset, ratios, held = solve_offset(net, "macs", target)
    net.set_schedule(offset=offset, held=held)
    cost = net.hard_cost()
    hard = cost.macs / net.dense_cost.macs
    assert hard == pytest.approx(ratios["macs"]) and hard <= target
    assert cost.params / net.dense_cost.params == pytest.approx(ratios["params"])  # both metrics, as a monitor logs
    closed = sorted(((float(g.logits.detach()[i]) + offset, name, i) for name in net.groups if net.groups[name].gated
                     for g in [net.gate(name)] for i in range(g.size) if not g.hard_open()[i]), reverse=True)
    _, name, i = closed[0]
    state = {n: m.clone() for n, m in net.decisions().masks.items()}
    state[name][i] = True
    net.set_gate_state(state)
    assert net.hard_cost().macs / net.dense_cost.macs > target


@pytest.mark.parametrize("seed", range(4))
def test_a_block_that_would_overshoot_is_held_closed_and_channels_fill_the_budget(seed: int) -> None:
    """A block gate ranks below its own inner channels (they cost nothing while it is closed), so opening it adds
    a whole block at once. The one threshold used to stop there, a block's cost under a small target; the block
    is held closed instead and the units ranked below it fill the budget until the next channel would not fit.
    The held shifts are the supernet's state: eval, a state_dict reload, and a file from before them agree."""
    net = searched_like(seed=seed)
    with torch.no_grad():  # blocks in the middle of the ranking, under their channels
        for name in net.branch_blocks:
            net.gate(name).logits.fill_(1.0)
    held_any = False
    for target in (0.15, 0.25, 0.35, 0.5):
        offset, ratios, held = solve_offset(net, "macs", target)
        net.set_schedule(offset=offset, held=held)
        hard = net.hard_cost().macs / net.dense_cost.macs
        assert hard == pytest.approx(ratios["macs"]) and hard <= target
        held_any |= bool(held)
        assert all(not net.decisions().blocks[name] for name in held if name in net.branch_blocks)
        masks = net.decisions().masks
        _, name, i = max((float(net.gate(n).logits.detach()[i]) + offset, n, i) for n in net.channel_groups
                         if n in masks for i in range(net.gate(n).size) if not net.gate(n).hard_open()[i])
        with net.pinned({**masks, name: masks[name].clone().index_fill_(0, torch.tensor([i]), True)}):
            assert net.hard_cost().macs / net.dense_cost.macs > target  # the next channel does not fit
        again = Supernet.from_config(net.config(), net.state_dict()).eval()
        assert again.hard_cost() == net.hard_cost()
        older = {k: v for k, v in net.state_dict().items() if k != "gate_shifts"}
        assert Supernet.from_config(net.config(), older).gate_shifts.abs().sum() == 0  # before any holds
        by_branch = torch.tensor([net.gate_shifts[net.gated_groups.index(b)] if b in net.groups else 0.0
                                  for b in net.branch_blocks], dtype=torch.float64)
        blocks_only = Supernet.from_config(net.config(), {**older, "block_shifts": by_branch})  # the first holds
        of_blocks = torch.tensor([name in net.branch_blocks for name in net.gated_groups])
        assert torch.equal(blocks_only.gate_shifts, torch.where(of_blocks, net.gate_shifts, 0.0))
    assert held_any


@pytest.mark.parametrize("model,block_gates", [("cifar_resnet20", False), ("cifar_resnet20", True),
                                               ("cifar_resnet56", True)])
def test_at_small_targets_held_units_let_the_rest_fill_the_budget(model: str, block_gates: bool) -> None:
    """A channel of a wide early layer is a fifth of a 0.05 budget: the one threshold stopped at the first unit
    that did not fit and left that much unspent for the step. Its group is held from that unit down and the units
    below fill, so every step ends within HOLD_SLACK of the target, or with no single unit left that fits."""
    net = searched_like(model, seed=7)
    if not block_gates:
        for name in net.branch_blocks:
            net.set_gate_state({name: torch.ones(1, dtype=torch.bool)}) if name in net.groups else None
    g = torch.Generator().manual_seed(1)
    for trial in range(6):
        with torch.no_grad():
            for gate in net.gates.values():
                gate.logits.copy_(torch.randn(gate.logits.shape, generator=g) * 2)
        for target in (0.03, 0.05, 0.1):
            offset, ratios, held = solve_offset(net, "macs", target)
            net.set_schedule(offset=offset, held=held)
            hard = net.hard_cost().macs / net.dense_cost.macs
            assert hard == pytest.approx(ratios["macs"]) and hard <= target
            if hard >= (1 - HOLD_SLACK) * target:
                continue
            decided = net.decisions()
            for name in net.channel_groups:  # nothing left over fits: one more channel step of any group
                mask = decided.masks.get(name)
                if mask is None or bool(mask.all()):
                    continue
                grown = mask.clone()
                grown[int((~mask).nonzero()[0])] = True
                with net.pinned({**decided.masks, name: grown}):
                    more = net.hard_cost().macs / net.dense_cost.macs
                assert more > target or more == pytest.approx(hard), (trial, target, name)  # or in a closed block


def test_offset_respects_pins_ties_and_the_extremes() -> None:
    net = Supernet(create_model("cifar_resnet20"))  # every logit equal: one run of ties
    offset, ratios, held = solve_offset(net, "macs", 0.5)
    ratio = ratios["macs"]
    net.set_schedule(offset=offset, held=held)
    assert net.hard_cost().macs / net.dense_cost.macs == pytest.approx(ratio)  # ties open or close together
    assert ratio == pytest.approx(cost_floor(net, "macs"), abs=0.05) or ratio <= 0.5
    offset, ratios, _ = solve_offset(net, "macs", 1.0)
    assert ratios["macs"] == pytest.approx(1.0)
    net.set_gate_state({"layer1.0.conv1": torch.zeros(16, dtype=torch.bool)})
    offset, ratios, held = solve_offset(net, "macs", 1.0)
    net.set_schedule(offset=offset, held=held)
    assert ratios["macs"] < 1.0 and not bool(net.decisions().masks["layer1.0.conv1"].any())  # a pinned gate stays as pinned


def test_projection_climbs_back_when_the_search_closed_almost_everything() -> None:
    net = searched_like(seed=4)
    with torch.no_grad():
        for name, gate in zip(net.gated_groups, net.gates.values()):
            if net.groups[name].kind != "stream":
                gate.logits.fill_(-4.0)  # every block and inner channel closed
    assert net.decisions().blocks_kept == 0
    project_to_budget(net, "macs", 0.6)
    ratio = count_cost(finalize(net)).macs / net.dense_cost.macs
    assert 0.59 <= ratio <= 0.61


def test_projection_regrows_ungated_blocks_whose_inner_channels_all_closed() -> None:
    net = Supernet(create_model("cifar_resnet20"), exclude=["layer?.?"]).eval()  # channel gates only
    with torch.no_grad():
        for name, gate in zip(net.gated_groups, net.gates.values()):
            gate.logits.fill_(-4.0 if net.groups[name].kind == "inner" else 4.0)
    assert net.decisions().blocks_kept == 0
    project_to_budget(net, "macs", 0.2)
    ratio = count_cost(finalize(net)).macs / net.dense_cost.macs
    assert 0.19 <= ratio <= 0.21


def test_ramped_budget_descends_from_dense_to_the_target_then_holds() -> None:
    """After warm-up the target descends along a cubic from the dense cost, reaches the target when the ramp
    ends and stays there; the hard cost follows it at every step. Without a ramp the target applies at once."""
    model = create_model("cifar_resnet20")
    pruner = Pruner(model, total_steps=100, target_macs=0.3, warmup=0.1, target_ramp=0.5)
    targets, hard = [], []
    for _ in range(100):
        targets.append(pruner.target)
        hard.append(pruner.hard_ratio)
        pruner.step()
    assert targets[:11] == [1.0] * 11
    assert all(a >= b for a, b in zip(targets, targets[1:]))
    assert targets[60] == pytest.approx(0.3) and targets[-1] == pytest.approx(0.3)  # step 60 = warm-up + ramp
    assert targets[35] > 0.3 + (1.0 - 0.3) * 0.1  # cubic: still an eighth of the way up half-way through the ramp
    assert all(h <= t + 1e-9 and h >= 0.85 * t for h, t in zip(hard[10:], targets[10:]))
    instant = Pruner(model, total_steps=100, target_macs=0.3, warmup=0.1, target_ramp=0.0)
    for _ in range(10):
        instant.step()
    assert instant.target == pytest.approx(0.3)


@pytest.mark.parametrize("seed", [5, 6])
def test_at_a_small_target_the_projection_fills_to_within_one_percent_of_it(seed: int) -> None:
    """±0.01 of dense is a fifth of a 0.05 budget: a state that far under it is filled up, not kept as it is."""
    target = 0.05
    net = searched_like(seed=seed)
    offset, _, held = solve_offset(net, "macs", target - 0.008)
    net.set_schedule(offset=offset, held=held)
    assert net.hard_cost().macs / net.dense_cost.macs >= target - 0.01  # inside the absolute window already
    project_to_budget(net, "macs", target)
    assert 0.99 * target <= net.hard_cost().macs / net.dense_cost.macs <= target
