"""The supernet: gates over blocks and channels, and a differentiable cost that is exact when hard."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dnas_prune import MODEL_NAMES, Supernet, count_cost, create_model, finalize
from dnas_prune.errors import GatingError
from dnas_prune.search.gates import GATE_KINDS
from dnas_prune.models import is_cifar_model, spec_of
from dnas_prune.models.spec import SpecError


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 32, 32) if is_cifar_model(name) else (3, 64, 64)


def randomize_gates(net: Supernet, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in net.gates.values():
            gate.logits.copy_(torch.randn(gate.logits.shape, generator=generator) * 2 + 0.5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_all_open_cost_is_dense_and_random_hard_cost_is_finalized_cost(name: str) -> None:
    model = create_model(name)
    size = input_size(name)
    dense = count_cost(model, size)
    net = Supernet(model, size).eval()
    cost = net.expected_cost()
    assert int(cost["macs"]) == dense.macs and int(cost["params"]) == dense.params
    randomize_gates(net, seed=len(name))
    cost = net.expected_cost()
    pruned = count_cost(finalize(net), size)
    assert (int(cost["macs"]), int(cost["params"])) == (pruned.macs, pruned.params)
    assert pruned.macs < dense.macs


@pytest.mark.parametrize("kind", GATE_KINDS)
def test_gradients_reach_every_gate_parameter(kind: str) -> None:
    net = Supernet(create_model("cifar_resnet20"), gate=kind).train()
    net.set_schedule(temperature=0.5, hard=kind == "sigmoid")
    torch.manual_seed(0)
    logits = net(torch.randn(4, 3, 32, 32))
    loss = nn.functional.cross_entropy(logits, torch.arange(4)) + net.expected_cost()["macs"] / net.dense_cost.macs
    loss.backward()
    for name, gate in net.gates.items():
        assert gate.logits.grad is not None and gate.logits.grad.abs().sum() > 0, name


@pytest.mark.parametrize("exclude", [[], ["layer*.[0-9]"]])
def test_hard_training_forward_computes_what_eval_computes_when_a_blocks_inner_channels_all_close(
        exclude: list[str]) -> None:
    """The last 20 % of a search trains with hard gates so that training sees the network eval (and finalization)
    computes; a block whose inner channels are all closed is removed there, so its branch must add nothing here,
    not its last BN's shift."""
    net = Supernet(create_model("cifar_resnet20"), exclude=exclude)
    randomize_gates(net, seed=1)
    with torch.no_grad():
        for m in net.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(m.num_features))
    net.set_gate_state({"layer1.1.conv1": False, "layer3.2.conv1": False, "layer2.1.conv1": True})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    net.train()
    net.set_schedule(temperature=0.05, hard=True)
    for m in net.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # running statistics in both passes: only the gates differ between the modes
    with torch.no_grad():
        trained = net(x)
        torch.testing.assert_close(trained, net.eval()(x), rtol=1e-5, atol=1e-5)


def test_group_names_follow_module_names() -> None:
    cifar = Supernet(create_model("cifar_resnet20"))
    assert {"layer1.stream", "layer2.stream", "layer3.stream", "layer2.0", "layer2.0.conv1"} <= set(cifar.groups)
    assert "stem" not in cifar.groups  # the stem feeds layer1's identity adds: same stream
    r50 = Supernet(create_model("resnet50"), (3, 64, 64))
    assert {"stem", "layer1.stream", "layer4.2", "layer4.2.conv1", "layer4.2.conv2"} <= set(r50.groups)
    assert r50.groups["layer1.0.conv2"].kind == "inner" and r50.groups["stem"].kind == "stream"


