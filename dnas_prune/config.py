"""The run's TOML config: one key per knob, each defaulting to its command's default; parsing, validation, and
the ``TrainConfig`` / ``SearchConfig`` each stage of :mod:`~dnas_prune.pipeline` gets from it.

Paths written in the config file (``data.root``, ``pretrain.checkpoint``) are relative to that file;
``out`` and paths given with ``--set`` are relative to the working directory. Without ``data.root`` the data
is found as by every other command (``$DNAS_PRUNE_DATA``, else for CIFAR-10 the download cache).
``data.kind = "imagefolder"`` trains on an ImageNet-style ``train/`` + ``val/`` tree instead of CIFAR-10.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import DnasPruneError
from .io.export import FORMATS
from .models import available_weights, check_model_name
from .search.pruner import BUDGET_FIELDS, SearchConfig, budget_fields
from .train.data import DATA_KINDS
from .train.imagefolder import IMAGE_SIZE
from .train.loop import TrainConfig
from .train.recipes import (CLEAN_EPOCHS_PER, FINETUNE_RECIPE as FINETUNE_DEFAULTS, SEARCH_RECIPE as SEARCH_DEFAULTS,
                            TRAIN_RECIPE as TRAIN_DEFAULTS)

_TOP_LEVEL_TRAIN = ("device", "seed", "progress")  # TrainConfig fields set once for every training stage


def _train_keys(defaults: TrainConfig, without: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(defaults, f.name) for f in fields(TrainConfig) if f.name not in _TOP_LEVEL_TRAIN + without}


_TRAIN_KEYS = tuple(_train_keys(TrainConfig()))
_SEARCH_KEYS = {f.name: getattr(SearchConfig(), f.name) for f in fields(SearchConfig)
                if f.name not in BUDGET_FIELDS}
_TARGET_KEYS = {"target_macs": None, "target_params": None, "target_latency": None, "target_latency_ms": None}

# section -> key -> default ("" is the top level). Each training stage defaults to its command's defaults, and
# every flag of train/search/finetune has a key here;
# --resume is implicit, --pretrained is pretrain.checkpoint, --no-tensorboard is tensorboard = false.
SCHEMA: dict[str, dict[str, Any]] = {
    "": {"seed": 0, "device": "cpu", "out": None, "progress": True, "tensorboard": True},
    "data": {"root": None, "kind": "cifar", "limit_train": None, "val_size": 5000, "image_size": IMAGE_SIZE,
             "workers": None},  # image_size and workers: imagefolder only
    "model": {"name": None},
    # None: epochs // CLEAN_EPOCHS_PER, as `dnas-prune train`
    "pretrain": {**_train_keys(TRAIN_DEFAULTS), "clean_epochs": None, "checkpoint": None, "weights": None,
                 "zero_init_residual": False},
    "search": {**_train_keys(SEARCH_DEFAULTS, without=("ema_decay",)), **_TARGET_KEYS, **_SEARCH_KEYS},
    "finalize": {"round_to": None},
    # true: the finetune continues the search's lr schedule (its peak lr, warm-up and shape) instead of restarting
    # one, so search + finetune train as one run of search.epochs + finetune.epochs with the architecture settling
    # early; false: each stage runs its own schedule.
    "finetune": {**_train_keys(FINETUNE_DEFAULTS), "continue_schedule": True},
    "export": {"formats": ["onnx"], "check": True},
    "report": {"batch_sizes": [1, 64], "max_seconds": 3.0, "threads": None},
}
# The types of keys whose default is None.
_OPTIONAL_TYPES = {"out": str, "root": str, "limit_train": int, "name": str, "checkpoint": str, "weights": str,
                   "target_macs": float, "target_params": float, "target_latency": float, "target_latency_ms": float,
                   "round_to": int, "threads": int, "latency_threads": int, "gate_lr": float,
                   "workers": int, "clean_epochs": int, "block_gates": bool,
                   "close_thin_blocks": bool}
_FILE_PATHS = (("data", "root"), ("pretrain", "checkpoint"))
# Settings that do not change what earlier stages computed: a re-run may change them.
_RERUNNABLE = ("export", "report")
_IGNORED = (("", "out"), ("", "progress"), ("", "tensorboard"), ("data", "workers"))

Config = dict[str, dict[str, Any]]


def _label(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


# Keys added with a default that changed behaviour: a saved config.toml without them ran the old way.
_BEFORE_KEY = {("finetune", "continue_schedule"): False, ("search", "prior"): "gamma",
               ("search", "channel_order"): "learned", ("search", "rank_cost"): "budget"}


def _get(table: dict[str, Any], section: str, key: str, saved: bool = False) -> Any:
    """A key's value; absent means its default (None is not written, and older run dirs lack newer keys), or for a
    ``saved`` run dir's config, what the run did before the key existed."""
    fallback = _BEFORE_KEY.get((section, key), SCHEMA[section][key]) if saved else SCHEMA[section][key]
    return (table.get(section, {}) if section else table).get(key, fallback)


