"""One gate per K channels (``--channels-per-gate K``): every searched width is a multiple of K, exactly finalized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dnas_prune import Pruner, SearchConfig, Supernet, count_cost, create_model, finalize, load_supernet, project_to_budget
from dnas_prune.errors import DnasPruneError
from dnas_prune.models import build_model, spec_of

from test_cli_errors import assert_one_line_error, cli
from test_finalize import adversarial_states, check_exact, perturb
from test_search import run_search


def with_random_gammas(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN scales as after training (a fresh model has all gammas 1, so channels would share gates in index order)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    return model


def assert_shuffled(net: Supernet) -> None:
    """At least one group's gates hold channels out of index order: the channel map is really used."""
    assert any(not torch.equal(net.channel_assignment(name), torch.arange(net.groups[name].size)
                               // net.channels_per_gate_of(name))
               for name in net.gated_groups if net.groups[name].kind != "block")


def gated_widths(model: nn.Module, net: Supernet) -> list[int]:
    """Output widths of every conv whose channels the search could cut (stem and projections are streams)."""
    spec = spec_of(model)
    widths = [w for stage in spec["stages"] for block in stage["blocks"] if block["inner"] for w in block["inner"]]
    if any(net.groups[g].gated for g in net.groups if net.groups[g].kind == "stream"):
        widths += [stage["width"] for stage in spec["stages"]]
    return widths


def test_each_gate_spans_k_channels_of_similar_importance() -> None:
    model = create_model("cifar_resnet20")
    gamma = torch.randn(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.layer1[0].bn1.weight.copy_(gamma)
    net = Supernet(model, channels_per_gate=8)
    assert net.gate("layer1.0.conv1").size == 2 and net.gate("layer3.0.conv1").size == 8
    assert net.gate("layer1.0").size == 1  # a block gate stays one gate
    assign = net.channel_assignment("layer1.0.conv1")
    top = torch.argsort(gamma.abs(), descending=True)[:8]
    assert set(top.tolist()) == set(torch.nonzero(assign == 0).flatten().tolist())


def test_closing_a_gate_removes_exactly_its_channels() -> None:
    """Gate 1 of layer1.0.conv1 holds the 8 channels with the smallest |gamma|: closing it keeps the other 8."""
    dense = with_random_gammas(create_model("cifar_resnet20"), seed=3)
    net = Supernet(dense, channels_per_gate=8)
    net.set_gate_state({"layer1.0.conv1": torch.tensor([True, False])})
    kept = torch.argsort(dense.layer1[0].bn1.weight.detach().abs(), descending=True)[:8].sort().values
    assert torch.equal(torch.nonzero(net.decisions().masks["layer1.0.conv1"]).flatten(), kept)
    values = net.eval_gate_values()["layer1.0.conv1"]
    assert bool((values[kept] == 1).all()) and int((values == 0).sum()) == 8
    model = finalize(net.eval())
    torch.testing.assert_close(model.layer1[0].conv1.weight, dense.layer1[0].conv1.weight[kept])


@pytest.mark.parametrize("name,size", [("cifar_resnet20", (3, 32, 32)), ("resnet50", (3, 32, 32))])
def test_finalized_equals_hard_supernet_and_widths_are_multiples(name: str, size: tuple[int, int, int]) -> None:
    net = Supernet(with_random_gammas(create_model(name)), size, channels_per_gate=8)  # streams gated too
    assert_shuffled(net)
    perturb(net, seed=4)
    for label, state in adversarial_states(net).items():
        if label == "stream_width_1":  # one channel cannot be opened alone; a whole gate can
            state = {g: net.channel_assignment(g) == 0 for g in state}
        net.release_gates()
        net.set_gate_state(state)
        model = check_exact(net, size)
        widths = gated_widths(model, net)
        assert widths and all(w % 8 == 0 for w in widths), (label, widths)


def test_a_width_k_does_not_divide_gets_gates_of_their_common_divisor() -> None:
    spec = spec_of(create_model("cifar_resnet20"))
    spec["stages"][0]["blocks"][0]["inner"] = [12]
    net = Supernet(with_random_gammas(build_model(spec)), channels_per_gate=8)
    assert net.channels_per_gate_of("layer1.0.conv1") == 4 and net.channels_per_gate_of("layer1.1.conv1") == 8
    perturb(net, seed=2)
    model = check_exact(net.eval(), (3, 32, 32))
    assert spec_of(model)["stages"][0]["blocks"][0]["inner"][0] in (0, 4, 8, 12)


@pytest.mark.parametrize("target", [0.5, 0.2])
def test_projection_lands_on_the_budget_in_whole_gates(target: float) -> None:
    net = Supernet(with_random_gammas(create_model("cifar_resnet56")), channels_per_gate=8, exclude=["stem", "*.stream"])
    assert_shuffled(net)
    perturb(net, seed=int(target * 10))
    project_to_budget(net, "macs", target)
    model = finalize(net.eval())
    ratio = count_cost(model).macs / net.dense_cost.macs
    assert target - 0.01 <= ratio <= target + 0.01
    assert all(w % 8 == 0 for w in gated_widths(model, net))


def test_gate_state_must_keep_channels_that_share_a_gate_together() -> None:
    net = Supernet(create_model("cifar_resnet20"), channels_per_gate=8)
    split = net.channel_assignment("layer1.0.conv1") == 0
    split[torch.nonzero(split)[0]] = False
    with pytest.raises(DnasPruneError, match="share a gate"):
        net.set_gate_state({"layer1.0.conv1": split})
    net.set_gate_state({"layer1.0.conv1": torch.tensor([True, False])})  # one value per gate
    assert net.decisions().widths["layer1.0.conv1"] == 8


def test_round_to_must_be_a_multiple_of_the_gate_width(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(DnasPruneError, match="multiple"):
        SearchConfig(round_to=4, channels_per_gate=8)
    result = cli(capsys, "search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--channels-per-gate", "8",
                 "--round-to", "4", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "--channels-per-gate")
    result = cli(capsys, "search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--channels-per-gate", "0",
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "positive")


def test_cost_normalization_pushes_every_gate_equally_per_unit_of_cost() -> None:
    """A gate over K channels costs K channels: dividing by that leaves the same push on every gate."""
    pruner = Pruner(create_model("cifar_resnet20"), total_steps=100, target_macs=0.3, channels_per_gate=4,
                    prior_spread=0.0)  # equal logits: equal sigmoid slopes
    net = pruner.net
    net.train()
    net.expected_cost()["macs"].backward()
    pruner.normalize_gate_gradients()
    normalized = torch.cat([g.logits.grad for g in net.gates.values()])
    assert bool((normalized > 0).all())
    torch.testing.assert_close(normalized, normalized[:1].expand_as(normalized), rtol=1e-5, atol=0)


def test_search_with_gates_over_channels_lands_on_the_budget_and_reloads(synthetic_data, tmp_path: Path) -> None:
    model = with_random_gammas(create_model("cifar_resnet20", num_classes=synthetic_data.num_classes))
    net, summary = run_search(synthetic_data, tmp_path, model=model, channels_per_gate=8)
    assert_shuffled(net)
    assert 0.49 <= summary["final"]["macs_ratio"] <= 0.51
    reloaded = load_supernet(tmp_path / "supernet.pt")  # built from a fresh model: its map comes from the file
    assert reloaded.channels_per_gate == 8
    for name in net.gated_groups:
        torch.testing.assert_close(reloaded.channel_assignment(name), net.channel_assignment(name))
    model = finalize(reloaded)
    assert all(w % 8 == 0 for w in gated_widths(model, reloaded))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(x), rtol=1e-4, atol=1e-4)
