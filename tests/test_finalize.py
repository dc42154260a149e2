"""Finalization is exact: the plain pruned model computes what the hard supernet computes, with nothing left over."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dnas_prune import Supernet, count_cost, create_model, finalize
from dnas_prune.models import BasicBlock, CifarResNet, ProjectionBlock
from torchvision.models import resnet as tv

CASES = {
    "cifar_resnet20": (3, 32, 32),
    "cifar_resnet56": (3, 32, 32),
    "cifar_resnet110": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "resnet50": (3, 32, 32),
}
PLAIN_MODULES = (CifarResNet, tv.ResNet, BasicBlock, tv.BasicBlock, tv.Bottleneck, ProjectionBlock, nn.Sequential,
                 nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear)


def perturb(net: Supernet, seed: int) -> None:
    """Gates and BN statistics away from their init, as after a real search."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in net.gates.values():
            gate.logits.copy_(torch.randn(gate.logits.shape, generator=g) * 2 + 0.8)
        for m in net.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.2 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def adversarial_states(net: Supernet) -> dict[str, dict]:
    stages = sorted({info.stage for info in net.blocks})
    last = stages[-1]
    blocks = [i for i in net.blocks if i.stage == last and i.kind != "projection"]
    states = {
        "random": {},
        "all_open": {name: True for name in net.gated_groups},
        "stage_closed_but_first": {b.name: j == 0 for j, b in enumerate(blocks)},
        "stream_width_1": {name: torch.arange(net.groups[name].size) == 0
                           for name in net.gated_groups if net.groups[name].kind == "stream"},
        "inner_groups_closed": {b.inner[0]: False for b in net.blocks if b.inner and b.stage != last},
        "first_blocks_closed": {b.name: False for b in net.blocks if b.name.endswith(".0") and b.kind != "projection"},
    }
    return states


def check_exact(net: Supernet, size: tuple[int, int, int]) -> nn.Module:
    net.eval()
    model = finalize(net)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = net(x), model(x)
    scale = expected.abs().max().item()
    assert (expected - actual).abs().max().item() <= 1e-4 * scale + 1e-6
    cost = count_cost(model, size)
    assert cost == net.hard_cost()
    assert cost.params == sum(p.numel() for p in model.parameters())
    for name, module in model.named_modules():
        assert type(module) in PLAIN_MODULES, f"{name} is a {type(module).__name__}"
    assert not any("gate" in key for key in model.state_dict())
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_finalized_equals_hard_supernet_for_random_and_adversarial_states(name: str) -> None:
    size = CASES[name]
    net = Supernet(create_model(name), size)
    perturb(net, seed=3)
    for label, state in adversarial_states(net).items():
        net.release_gates()
        net.set_gate_state(state)
        check_exact(net, size)


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet50"])
@pytest.mark.parametrize("exclude", [["stem", "*.stream"], ["*.conv*"]])
def test_finalized_equals_hard_supernet_when_some_group_kinds_stay_ungated(name: str, exclude: list[str]) -> None:
    """Block gates alone scale a branch's last BN when its stream is ungated: one value for every channel."""
    size = CASES[name]
    net = Supernet(create_model(name), size, exclude=exclude)
    perturb(net, seed=5)
    for state in adversarial_states(net).values():
        net.release_gates()
        net.set_gate_state({group: value for group, value in state.items() if group in net.gated_groups})
        check_exact(net, size)


def test_closed_blocks_are_removed_and_projection_blocks_keep_only_the_projection() -> None:
    net = Supernet(create_model("cifar_resnet20"))
    perturb(net, 5)
    net.set_gate_state({name: True for name in net.gated_groups})
    net.set_gate_state({"layer1.1": False, "layer2.0": False, "layer3.2.conv1": False})
    model = check_exact(net, (3, 32, 32))
    assert len(model.layer1) == 2 and len(model.layer3) == 2
    assert isinstance(model.layer2[0], ProjectionBlock)


@pytest.mark.parametrize("kind", ["hard_concrete", "bernoulli"])
def test_gate_values_below_one_are_folded_into_bn(kind: str) -> None:
    net = Supernet(create_model("cifar_resnet20"), gate=kind)
    perturb(net, 7)
    if kind == "hard_concrete":
        with torch.no_grad():
            for gate in net.gates.values():
                gate.logits.clamp_(-3.0, 0.3)  # open values strictly between 0 and 1
        assert any(((g.eval_value() > 0) & (g.eval_value() < 1)).any() for g in net.gates.values())
    check_exact(net, (3, 32, 32))