def _known(section: str) -> str:
    if section:
        return f"known keys of [{section}]: {', '.join(SCHEMA[section])}"
    return f"known top-level keys: {', '.join(SCHEMA[''])}; sections: {', '.join(s for s in SCHEMA if s)}"


def _did_you_mean(name: str, known: Sequence[str], section: str = "") -> str:
    """``"; did you mean 'section.x'?"`` for the closest known name, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {_label(section, close[0])!r}?" if close else ""


def _checked(section: str, key: str, value: Any) -> Any:
    """``value`` if it has the key's type (an int is accepted for a float); else a one-line error."""
    if key not in SCHEMA[section]:
        raise DnasPruneError(f"unknown key {_label(section, key)!r}; {_known(section)}"
                             f"{_did_you_mean(key, list(SCHEMA[section]), section)}")
    default = SCHEMA[section][key]
    expected = type(default) if default is not None else _OPTIONAL_TYPES[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise DnasPruneError(f"{_label(section, key)} must be {expected.__name__}, got {value!r}")
    return value


def _merge(config: Config, table: dict[str, Any], base: Path) -> None:
    """Validate a parsed TOML table into ``config``; file paths are made relative to ``base``."""
    for name, value in table.items():
        if isinstance(value, dict):
            if name not in SCHEMA or not name:
                raise DnasPruneError(f"unknown section [{name}]; {_known('')}{_did_you_mean(name, [s for s in SCHEMA if s])}")
            for key, item in value.items():
                config[name][key] = _checked(name, key, item)
        else:
            config[""][name] = _checked("", name, value)
    for section, key in _FILE_PATHS:
        if key in table.get(section, {}):
            config[section][key] = str(base / Path(config[section][key]).expanduser())


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (or ``key=value`` for a top-level key) -> ``(section, key, value)``.

    The value is read as a TOML literal (``1``, ``0.5``, ``true``, ``["onnx"]``, ``"x"``), else kept as a string.
    """
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise DnasPruneError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    section, _, key = name.strip().rpartition(".")
    if section not in SCHEMA or (not section and "." in name):
        raise DnasPruneError(f"unknown section {section!r} in --set {text!r}; {_known('')}"
                             f"{_did_you_mean(section, [s for s in SCHEMA if s])}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), out: str | None = None) -> Config:
    """The validated config: defaults, then the file, then ``--set`` overrides, then ``--out``."""
    path = Path(path)
    if not path.is_file():
        raise DnasPruneError(f"config file {path} does not exist")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DnasPruneError(f"{path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    config: Config = {section: dict(keys) for section, keys in SCHEMA.items()}
    _merge(config, table, path.resolve().parent)
    for text in overrides:
        section, key, value = parse_override(text)
        config[section][key] = _checked(section, key, value)
    if out is not None:
        config[""]["out"] = out
    if config[""]["out"] is None:
        config[""]["out"] = str(Path("runs") / path.stem)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    """Cross-key checks that the types alone do not catch, so a bad recipe fails before any training."""
    if config["model"]["name"] is None:
        raise DnasPruneError("[model] name is required (e.g. name = \"cifar_resnet56\")")
    check_model_name(config["model"]["name"])
    if config["data"]["kind"] not in DATA_KINDS:
        raise DnasPruneError(f"data.kind must be one of {', '.join(DATA_KINDS)}, got {config['data']['kind']!r}")
    if config[""]["device"] not in ("cpu", "cuda"):
        raise DnasPruneError(f"device must be cpu or cuda, got {config['']['device']!r}")
    search_config_of(config)
    parent = config["pretrain"]
    if parent["weights"] is not None and parent["checkpoint"] is not None:
        raise DnasPruneError("[pretrain] takes weights or checkpoint, not both")
    if parent["weights"] is not None and parent["weights"] not in available_weights(config["model"]["name"]):
        shipped = available_weights(config["model"]["name"]) or "none"
        raise DnasPruneError(f"pretrain.weights: no {parent['weights']!r} weights are shipped for "
                             f"{config['model']['name']} (shipped: {shipped})")
    for stage in ("pretrain", "search", "finetune"):
        train_config_of(config, stage)
    for section in ("search", "finalize"):
        if config[section]["round_to"] is not None and config[section]["round_to"] < 1:
            raise DnasPruneError(f"{section}.round_to must be a positive integer, got {config[section]['round_to']}")
    unknown = [f for f in config["export"]["formats"] if f not in FORMATS]
    if unknown:
        raise DnasPruneError(f"export.formats: unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    sizes = config["report"]["batch_sizes"]
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in sizes):
        raise DnasPruneError(f"report.batch_sizes must be a non-empty list of positive integers, got {sizes!r}")


def train_config_of(config: Config, stage: str) -> TrainConfig:
    keys = {k: v for k, v in config[stage].items() if k in _TRAIN_KEYS}
    if keys["clean_epochs"] is None:
        keys["clean_epochs"] = keys["epochs"] // CLEAN_EPOCHS_PER
    if stage in ("search", "finetune") and config["finetune"]["continue_schedule"]:
        _check_one_schedule(config)
        search, span = config["search"], config["search"]["epochs"] + config["finetune"]["epochs"]
        keys.update(schedule_epochs=span, schedule_start=0 if stage == "search" else search["epochs"],
                    lr=search["lr"], schedule=search["schedule"], warmup_epochs=search["warmup_epochs"])
    top = config[""]
    return TrainConfig(**keys, device=top["device"], seed=top["seed"], progress=top["progress"])


def _check_one_schedule(config: Config) -> None:
    """Under ``finetune.continue_schedule`` the finetune takes the search's lr schedule: refuse settings it would
    otherwise silently ignore."""
    ignored = [f"finetune.{k}" for k in ("lr", "schedule", "warmup_epochs", "schedule_epochs", "schedule_start")
               if config["finetune"][k] != SCHEMA["finetune"][k]]
    ignored += [f"search.{k}" for k in ("schedule_epochs", "schedule_start") if config["search"][k] != SCHEMA["search"][k]]
    if ignored:
        raise DnasPruneError(f"{', '.join(ignored)} would be ignored: the finetune continues the search's lr schedule "
                             "(search.lr, search.schedule, search.warmup_epochs); set finetune.continue_schedule = "
                             "false to give the finetune its own")


def search_config_of(config: Config) -> SearchConfig:
    s = config["search"]
    target = budget_fields(*(s[k] for k in _TARGET_KEYS), flag="search.target_{}")
    return SearchConfig(**target, **{k: s[k] for k in _SEARCH_KEYS})


def applicable(config: Config) -> Config:
    """A copy of ``config`` without settings its data kind does not use: CIFAR images have no ``image_size``
    (kept only when set explicitly to another value, so that a changed setting is still noticed)."""
    shown = {section: dict(keys) for section, keys in config.items()}
    if shown["data"]["kind"] == "cifar" and shown["data"]["image_size"] == IMAGE_SIZE:
        shown["data"]["image_size"] = None
    return shown


def to_toml(config: Config) -> str:
    """The config as TOML (None values and settings of other data kinds left out): kept in the run directory
    and shown in the report."""
    def lines(values: dict[str, Any]) -> list[str]:
        return [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]

    config = applicable(config)
    parts = lines(config[""])
    for section in SCHEMA:
        if section:
            parts += ["", f"[{section}]", *lines(config[section])]
    return "\n".join(parts) + "\n"


def changed_settings(saved: dict[str, Any], config: Config, rerunnable: bool = False) -> list[str]:
    """The keys whose value in ``config`` differs from a run directory's ``saved`` config.toml (parsed), leaving out
    what does not change what earlier stages computed (with ``rerunnable``: only those, the export and report
    settings, whose stages a re-run redoes); a saved config without a newer key ran that key's old way."""
    current = tomllib.loads(to_toml(config))
    return [_label(section, key) for section in SCHEMA if (section in _RERUNNABLE) == rerunnable
            for key in SCHEMA[section]
            if (section, key) not in _IGNORED and _get(saved, section, key, saved=True) != _get(current, section, key)]
