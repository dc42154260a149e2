"""The zoo: every registry model has an exact cost and round-trips through its architecture spec."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dnas_prune import MODEL_NAMES, build_model, count_cost, create_model, spec_of
from dnas_prune.errors import DnasPruneError
from dnas_prune.models import ProjectionBlock, SpecError, is_cifar_model


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 32, 32) if is_cifar_model(name) else (3, 64, 64)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cost_matches_flop_counter_and_spec_round_trips(name: str) -> None:
    model = create_model(name).eval()
    size = input_size(name)
    cost = count_cost(model, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *size))
    assert cost.macs == pytest.approx(counter.get_total_flops() / 2, rel=0.01)
    assert cost.params == sum(p.numel() for p in model.parameters())

    spec = spec_of(model)
    assert json.loads(json.dumps(spec)) == spec
    rebuilt = build_model(spec)
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_cifar_resnet56_matches_the_paper() -> None:
    cost = count_cost(create_model("cifar_resnet56"))
    assert 0.84e6 < cost.params < 0.86e6
    assert 125e6 < cost.macs < 127e6


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet50"])
def test_narrow_spec_with_removed_blocks_builds_and_runs(name: str) -> None:
    spec = spec_of(create_model(name))
    bottleneck = spec["block"] == "bottleneck"
    spec["stem"] = spec["stages"][0]["width"] = 5 if not bottleneck else spec["stem"]
    if bottleneck:
        spec["stem"] = 7
        spec["stages"][0]["width"] = 9
    spec["stages"][0]["blocks"] = spec["stages"][0]["blocks"][:1]
    spec["stages"][0]["blocks"][0]["inner"] = [3] * len(spec["stages"][0]["blocks"][0]["inner"])
    spec["stages"][1]["width"] = 6
    spec["stages"][1]["blocks"] = [{"inner": None, "downsample": True}]
    model = build_model(spec).eval()
    assert spec_of(model) == spec
    assert isinstance(model.layer2[0], ProjectionBlock)
    out = model(torch.randn(2, *input_size(name)))
    assert out.shape == (2, spec["num_classes"])
    assert count_cost(model, input_size(name)).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18"])
def test_zero_init_residual_makes_every_block_start_as_the_identity(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, zero_init_residual=True).eval()
    block = model.layer1[1]
    x = torch.rand(2, block.conv1.in_channels, 8, 8)  # non-negative, like the ReLU output a block receives
    assert torch.allclose(block(x), x)
    assert not torch.allclose(create_model(name, num_classes=10).eval().layer1[1](x), x)


def test_bad_specs_and_names_give_one_line_errors() -> None:
    spec = spec_of(create_model("cifar_resnet20"))
    spec["stages"][1]["blocks"][0]["downsample"] = False
    with pytest.raises(SpecError, match="needs a projection"):
        build_model(spec)
    with pytest.raises(SpecError, match="format"):
        build_model({**spec, "format": 99})
    with pytest.raises(DnasPruneError, match="known models: cifar_resnet20") as info:
        create_model("resnet9000")
    assert "\n" not in str(info.value)


def test_a_spec_stem_is_checked_and_only_for_torchvision() -> None:
    from dnas_prune.models.spec import SpecError, validate_spec

    spec = spec_of(create_model("resnet18"))
    assert "stem_conv" not in spec and "stem_pool" not in spec  # the standard stem's spec is what it always was
    for bad, words in (({"stem_conv": [3, 0, 1]}, "stem_conv must be"), ({"stem_conv": 3}, "stem_conv must be"),
                       ({"stem_pool": "no"}, "stem_pool must be true or false")):
        with pytest.raises(SpecError, match=words):
            validate_spec({**spec, **bad})
    with pytest.raises(SpecError, match="torchvision ResNet's stem only"):
        validate_spec({**spec_of(create_model("cifar_resnet20")), "stem_pool": False})
