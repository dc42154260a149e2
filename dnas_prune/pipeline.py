"""The whole recipe from one TOML file: pretrain -> search -> finalize -> finetune -> export -> report.

Each stage writes one output file atomically and is skipped when that file exists, so re-running the same
command after an interruption continues where it stopped; an interrupted training stage resumes from its
own trainer checkpoint. The resolved config is kept as ``RUN_DIR/config.toml`` and a re-run whose training
settings differ is refused, so finished stages are never silently mixed with a different recipe.

Paths written in the config file (``data.root``, ``pretrain.checkpoint``) are relative to that file;
``out`` and paths given with ``--set`` are relative to the working directory. Without ``data.root`` the data
is found as by every other command (``$DNAS_PRUNE_DATA``, else for CIFAR-10 the download cache).
``data.kind = "imagefolder"`` trains on an ImageNet-style ``train/`` + ``val/`` tree instead of CIFAR-10.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from . import stages
from .errors import DnasPruneError
from .io.checkpoint import atomic_write_text
from .io.export import FORMATS, SUFFIXES
from .io.pruned import load_pretrained, load_pruned_with_metadata
from .models import available_weights, create_model
from .search.pruner import BUDGET_FIELDS, SearchConfig, budget_fields
from .train.cifar import resolve_data_root
from .train.data import DATA_KINDS, TrainingData, load_dataset
from .train.imagefolder import IMAGE_SIZE
from .train.loop import TrainConfig, Trainer, epoch_note
from .train.progress import format_duration
from .train.recipes import (CLEAN_EPOCHS_PER, FINETUNE_RECIPE as FINETUNE_DEFAULTS, SEARCH_RECIPE as SEARCH_DEFAULTS,
                            TRAIN_RECIPE as TRAIN_DEFAULTS, seed_everything)

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
                   "round_to": int, "threads": int, "gate_lr": float,
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


class Pipeline:
    """One run directory and its config; :meth:`run` executes the stages that have no output yet."""

    def __init__(self, config: Config, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.out = Path(config[""]["out"])
        self.log = log
        self._data: tuple[TrainingData, str] | None = None
        self.dense_path = self.out / "pretrain" / "model.pt"
        self.search_dir = self.out / "search"
        self.pruned_path = self.out / "pruned.pt"
        self.finetuned_path = self.out / "finetune" / "pruned.pt"
        self.report_path = self.out / "report.json"

    # ----------------------------------------------------------------- helpers
    def data(self) -> tuple[TrainingData, str]:
        """The splits and the data root, loaded on first use only (a fully finished run never decodes)."""
        if self._data is None:
            d = self.config["data"]
            self.log(f"loading {d['kind']} data from {d['root'] or os.environ.get('DNAS_PRUNE_DATA') or 'the download cache'}")
            data, root = load_dataset(d["kind"], d["root"], val_size=d["val_size"], limit_train=d["limit_train"],
                                      seed=self.config[""]["seed"], image_size=d["image_size"], workers=d["workers"])
            self._data = data, str(root)
            self.log(f"data: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test images")
        return self._data

    def train_images(self) -> int | None:
        """How many training images the run uses, once the data is loaded (else None: nothing is loaded for it)."""
        return len(self._data[0].train) if self._data is not None else None

    def _data_root(self, finetuned_metadata: dict[str, Any]) -> str | None:
        """The data root the run resolved: the loaded one, else the one the finetuned model file records, else
        ``data.root`` / ``$DNAS_PRUNE_DATA`` / the download cache, resolved as :func:`load_dataset` does."""
        if self._data is not None:
            return self._data[1]
        if finetuned_metadata.get("dataset"):
            return str(finetuned_metadata["dataset"])
        d = self.config["data"]
        chosen = d["root"] if d["root"] is not None else os.environ.get("DNAS_PRUNE_DATA")
        if chosen is not None:
            return str(Path(chosen).expanduser())
        try:
            return str(resolve_data_root(None, download=False)) if d["kind"] == "cifar" else None
        except DnasPruneError:
            return None

    def _check_run_dir(self) -> None:
        """Refuse to continue a run directory made with different settings for the stages already run."""
        saved_path = self.out / "config.toml"
        text = to_toml(self.config)
        if saved_path.is_file():
            saved = tomllib.loads(saved_path.read_text())
            current = tomllib.loads(text)
            differ = [_label(section, key) for section in SCHEMA if section not in _RERUNNABLE for key in SCHEMA[section]
                      if (section, key) not in _IGNORED
                      and _get(saved, section, key, saved=True) != _get(current, section, key)]
            if differ:
                raise DnasPruneError(f"{self.out} was started with different settings ({', '.join(differ)}); "
                                     "use another --out or restore them")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(text, saved_path)

    # ----------------------------------------------------------------- stages
    def pretrain(self) -> None:
        cfg, top = self.config["pretrain"], self.config[""]
        data, root = self.data()
        train_config = train_config_of(self.config, "pretrain")
        out = self.dense_path.parent
        name = self.config["model"]["name"]
        metadata = {"command": "run", "model": name, "data": root, "limit_train": self.config["data"]["limit_train"],
                    "val_size": self.config["data"]["val_size"]}
        seed_everything(top["seed"])
        source = cfg["checkpoint"] or cfg["weights"]
        if source is not None:
            model = load_pretrained(source, name, data.num_classes)
            metrics = stages.adopt(model, data, train_config, out, source=source, metadata=metadata)
        else:
            model = create_model(name, num_classes=data.num_classes, zero_init_residual=cfg["zero_init_residual"])
            _, metrics = stages.train(model, data, train_config, out, metadata=metadata,
                                      resume=(out / "train.pt").is_file(), tensorboard=top["tensorboard"],
                                      hparams={"model": name})
        self.log(f"dense test accuracy {metrics['test_acc']:.4f}")

    def search(self) -> None:
        data, _ = self.data()
        model = load_pretrained(self.dense_path, None, data.num_classes)
        seed_everything(self.config[""]["seed"])
        _, summary = stages.search(model, data, train_config_of(self.config, "search"), search_config_of(self.config),
                                   self.search_dir, resume=True, tensorboard=self.config[""]["tensorboard"],
                                   log=self.log)
        self.log(f"searched: {stages.search_line(summary)}")

    def finalize(self) -> None:
        stages.finalize(self.search_dir / "supernet.pt", self.pruned_path, round_to=self.config["finalize"]["round_to"],
                        tensorboard=self.config[""]["tensorboard"])

    def finetune(self) -> None:
        data, root = self.data()
        seed_everything(self.config[""]["seed"])
        train_config = train_config_of(self.config, "finetune")
        teacher = (load_pretrained(self.dense_path, None, data.num_classes) if train_config.distill_weight > 0
                   else None)
        _, metrics = stages.finetune(self.pruned_path, data, train_config, self.finetuned_path.parent, data_root=root,
                                     resume=True, teacher=teacher, tensorboard=self.config[""]["tensorboard"])
        self.log(f"finetuned test accuracy {metrics['test_acc']:.4f}")

    def export_paths(self) -> list[tuple[str, Path]]:
        return [(f, self.out / "export" / f"model{SUFFIXES[f]}") for f in self.config["export"]["formats"]]

    def export(self) -> None:
        check = self.config["export"]["check"]
        for fmt, path in self.export_paths():
            if path.is_file():
                continue
            self.log(f"exporting {fmt} to {path}" + (" and checking it against the model" if check else ""))
            stages.export(self.finetuned_path, path, fmt, check=check)
            self.log(f"exported {fmt}")

    def report(self) -> None:
        _, metadata = load_pruned_with_metadata(self.finetuned_path)
        r = self.config["report"]
        # The report records the data the run used, also when $DNAS_PRUNE_DATA or the cache supplied it.
        shown = applicable(self.config)
        shown["data"]["root"] = self._data_root(metadata)
        stages.report(self.out, dense_path=self.dense_path, pruned_path=self.finetuned_path,
                      search_summary=json.loads((self.search_dir / "search.json").read_text()), config=shown,
                      config_toml=to_toml(shown), exports={f: str(p) for f, p in self.export_paths() if p.is_file()},
                      batch_sizes=r["batch_sizes"], max_seconds=r["max_seconds"], threads=r["threads"], log=self.log)

    # ----------------------------------------------------------------- driver
    def outputs(self) -> dict[str, list[Path]]:
        """The files whose existence marks each stage as done."""
        return {
            "pretrain": [self.dense_path],
            "search": [self.search_dir / "search.json"],
            "finalize": [self.pruned_path],
            "finetune": [self.finetuned_path],
            "export": [p for _, p in self.export_paths()],
            "report": [self.report_path],
        }

    def run(self) -> dict[str, str]:
        """Run every unfinished stage in order; returns ``{stage: "ran" | "skipped"}``. Prints one line as each
        stage starts and ends, with its place (i/N) and the whole run's ETA; every epoch line carries the ETA."""
        self._check_run_dir()
        status: dict[str, str] = {}
        stages = self.outputs()
        pending = [stage for stage, outputs in stages.items() if not all(p.is_file() for p in outputs)]
        clock = RunClock(self, pending)
        with epoch_note(clock.note):
            for i, (stage, outputs) in enumerate(stages.items(), 1):
                place = f"{i}/{len(stages)}"
                if stage not in pending:
                    status[stage] = "skipped"
                    why = f"{outputs[0]} exists" if outputs else "no export formats"
                    self.log(f"[{stage}] skipped ({place}): {why}")
                    continue
                clock.start(stage, place)
                self.log(f"[{stage}] running ({place}){clock.plan(stage)}; {clock.eta()}")
                start = time.perf_counter()
                getattr(self, stage)()
                status[stage] = "ran"
                clock.finish(stage)
                left = f"; {clock.eta()}" if stage != pending[-1] else ""
                self.log(f"[{stage}] done in {time.perf_counter() - start:.1f}s ({place}){left}")
        return status


