"""Pretrained dense parents shipped inside the package, the way torchvision ships weights.

Each entry of ``weights/index.json`` names a state_dict file beside it (stored in half precision to keep the
package small), its sha256, the test accuracy measured on the stored weights, the recipe and command that trained
it, the machine, and the input normalization it expects. ``create_model(name, weights="cifar10")`` loads it;
the file is checked against its sha256 and read with ``weights_only=True``. The files are written by
``experiments/ship_parent.py``, never by hand.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DnasPruneError

WEIGHTS_DIR = Path(__file__).parent / "weights"
INDEX = WEIGHTS_DIR / "index.json"


@lru_cache(maxsize=1)
def _index() -> dict[str, dict[str, Any]]:
    return json.loads(INDEX.read_text()) if INDEX.is_file() else {}


def weights_key(name: str, weights: str) -> str:
    return f"{name}.{weights}"


def available_weights(name: str) -> list[str]:
    """The weight tags shipped for model ``name`` (e.g. ``["cifar10"]``)."""
    return sorted(key.split(".", 1)[1] for key in _index() if key.split(".", 1)[0] == name)


def shipped_weights() -> str:
    """Every shipped (model, tag), for an error message: ``cifar_resnet20 (weights='cifar10'), ...``."""
    return ", ".join(f"{k.split('.', 1)[0]} (weights={k.split('.', 1)[1]!r})" for k in _index()) or "none"


def weights_info(name: str, weights: str) -> dict[str, Any]:
    """The metadata of shipped weights: file, sha256, test_acc, recipe, command, machine, normalization."""
    entry = _index().get(weights_key(name, weights))
    if entry is None:
        raise DnasPruneError(f"no {weights!r} weights are shipped for {name}; shipped: {shipped_weights()}")
    return dict(entry)


def load_weights(model: nn.Module, name: str, weights: str) -> nn.Module:
    """Load shipped weights into ``model`` (a freshly built ``name``), in the model's dtype."""
    info = weights_info(name, weights)
    path = WEIGHTS_DIR / info["file"]
    if not path.is_file():
        raise DnasPruneError(f"{path} is missing from the installed package; reinstall dnas_prune")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise DnasPruneError(f"{path} is corrupt (sha256 {digest[:12]}..., expected {info['sha256'][:12]}...); "
                             "reinstall dnas_prune")
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return model
