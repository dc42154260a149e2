"""The ResNet zoo: CIFAR ResNets and torchvision ResNets, plus the architecture spec they share."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torchvision.models import resnet as tv

from ..errors import DnasPruneError
from .cifar_resnet import BasicBlock, CifarResNet, ProjectionBlock, cifar_resnet
from .pretrained import available_weights, load_weights, shipped_weights, weights_info
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


def create_model(name: str, num_classes: int | None = None, weights: Any = None, **kwargs: Any) -> nn.Module:
    """A dense registry model. ``weights="cifar10"`` (or another tag in :func:`available_weights`) loads the
    pretrained parent shipped with the package; other ``weights`` values and kwargs pass through to torchvision's
    builders. CIFAR names take ``zero_init_residual`` like torchvision's builders."""
    check_model_name(name)
    shipped = isinstance(weights, str) and weights in available_weights(name)
    if shipped or (isinstance(weights, str) and name in _CIFAR_DEPTHS):
        classes = weights_info(name, weights)["num_classes"]
        if num_classes not in (None, classes):
            raise DnasPruneError(f"{name} weights={weights!r} have {classes} classes, not {num_classes}")
        model = create_model(name, num_classes=classes, **kwargs)
        return load_weights(model, name, weights)
    if name in _CIFAR_DEPTHS:
        if weights is not None:
            raise DnasPruneError(f"{name}: weights must be one of {available_weights(name)} or None, got {weights!r}")
        unknown = sorted(set(kwargs) - {"zero_init_residual"})
        if unknown:
            raise TypeError(f"{name} takes no options besides num_classes and zero_init_residual, got {unknown}")
        return cifar_resnet(_CIFAR_DEPTHS[name], num_classes=num_classes or 10, **kwargs)
    if weights is not None:
        kwargs["weights"] = weights
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _TORCHVISION[name](**kwargs)


__all__ = [
    "BasicBlock", "CifarResNet", "ProjectionBlock", "MODEL_NAMES", "Spec", "SpecError", "UnknownModelError",
    "available_weights", "build_model", "shipped_weights", "check_model_name", "load_weights", "weights_info", "cifar_resnet", "create_model", "is_cifar_model", "spec_of", "validate_spec",
]