class RunClock:
    """The whole run's ETA, from the throughput measured so far: each training stage's remaining epochs at that
    stage's measured speed (the latest measured speed for stages not yet started), evaluation included, plus
    rough allowances for the stages that do not train (finalize, export, report)."""

    def __init__(self, pipeline: Pipeline, pending: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.pending = list(pending)  # stages still to run, the current one included
        self.stage: str | None = None
        self.place = ""
        self.seconds_per_image: dict[str, float] = {}  # wall seconds per training image, per stage
        self.latest: float | None = None
        self.epochs_done = 0

    def _epochs(self, stage: str) -> int:
        config = self.pipeline.config
        if stage == "pretrain" and (config["pretrain"]["checkpoint"] or config["pretrain"]["weights"]) is not None:
            return 0
        return config[stage]["epochs"] if stage in ("pretrain", "search", "finetune") else 0

    def _fixed_seconds(self, stage: str) -> float:
        """Allowances for stages that do not train (measured magnitudes on a 2-core CPU, not predictions)."""
        config = self.pipeline.config
        if stage == "export":
            return 10.0 * len(config["export"]["formats"])
        if stage == "report":  # compare_latency: 2 models x 2 layouts x max_seconds per batch size, then figures
            return 4 * config["report"]["max_seconds"] * len(config["report"]["batch_sizes"]) + 5.0
        return 2.0 if stage == "finalize" else 0.0

    def left(self) -> float | None:
        """Seconds left in the run, or None before any epoch has been measured."""
        images = self.pipeline.train_images()
        if self.latest is None or images is None:
            return None
        total = 0.0
        for stage in self.pending:
            epochs = self._epochs(stage) - (self.epochs_done if stage == self.stage else 0)
            total += max(0, epochs) * images * self.seconds_per_image.get(stage, self.latest) + self._fixed_seconds(stage)
        return total

    def eta(self) -> str:
        left = self.left()
        if left is None:
            return "run ETA after the first epoch"
        return f"~{format_duration(left)} left in the run (at {1 / self.latest:.0f} img/s measured so far)"

    def plan(self, stage: str) -> str:
        images, epochs = self.pipeline.train_images(), self._epochs(stage)
        if not epochs:
            return ""
        return f": {epochs} epochs" + (f" x {images} images" if images else "")

    def start(self, stage: str, place: str) -> None:
        self.stage, self.place, self.epochs_done = stage, place, 0

    def finish(self, stage: str) -> None:
        self.pending.remove(stage)
        self.stage = None

    def note(self, trainer: Trainer, metrics: dict) -> str:
        """Appended to each epoch's line: measures the epoch (training and evaluation) and gives the run's ETA."""
        if self.stage is None:
            return ""
        seconds = metrics.get("epoch_time", 0.0) + trainer.last_eval_time
        images = len(trainer.data.train)
        if seconds > 0 and images:
            self.seconds_per_image[self.stage] = self.latest = seconds / images
        self.epochs_done = trainer.epoch
        left = self.left()
        return f" | run {self.place} {self.stage}" + (f", ~{format_duration(left)} left" if left is not None else "")
