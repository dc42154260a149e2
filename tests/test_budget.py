"""Budgets: bad targets are refused up front, and the projection lands within ±1 % of the target."""

from __future__ import annotations

import pytest
import torch

from dnas_prune import BudgetController, SearchConfig, Supernet, count_cost, create_model, finalize, project_to_budget
from dnas_prune.budget import check_feasible, cost_floor
from dnas_prune.errors import BudgetError
from dnas_prune.search import SearchHooks


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
    for name, mask in net.gate_state().items():
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


def test_controller_raises_pressure_over_budget_and_relaxes_under_it() -> None:
    net = searched_like()
    controller = BudgetController("macs", 0.5, net.dense_cost, lr=0.1)
    controller.active = True
    start = controller.value
    for _ in range(10):
        controller.update(0.9)
    assert controller.value > start
    high = controller.value
    for _ in range(10):
        controller.update(0.3)
    assert controller.value < high
    net.train()
    penalty = controller.penalty(net.expected_cost())
    penalty.backward()
    assert all(g.logits.grad is not None for g in net.gates.values())


def test_two_sided_penalty_pushes_the_cost_back_up_when_the_gates_overshoot() -> None:
    net = searched_like().train()
    for kind, pushes_up in (("hinge", False), ("two_sided", True)):
        controller = BudgetController("macs", 0.95, net.dense_cost, lr=0.1, penalty=kind)
        controller.active = True
        net.zero_grad()
        expected = net.expected_cost()
        assert float(expected["macs"].detach()) / net.dense_cost.macs < 0.9  # under budget
        penalty = controller.penalty(expected)
        if not pushes_up:
            assert float(penalty.detach()) == 0.0
            continue
        penalty.backward()
        grads = torch.cat([g.logits.grad for g in net.gates.values()])
        assert bool((grads <= 0).all()) and bool((grads < 0).any())  # descent opens gates
        start = controller.value
        for _ in range(10):
            controller.update(0.5)  # far under target: pressure grows
        assert controller.value > start
        grown = controller.value
        for _ in range(10):
            controller.update(0.951)  # within 1 %: pressure relaxes
        assert controller.value < grown
    with pytest.raises(BudgetError, match="two_sided"):
        BudgetController("macs", 0.5, net.dense_cost, penalty="quadratic")


def test_projection_climbs_back_when_the_search_closed_almost_everything() -> None:
    net = searched_like(seed=4)
    with torch.no_grad():
        for name, gate in zip(net._gate_key, net.gates.values()):
            if net.groups[name].kind != "stream":
                gate.logits.fill_(-4.0)  # every block and inner channel closed
    assert sum(net.block_open().values()) == 0
    project_to_budget(net, "macs", 0.6)
    ratio = count_cost(finalize(net)).macs / net.dense_cost.macs
    assert 0.59 <= ratio <= 0.61


def test_projection_regrows_ungated_blocks_whose_inner_channels_all_closed() -> None:
    net = Supernet(create_model("cifar_resnet20"), exclude=["layer?.?"]).eval()  # channel gates only
    with torch.no_grad():
        for name, gate in zip(net._gate_key, net.gates.values()):
            gate.logits.fill_(-4.0 if net.groups[name].kind == "inner" else 4.0)
    assert sum(net.block_open().values()) == 0
    project_to_budget(net, "macs", 0.2)
    ratio = count_cost(finalize(net)).macs / net.dense_cost.macs
    assert 0.19 <= ratio <= 0.21


def test_ramped_budget_descends_from_dense_to_the_target_then_holds() -> None:
    """With target_ramp the controller demands the dense cost when the budget switches on, then a cubic descent
    that reaches the target after the ramp and stays there; without it the target applies at once."""
    net = Supernet(create_model("cifar_resnet20"))
    hooks = SearchHooks(net, SearchConfig(target=0.3, warmup=0.1, target_ramp=0.5), total_steps=100)
    targets = []
    for step in range(10, 100):
        hooks.schedule(step)
        targets.append(hooks.controller.target)
    assert targets[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(targets, targets[1:]))
    assert targets[50] == pytest.approx(0.3) and targets[-1] == pytest.approx(0.3)  # step 60 = warm-up + ramp
    assert targets[25] > 0.3 + (1.0 - 0.3) * 0.1  # cubic: still an eighth of the way up half-way through the ramp
    instant = SearchHooks(net, SearchConfig(target=0.3, warmup=0.1), total_steps=100)
    instant.schedule(10)
    assert instant.controller.target == pytest.approx(0.3)
