"""Model files: an architecture spec plus a state_dict, never pickled code (pruned and dense models alike).

A file is ``{"format": "dnas_prune.pruned", "version": 1, "spec": ..., "state_dict": ..., "metadata": ...}``
saved with ``torch.save``. Loading uses ``torch.load(weights_only=True)`` and rebuilds the network from the
spec, so a file from an untrusted source can at worst fail to load; it cannot run code.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import available_weights, build_model, create_model, shipped_weights, spec_of
from ..models.cost import count_cost
from ..models.spec import STANDARD_STEM_CONV, SpecError, check_rebuilt_alike
from .checkpoint import atomic_torch_save, safe_load

FORMAT = "dnas_prune.pruned"
VERSION = 1
_DEFAULT_INPUT_SIZE = {"cifar": (3, 32, 32), "torchvision": (3, 224, 224)}


def default_input_size(spec: dict[str, Any]) -> tuple[int, int, int]:
    """The input size a spec's family is usually run at (CIFAR 32x32, ImageNet 224x224; a torchvision ResNet with
    the CIFAR stem, stride 1 and no max-pool, 32x32)."""
    if spec.get("stem_pool", True) is False and spec.get("stem_conv", STANDARD_STEM_CONV)[1] == 1:
        return _DEFAULT_INPUT_SIZE["cifar"]
    return _DEFAULT_INPUT_SIZE[spec["family"]]


def save_pruned(model: nn.Module, path: str | os.PathLike[str], **metadata: Any) -> Path:
    """Write ``model`` as a pruned-model file; ``metadata`` (JSON-able: dataset, accuracy, ...) is kept.

    MACs and params are counted at ``metadata["input_size"]`` (default: the family's usual size) and
    stored too, so tools can report them without rebuilding the model.
    """
    path = Path(path)
    spec = spec_of(model)
    check_rebuilt_alike(model, spec)  # a file whose spec rebuilds another model would load as that one
    input_size = tuple(int(v) for v in metadata.pop("input_size", default_input_size(spec)))
    try:
        json.dumps(metadata)
    except TypeError as exc:
        raise TypeError(f"save_pruned metadata must be JSON-serializable: {exc}") from None
    cost = count_cost(model, input_size)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec,
        "state_dict": state_dict,
        "metadata": {"macs": cost.macs, "params": cost.params, "input_size": list(input_size), **metadata},
    }
    return atomic_torch_save(payload, path)


def _describe_foreign(obj: dict[str, Any]) -> str:
    for key in ("kind", "format"):
        if isinstance(obj.get(key), str):
            return f"a {obj[key]!r} file"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "a plain state_dict (it lacks the architecture spec)"
    if "optimizer" in obj or "epoch" in obj:
        return "a training checkpoint"
    return f"a dict with keys {sorted(map(str, obj))[:5]}"


def _what_to_pass(path: Path, obj: dict[str, Any]) -> str:
    """The next step for a file that is not a pruned model: finalize a search checkpoint, or take the model file a
    training run wrote next to its checkpoint."""
    metadata = obj.get("metadata")
    kind = metadata.get("kind") if isinstance(metadata, dict) else None
    if obj.get("kind") == "dnas_prune.trainer" and kind == "dnas_prune.search":
        return (f"it is a search checkpoint: run `dnas-prune finalize {path} -o {path.with_name('pruned.pt')}` "
                "first, then pass that pruned.pt")
    if obj.get("kind") == "dnas_prune.trainer":
        written = "pruned.pt" if kind == "dnas_prune.finetune" else "model.pt"
        return f"it is a resumable training checkpoint: pass the {written} written next to it"
    return "pass a save_pruned file"


def _check_tensors(path: Path, model: nn.Module, state_dict: dict[str, Any]) -> None:
    """Name the first key whose presence or shape disagrees with the spec."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"{path}: spec and tensors disagree: {key} is missing; the file is corrupt")
        value = state_dict[key]
        if isinstance(value, torch.Tensor) and value.shape == ref.shape and value.dtype != ref.dtype and \
                (value.is_floating_point() != ref.is_floating_point() or not ref.is_floating_point()):
            raise CheckpointError(f"{path}: {key} is {value.dtype}, the model wants {ref.dtype}; the file is corrupt")
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"{path}: spec and tensors disagree at {key}: spec wants {tuple(ref.shape)}, file has {got}; "
                "the file is corrupt"
            )
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(f"{path}: spec and tensors disagree: unexpected tensor {key}; the file is corrupt")