def test_finalized_model_is_trainable_and_on_its_own() -> None:
    net = Supernet(create_model("cifar_resnet20"))
    perturb(net, 9)
    model = finalize(net)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p is q for p in model.parameters() for q in net.parameters())



def test_finalize_with_round_to_leaves_the_supernet_as_it_was() -> None:
    """Rounding re-projects the decisions for the model it returns, not on the supernet it was given."""
    net = Supernet(create_model("cifar_resnet20"), (3, 32, 32), exclude=("stem", "*.stream"))
    perturb(net, seed=3)
    net.set_gate_state({"layer1.0.conv1": torch.arange(16) < 5})  # a pin that rounding must not leave changed
    net.budget = {"metric": "macs", "target": 0.5}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = net.decisions().masks
    model = finalize(net, round_to=8)
    widths = [m.out_channels for name, m in model.named_modules() if name.endswith(("conv1", "conv2"))]
    assert all(w % 8 == 0 for w in widths), widths  # the model is the rounded one
    after = net.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    again = net.decisions().masks
    assert again.keys() == masks.keys() and all(torch.equal(again[k], masks[k]) for k in masks)
    assert int(again["layer1.0.conv1"].sum()) == 5  # the pin is still there


@pytest.mark.parametrize("gate", ["sigmoid", "hard_concrete"])
def test_a_reloaded_supernet_finalizes_to_what_it_computes(gate: str) -> None:
    """The gates keep the budget's offset as plain numbers; a supernet rebuilt from its state_dict (load_supernet,
    the CLI's finalize) must fold the offset it loaded, not the gates' initial 0."""
    torch.manual_seed(0)
    searched = Supernet(create_model("cifar_resnet20"), gate=gate)
    with torch.no_grad():
        for g in searched.gates.values():
            g.logits.copy_(torch.randn(g.logits.shape))
    searched.set_schedule(offset=0.8)
    reloaded = Supernet.from_config(searched.config(), searched.state_dict()).eval()
    small = finalize(reloaded)  # before any forward of the reloaded supernet
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), reloaded(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change, words", [({"eps": 1e-3}, "eps=0.001"), ({"momentum": None}, "momentum=None"),
                                           ({"track_running_stats": False}, "track_running_stats=False")])
def test_a_batchnorm_a_spec_cannot_rebuild_is_refused_before_the_search_and_at_save(tmp_path, change, words) -> None:
    """build_model makes nn.BatchNorm2d(c): another eps would silently change what the pruned model computes."""
    from functools import partial

    from dnas_prune import save_pruned
    from dnas_prune.models.spec import SpecError

    model = create_model("resnet18", num_classes=10, norm_layer=partial(nn.BatchNorm2d, **change))
    with pytest.raises(SpecError, match=f"bn1: BatchNorm2d\\({words}\\): .*build the model with those"):
        Supernet(model, (3, 32, 32))
    with pytest.raises(SpecError, match=words):
        save_pruned(model, tmp_path / "pruned.pt")
    assert not (tmp_path / "pruned.pt").exists()


def test_finalizing_a_pruned_file_says_it_is_finalized_already(tmp_path) -> None:
    from dnas_prune import save_pruned
    from dnas_prune.errors import CheckpointError
    from dnas_prune.search.hooks import load_supernet

    path = save_pruned(create_model("cifar_resnet20"), tmp_path / "pruned.pt")
    with pytest.raises(CheckpointError, match="found a pruned model: it is finalized already"):
        load_supernet(path)
    dense = save_pruned(create_model("cifar_resnet20"), tmp_path / "model.pt", kind="dense")  # what train writes
    with pytest.raises(CheckpointError, match="is a dense model, not a search checkpoint: search it first"):
        load_supernet(dense)


def test_a_round_to_that_lands_far_from_the_budget_is_warned() -> None:
    from dnas_prune.finalize import final_decisions
    from dnas_prune.search.budget import project_to_budget

    net = Supernet(create_model("cifar_resnet20"))
    net.budget = {"metric": "macs", "target": 0.05}
    project_to_budget(net, "macs", 0.05)
    with pytest.warns(UserWarning, match="pinned .* from the target 0.05: at this size one step of round_to=16 channels"):
        with final_decisions(net, round_to=16):
            pass
