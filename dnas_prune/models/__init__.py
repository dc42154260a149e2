"""The ResNet zoo: CIFAR ResNets and torchvision ResNets, plus the architecture spec they share."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torchvision.models import resnet as tv

from ..errors import DnasPruneError
from .cifar_resnet import BasicBlock, CifarResNet, ProjectionBlock, cifar_resnet
from .spec import Spec, SpecError, build_model, spec_of, validate_spec

_CIFAR_DEPTHS = {"cifar_resnet20": 20, "cifar_resnet32": 32, "cifar_resnet44": 44, "cifar_resnet56": 56, "cifar_resnet110": 110}
_TORCHVISION: dict[str, Callable[..., tv.ResNet]] = {
    "resnet18": tv.resnet18,
    "resnet34": tv.resnet34,
    "resnet50": tv.resnet50,
    "resnet101": tv.resnet101,
    "resnet152": tv.resnet152,
    "wide_resnet50_2": tv.wide_resnet50_2,
}
MODEL_NAMES: tuple[str, ...] = tuple(_CIFAR_DEPTHS) + tuple(_TORCHVISION)


class UnknownModelError(DnasPruneError):
    pass


def is_cifar_model(name: str) -> bool:
    return name in _CIFAR_DEPTHS


def check_model_name(name: str) -> None:
    """Fail fast, before any data is loaded, on a name the registry does not know."""
    if name not in MODEL_NAMES:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A dense registry model. torchvision names pass ``weights=`` and other kwargs through;
    CIFAR names take ``zero_init_residual`` like torchvision's builders."""
    check_model_name(name)
    if name in _CIFAR_DEPTHS:
        unknown = sorted(set(kwargs) - {"zero_init_residual"})
        if unknown:
            raise TypeError(f"{name} takes no options besides num_classes and zero_init_residual, got {unknown}")
        return cifar_resnet(_CIFAR_DEPTHS[name], num_classes=num_classes or 10, **kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _TORCHVISION[name](**kwargs)


__all__ = [
    "BasicBlock", "CifarResNet", "ProjectionBlock", "MODEL_NAMES", "Spec", "SpecError", "UnknownModelError",
    "build_model", "check_model_name", "cifar_resnet", "create_model", "is_cifar_model", "spec_of", "validate_spec",
]