def load_pruned_with_metadata(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode) and the metadata of a file written by :func:`save_pruned`.

    Every failure is a one-line :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    obj = safe_load(path, "a pruned model file (from save_pruned / dnas-prune finalize)", map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a pruned model; pass a save_pruned file")
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: is {_describe_foreign(obj)}, not a pruned model; {_what_to_pass(path, obj)}")
    version = obj.get("version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: pruned-model version {version!r} is invalid; the file is corrupt")
    if version > VERSION:
        raise CheckpointError(
            f"{path}: pruned-model version {version} is newer than this dnas_prune reads ({VERSION}); upgrade dnas_prune"
        )
    state_dict, metadata = obj.get("state_dict"), obj.get("metadata", {})
    if not isinstance(state_dict, dict) or not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: state_dict or metadata is not a dict; the file is corrupt")
    try:
        model = build_model(obj.get("spec"), device="meta")
    except SpecError as exc:
        raise CheckpointError(f"{path}: invalid architecture spec: {exc}") from None
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # a spec whose fields have the wrong types
        raise CheckpointError(f"{path}: invalid architecture spec ({type(exc).__name__}: {exc}); the file is "
                              "corrupt") from None
    _check_tensors(path, model, state_dict)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval(), metadata


def load_pruned(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """The model (eval mode) of a file written by :func:`save_pruned`."""
    return load_pruned_with_metadata(path, map_location)[0]


def load_pretrained(path: str | Path, model_name: str | None, num_classes: int, new_head: bool = False) -> nn.Module:
    """A dense model from a ``dnas-prune train`` output (``model.pt`` or ``train.pt``), a plain torchvision-style
    state_dict (then ``model_name`` says which architecture), or the tag of shipped weights such as ``cifar10``.

    A head (``fc``) for another number of classes is refused, since pruning needs a model trained on the data;
    with ``new_head`` (transfer learning: ``dnas-prune train --pretrained``) it is replaced by a freshly initialized
    one for ``num_classes``, and every other weight is loaded."""
    if not Path(path).exists() and model_name is not None and str(path) in available_weights(model_name):
        return create_model(model_name, num_classes=num_classes, weights=str(path))
    if not Path(path).exists() and Path(path).name == str(path) and not Path(path).suffix:  # a tag, not a file
        raise CheckpointError(f"{path}: no such file, and no {str(path)!r} weights are shipped for "
                              f"{model_name or 'a model without --model'} (shipped: {shipped_weights()}); "
                              "pass a model file or one of those")
    state = safe_load(path, "a dnas_prune model or a state_dict")
    if isinstance(state, dict) and "spec" in state and "state_dict" in state:
        spec, weights = state["spec"], state["state_dict"]
    elif isinstance(state, dict) and state.get("kind") == "dnas_prune.trainer":
        spec = state.get("metadata", {}).get("spec")
        if spec is None:
            raise CheckpointError(f"{path} is a trainer checkpoint without a model spec; pass its model.pt instead")
        weights = state["model"]
    elif isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        if model_name is None:
            raise CheckpointError(f"{path} is a plain state_dict; also pass --model to say which architecture it is")
        spec, weights = None, state
    else:
        raise CheckpointError(f"{path} is neither a dnas_prune model file nor a state_dict")
    head = weights.get("fc.weight")
    replace_head = isinstance(head, torch.Tensor) and head.dim() == 2 and head.shape[0] != num_classes
    model = (create_model(model_name, num_classes=num_classes) if spec is None
             else build_model({**spec, "num_classes": num_classes} if replace_head else spec))
    missing, unexpected = _misfit(model, weights)
    if missing or unexpected:
        raise CheckpointError(f"{path} holds weights of another architecture than {model_name or 'its spec'}'s "
                              f"({len(missing)} of the model's tensors missing, e.g. {missing[:1] or '-'}; "
                              f"{len(unexpected)} unexpected, e.g. {unexpected[:1] or '-'}); check --model")
    if replace_head and not new_head:
        raise CheckpointError(f"{path} has a {head.shape[0]}-class head (fc) and the data {num_classes} classes; "
                              f"start from a model trained on these classes: `dnas-prune train --pretrained {path}` "
                              "replaces the head and trains it")
    if replace_head:
        warnings.warn(f"{path}: its {head.shape[0]}-class head (fc) is replaced by a new {num_classes}-class one; every "
                      "other weight is loaded", stacklevel=2)
        weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    try:
        model.load_state_dict(weights, strict=not replace_head)
    except RuntimeError as exc:  # same names, other shapes
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{path} does not fit {model_name or 'the model'}: "
                              f"{lines[min(1, len(lines) - 1)][:300]}; check --model") from None
    return model


def _misfit(model: nn.Module, weights: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The model's state_dict keys ``weights`` lacks, and the keys it has that the model does not, sorted (BN's
    ``num_batches_tracked`` may be absent: older state_dicts lack it and load)."""
    expected = set(model.state_dict())
    missing = {k for k in expected - set(weights) if not k.endswith("num_batches_tracked")}
    return sorted(missing), sorted(set(weights) - expected)