def test_wrapping_shares_weights_and_all_open_output_equals_the_model() -> None:
    model = create_model("cifar_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    net = Supernet(model).eval()
    assert net.model is model
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("name, seed", [("cifar_resnet20", 1), ("cifar_resnet56", 2), ("resnet50", 3)])
def test_decided_widths_are_the_widths_of_the_finalized_model(name: str, seed: int) -> None:
    """Decisions.widths is where pruned widths are computed: the finalized model has exactly those."""
    net = Supernet(create_model(name), input_size(name))
    randomize_gates(net, seed)
    decided = net.decisions()
    spec = spec_of(finalize(net))
    assert spec["stem"] == decided.widths[net.stem_group]
    for s, stage in enumerate(spec["stages"], start=1):
        assert stage["width"] == decided.widths[net.stage_streams[s - 1]]
        kept = [[decided.widths[g] for g in info.inner] for info in net.blocks
                if info.stage == s and info.kind != "projection" and decided.blocks[info.name]]
        assert [b["inner"] for b in stage["blocks"] if b["inner"] is not None] == kept
    assert decided.blocks_kept == sum(1 for st in spec["stages"] for b in st["blocks"] if b["inner"] is not None)
    assert 0 < decided.blocks_kept < len(decided.blocks)  # the random state removed some branches, not all


def test_exclude_keeps_groups_open_and_gate_state_round_trips() -> None:
    net = Supernet(create_model("cifar_resnet20"), exclude=["layer1.*"]).eval()
    assert not any(name.startswith("layer1") for name in net.gated_groups)
    masks = net.decisions().masks
    assert masks["layer2.0"].shape == (1,) and masks["layer2.stream"].shape == (32,)
    net.set_gate_state({"layer2.1": False, "layer3.stream": torch.arange(64) < 10})
    decided = net.decisions()
    assert not decided.masks["layer2.1"].item() and int(decided.masks["layer3.stream"].sum()) == 10
    assert not decided.blocks["layer2.1"] and decided.widths["layer3.stream"] == 10
    assert decided.widths["layer2.1.conv1"] == 0 and decided.widths["layer1.0.conv1"] == 16  # removed; ungated
    with pytest.raises(Exception, match="no gate group named"):
        net.set_gate_state({"layer9.stream": True})


def test_unknown_block_type_is_a_clear_error() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 3, padding=1)
            self.downsample = None

        def forward(self, x):
            return self.conv(x)

    model = create_model("cifar_resnet20")
    model.layer1[1] = Odd()
    with pytest.raises((GatingError, SpecError), match=r"layer1\.1: unsupported block type Odd"):
        Supernet(model)
    with pytest.raises(GatingError, match="not a CIFAR or torchvision ResNet"):
        Supernet(nn.Sequential(nn.Conv2d(3, 4, 3)))


@pytest.mark.parametrize("name, size", [("cifar_resnet20", 32), ("resnet50", 64)])
def test_marginal_cost_is_exactly_what_one_more_open_unit_costs(name: str, size: int) -> None:
    net = Supernet(create_model(name), input_size=(3, size, size), init_logit=30.0)  # every gate open
    marginal = {metric: net.marginal_costs(metric) for metric in ("macs", "params")}
    net.eval()
    dense = net.hard_cost()
    for group, info in net.groups.items():
        closed_one = torch.ones(info.size, dtype=torch.bool)
        closed_one[0] = False
        net.set_gate_state({group: closed_one})
        cost = net.hard_cost()
        net.release_gates()
        assert dense.macs - cost.macs == pytest.approx(marginal["macs"][group], rel=1e-9), group
        assert dense.params - cost.params == pytest.approx(marginal["params"][group], rel=1e-9), group


def test_a_compiled_supernet_is_not_compiled_again_when_the_schedule_moves() -> None:
    """The budget's offset and the temperature change every step; as Python floats torch.compile took them for
    constants and compiled the gates again for each new value (until it marked them dynamic)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = Supernet(create_model("cifar_resnet20")).train()
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 16, 16)
    net.set_schedule(temperature=0.5, hard=True, offset=-0.25)
    compiled(x).sum().backward()
    graphs = counters["stats"]["unique_graphs"]
    for step in range(3):
        net.set_schedule(temperature=0.4 - 0.1 * step, offset=-0.5 - 0.3 * step)
        compiled(x).sum().backward()
    assert counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["sigmoid", "bernoulli"])
def test_a_gate_decides_between_logits_one_ulp_apart_where_the_budget_put_its_offset(kind: str) -> None:
    """The budget's offset lies halfway between the last unit it opens and the first it closes; logits can tie
    to within one float32 ulp, and in float32 that halfway point rounded onto one of them: the hard state then had
    a unit fewer than the budget counted (a whole epoch of a search, seen on ResNet-20 at 0.3 of the MACs)."""
    from dnas_prune.search.gates import make_gate

    high = torch.tensor(2.25154447555542)
    low = torch.nextafter(high, torch.tensor(0.0))
    gate = make_gate(kind, 2)
    with torch.no_grad():
        gate.logits.copy_(torch.stack([high, low]))
    gate.offset = -0.5 * (high.double() + low.double())  # as Supernet.set_schedule sets it: float64
    assert gate.hard_open().tolist() == [True, False]
    assert gate.eval_value().tolist() == [1.0, 0.0]
