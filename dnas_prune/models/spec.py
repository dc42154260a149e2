"""Architecture specs: the plain, JSON-serializable description of a (pruned) ResNet.

A spec is what finalization emits and what loading a pruned model rebuilds, so a pruned network is
always "the same class built with smaller numbers" and never a pickle of custom code::

    {"format": 1, "family": "cifar" | "torchvision", "block": "basic" | "bottleneck",
     "num_classes": 10, "stem": 16,
     "stages": [{"width": 16, "stride": 1,
                 "blocks": [{"inner": [16], "downsample": false}, ...]}, ...]}

``width`` is the residual-stream width of the stage; ``inner`` the inner widths of a block (BasicBlock:
conv1 out; Bottleneck: conv1 and conv2 out) or ``null`` when only the block's projection remains.
Removed identity blocks are simply absent.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv

from ..errors import DnasPruneError
from .cifar_resnet import BasicBlock, CifarResNet, ProjectionBlock, init_resnet_weights

Spec = dict[str, Any]
SPEC_FORMAT = 1
STANDARD_STEM_CONV = (7, 2, 3)  # a torchvision ResNet's conv1: kernel, stride, padding


class SpecError(DnasPruneError):
    """A spec or a model that cannot be described by (or built from) a spec."""


def _stage_modules(model: nn.Module) -> list[nn.Sequential]:
    stages = []
    index = 1
    while isinstance(getattr(model, f"layer{index}", None), nn.Sequential):
        stages.append(getattr(model, f"layer{index}"))
        index += 1
    return stages


def block_kind(block: nn.Module, name: str) -> str:
    """``basic``, ``bottleneck`` or ``projection``; anything else is an error naming the module."""
    if isinstance(block, ProjectionBlock):
        return "projection"
    if isinstance(block, (BasicBlock, tv.BasicBlock)) and type(block) in (BasicBlock, tv.BasicBlock):
        return "basic"
    if type(block) is tv.Bottleneck:
        if block.conv2.groups != 1 or block.conv2.dilation != (1, 1):
            raise SpecError(f"{name}: grouped or dilated bottlenecks are not supported")
        return "bottleneck"
    raise SpecError(
        f"{name}: unsupported block type {type(block).__name__} "
        "(supported: CIFAR/torchvision BasicBlock, torchvision Bottleneck)"
    )


def _block_stride(block: nn.Module, kind: str) -> int:
    if kind == "projection":
        return block.downsample[0].stride[0]
    if kind == "bottleneck":
        return block.conv2.stride[0]
    return block.conv1.stride[0]


def family_of(model: nn.Module) -> str:
    """``"cifar"`` or ``"torchvision"``: the two ResNet families every layer of dnas_prune reads."""
    if isinstance(model, CifarResNet):
        return "cifar"
    if isinstance(model, tv.ResNet):
        return "torchvision"
    raise SpecError(f"model of type {type(model).__name__} is not a CIFAR or torchvision ResNet")


def check_batchnorms(model: nn.Module) -> None:
    """Refuse BatchNorms a spec cannot rebuild: :func:`build_model` makes ``nn.BatchNorm2d(c)`` with torch's
    defaults, so another eps would silently change what a finalized or reloaded model computes."""
    default = nn.BatchNorm2d(1)
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        settings = {"eps": m.eps, "momentum": m.momentum, "affine": m.affine,
                    "track_running_stats": m.track_running_stats}
        differ = [f"{k}={v}" for k, v in settings.items() if v != getattr(default, k)]
        if type(m) is not nn.BatchNorm2d or differ:
            raise SpecError(f"{name}: {type(m).__name__}({', '.join(differ)}): a pruned model is rebuilt with "
                            "nn.BatchNorm2d's defaults (eps=1e-05, momentum=0.1, affine, running statistics); "
                            "build the model with those")


def spec_of(model: nn.Module) -> Spec:
    """Read the architecture spec of a CIFAR ResNet or a torchvision ``ResNet`` instance."""
    family = family_of(model)
    check_batchnorms(model)
    block_type = None
    stages = []
    for s, layer in enumerate(_stage_modules(model), start=1):
        blocks = []
        stride = 1
        width = None
        for j, block in enumerate(layer):
            name = f"layer{s}.{j}"
            kind = block_kind(block, name)
            if kind != "projection":
                if block_type not in (None, kind):
                    raise SpecError(f"{name}: mixes basic and bottleneck blocks")
                block_type = kind
            if j == 0:
                stride = _block_stride(block, kind)
            elif _block_stride(block, kind) != 1:
                raise SpecError(f"{name}: only the first block of a stage may be strided")
            if block.downsample is not None and j != 0:
                raise SpecError(f"{name}: only the first block of a stage may have a projection")
            if kind == "projection":
                inner = None
                out = block.downsample[0].out_channels
            elif kind == "basic":
                inner = [block.conv1.out_channels]
                out = block.conv2.out_channels
            else:
                inner = [block.conv1.out_channels, block.conv2.out_channels]
                out = block.conv3.out_channels
            width = out if width is None else width
            blocks.append({"inner": inner, "downsample": block.downsample is not None})
        if width is None:  # every block of the stage was removed: the stream passes through
            width = stages[-1]["width"] if stages else model.conv1.out_channels
        stages.append({"width": width, "stride": stride, "blocks": blocks})
    if block_type is None:  # only projections are left: the block type no longer matters
        block_type = "basic"
    if not isinstance(model.fc, nn.Linear):
        raise SpecError(f"fc: {type(model.fc).__name__} where a pruned model is rebuilt with nn.Linear; prune the model "
                        "with a plain nn.Linear head and put dropout or other layers around the finalized model")
    spec = {
        "format": SPEC_FORMAT,
        "family": family,
        "block": block_type,
        "num_classes": model.fc.out_features,
        "stem": model.conv1.out_channels,
        "stages": stages,
    }
    if family == "torchvision":
        spec.update(stem_of(model))
    return spec


def stem_of(model: nn.Module) -> dict[str, Any]:
    """A torchvision ResNet's stem where it is not ImageNet's 7x7/2 conv and 3x3/2 max-pool, e.g. the CIFAR
    variant (3x3/1 conv, no max-pool): ``stem_conv`` (kernel, stride, padding) and ``stem_pool`` (False), only
    when they differ, so a standard ResNet's spec stays what it always was."""
    conv, extra = model.conv1, {}
    settings = [conv.kernel_size[0], conv.stride[0], conv.padding[0]] if isinstance(conv, nn.Conv2d) else None
    square = isinstance(conv, nn.Conv2d) and all(len(set(v)) == 1 for v in (conv.kernel_size, conv.stride, conv.padding))
    if square and tuple(settings) != STANDARD_STEM_CONV:
        extra["stem_conv"] = settings
    if isinstance(model.maxpool, nn.Identity):
        extra["stem_pool"] = False
    return extra


def check_rebuilt_alike(model: nn.Module, spec: Spec) -> None:
    """Refuse a model that :func:`build_model` would not rebuild module for module: a spec holds widths, strides,
    block counts and a torchvision stem's conv and pool, so a dilated or grouped conv, another pool or an ``fc``
    without bias would come back as the standard ResNet's, computing something else, or fail to load, after the
    search. Every module is compared by name, type and settings (an activation's ``inplace`` aside). Called
    where a user's model enters (wrapping, saving), not on every spec read: models built from a spec are alike."""
    built = dict(build_model(spec, device="meta").named_modules())
    for name, m in model.named_modules():
        b = built.pop(name, None)
        where = f"model.{name}" if name else "model"
        if b is None:
            raise SpecError(f"{where}: {type(m).__name__} is not part of the ResNet a pruned model is rebuilt as; "
                            "prune the standard model and add this around the finalized one")
        if type(m) is not type(b) and name:  # the root may be a subclass (its forward is checked elsewhere)
            raise SpecError(f"{where}: {type(m).__name__} where a pruned model is rebuilt with {type(b).__name__}; "
                            "prune the standard model and change this in the finalized one")
        if next(m.children(), None) is None and not isinstance(m, (nn.ReLU, nn.modules.batchnorm._BatchNorm)):
            if m.extra_repr() != b.extra_repr():
                raise SpecError(f"{where}: {type(m).__name__}({m.extra_repr()}) would be rebuilt as "
                                f"{type(b).__name__}({b.extra_repr()}) in the pruned model: dnas_prune rebuilds the "
                                f"standard {spec['family']} ResNet; prune that one and change this in the finalized "
                                "model")
    if built:
        missing = next(iter(built))
        raise SpecError(f"model.{missing}: missing where a pruned model is rebuilt with {type(built[missing]).__name__}; "
                        "prune the standard ResNet of this family")


def validate_spec(spec: Any) -> Spec:
    """Check a spec's shape and widths; returns it. Raises :class:`SpecError` with what is wrong."""
    if not isinstance(spec, dict):
        raise SpecError("spec must be a dict")
    if spec.get("format") != SPEC_FORMAT:
        raise SpecError(f"spec format {spec.get('format')!r} is not supported (this version reads {SPEC_FORMAT})")
    if spec.get("family") not in ("cifar", "torchvision"):
        raise SpecError(f"spec family must be 'cifar' or 'torchvision', got {spec.get('family')!r}")
    if spec.get("block") not in ("basic", "bottleneck"):
        raise SpecError(f"spec block must be 'basic' or 'bottleneck', got {spec.get('block')!r}")
    n_inner = 1 if spec["block"] == "basic" else 2
    if spec["family"] == "torchvision" and len(spec.get("stages", [])) != 4:
        raise SpecError("a torchvision ResNet spec has exactly 4 stages")

    if spec["family"] != "torchvision" and ("stem_conv" in spec or "stem_pool" in spec):
        raise SpecError("stem_conv and stem_pool describe a torchvision ResNet's stem only")
    stem_conv = spec.get("stem_conv", STANDARD_STEM_CONV)
    if (not isinstance(stem_conv, (list, tuple)) or len(stem_conv) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in stem_conv)
            or stem_conv[0] < 1 or stem_conv[1] < 1 or stem_conv[2] < 0):
        raise SpecError(f"stem_conv must be [kernel, stride, padding], got {stem_conv!r}")
    if not isinstance(spec.get("stem_pool", True), bool):
        raise SpecError(f"stem_pool must be true or false, got {spec['stem_pool']!r}")

    def positive(value: Any, what: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{what} must be a positive integer, got {value!r}")

    positive(spec.get("num_classes"), "num_classes")
    positive(spec.get("stem"), "stem")
    stream = spec["stem"]
    for s, stage in enumerate(spec.get("stages") or [], start=1):
        positive(stage.get("width"), f"layer{s} width")
        positive(stage.get("stride"), f"layer{s} stride")
        for j, block in enumerate(stage.get("blocks", [])):
            name = f"layer{s}.{j}"
            inner = block.get("inner")
            if inner is not None:
                if not isinstance(inner, list) or len(inner) != n_inner:
                    raise SpecError(f"{name}: inner must list {n_inner} width(s) or be null")
                for w in inner:
                    positive(w, f"{name} inner width")
            needs_projection = j == 0 and (stage["stride"] != 1 or stream != stage["width"])
            if needs_projection and not block.get("downsample"):
                raise SpecError(f"{name}: the stream changes shape here, so the block needs a projection")
            if block.get("downsample") and j != 0:
                raise SpecError(f"{name}: only the first block of a stage may have a projection")
            if inner is None and not block.get("downsample"):
                raise SpecError(f"{name}: a block without inner widths must keep its projection")
            stream = stage["width"]
        if not stage.get("blocks"):
            if stage["stride"] != 1 or stream != stage["width"]:
                raise SpecError(f"layer{s}: an empty stage cannot change the stream's shape")
    if not spec.get("stages"):
        raise SpecError("spec has no stages")
    return spec


def _tv_block(block_type: str, in_w: int, inner: list[int], out_w: int, stride: int, down: nn.Module | None) -> nn.Module:
    """A torchvision BasicBlock/Bottleneck instance with arbitrary widths (the class hard-codes ratios)."""
    with torch.device("meta"):
        block = tv.BasicBlock(1, 1) if block_type == "basic" else tv.Bottleneck(1, 1)
    if block_type == "basic":
        block.conv1 = tv.conv3x3(in_w, inner[0], stride)
        block.bn1 = nn.BatchNorm2d(inner[0])
        block.conv2 = tv.conv3x3(inner[0], out_w)
        block.bn2 = nn.BatchNorm2d(out_w)
    else:
        block.conv1 = tv.conv1x1(in_w, inner[0])
        block.bn1 = nn.BatchNorm2d(inner[0])
        block.conv2 = tv.conv3x3(inner[0], inner[1], stride)
        block.bn2 = nn.BatchNorm2d(inner[1])
        block.conv3 = tv.conv1x1(inner[1], out_w)
        block.bn3 = nn.BatchNorm2d(out_w)
    block.downsample = down
    block.stride = stride
    return block


def _build_torchvision(spec: Spec) -> tv.ResNet:
    block_cls = tv.BasicBlock if spec["block"] == "basic" else tv.Bottleneck
    with torch.device("meta"):
        model = tv.ResNet(block_cls, [1, 1, 1, 1], num_classes=1)
    kernel, stride, padding = spec.get("stem_conv", STANDARD_STEM_CONV)
    model.conv1 = nn.Conv2d(3, spec["stem"], kernel_size=kernel, stride=stride, padding=padding, bias=False)
    model.bn1 = nn.BatchNorm2d(spec["stem"])
    if not spec.get("stem_pool", True):
        model.maxpool = nn.Identity()
    in_w = spec["stem"]
    for s, stage in enumerate(spec["stages"], start=1):
        layers = []
        for j, block in enumerate(stage["blocks"]):
            stride = stage["stride"] if j == 0 else 1
            down = (
                nn.Sequential(tv.conv1x1(in_w, stage["width"], stride), nn.BatchNorm2d(stage["width"]))
                if block["downsample"]
                else None
            )
            if block["inner"] is None:
                layers.append(ProjectionBlock(down))
            else:
                layers.append(_tv_block(spec["block"], in_w, block["inner"], stage["width"], stride, down))
            in_w = stage["width"]
        setattr(model, f"layer{s}", nn.Sequential(*layers))
    model.fc = nn.Linear(in_w, spec["num_classes"])
    model.inplanes = in_w
    return model


def _build_cifar(spec: Spec) -> CifarResNet:
    stages = [
        (
            stage["width"],
            stage["stride"],
            [(None if b["inner"] is None else b["inner"][0], bool(b["downsample"])) for b in stage["blocks"]],
        )
        for stage in spec["stages"]
    ]
    return CifarResNet(spec["stem"], stages, num_classes=spec["num_classes"])


def build_model(spec: Spec, device: torch.device | str | None = None) -> nn.Module:
    """Build the plain model a spec describes (CIFAR family -> ``CifarResNet``, else torchvision ``ResNet``).

    With ``device="meta"`` nothing is allocated or initialized, for ``load_state_dict(..., assign=True)``.
    """
    spec = validate_spec(copy.deepcopy(spec))
    if spec["family"] == "cifar" and spec["block"] != "basic":
        raise SpecError("the CIFAR family only has basic blocks")
    with torch.device(device or "cpu"):
        model = _build_cifar(spec) if spec["family"] == "cifar" else _build_torchvision(spec)
    if str(device) != "meta" and spec["family"] == "torchvision":  # CifarResNet initializes itself
        init_resnet_weights(model)
    return model
