"""The whole recipe from one TOML file: pretrain -> search -> finalize -> finetune -> export -> report.

Each stage writes one output file atomically and is skipped when that file exists, so re-running the same
command after an interruption continues where it stopped; an interrupted training stage resumes from its
own trainer checkpoint. The resolved config (:mod:`~dnas_prune.config`) is kept as ``RUN_DIR/config.toml`` and a
re-run whose training settings differ is refused, so finished stages are never silently mixed with a different
recipe.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import stages
from .config import Config, applicable, changed_settings, search_config_of, to_toml, tomllib, train_config_of
from .errors import DnasPruneError
from .io.checkpoint import atomic_write_text, check_writable_dir
from .io.export import SUFFIXES
from .io.pruned import load_pretrained, load_pruned_with_metadata
from .models import create_model
from .train.cifar import resolve_data_root
from .train.data import TrainingData, load_dataset
from .train.loop import Trainer, epoch_note
from .train.progress import format_duration
from .train.recipes import seed_everything


class Pipeline:
    """One run directory and its config; :meth:`run` executes the stages that have no output yet."""

    def __init__(self, config: Config, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.out = Path(config[""]["out"])
        self.log = log
        self._data: tuple[TrainingData, str] | None = None
        self.dense_path = self.out / "pretrain" / "model.pt"
        self.search_dir = self.out / "search"
        self.pruned_path = self.search_dir / "finalized.pt"  # before finetuning; the model to ship is finetuned_path
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

    def _check_run_dir(self) -> list[str]:
        """Refuse to continue a run directory made with different settings for the stages already run; returns the
        changed export and report settings, whose stages the run then redoes (the report shows them)."""
        saved_path = self.out / "config.toml"
        text = to_toml(self.config)
        # settings hold once a stage has written anything: a run that failed before (a wrong data.root) is not locked
        started = self.out.is_dir() and any(p.name != saved_path.name for p in self.out.iterdir())
        redo = []
        if saved_path.is_file() and started:
            saved = tomllib.loads(saved_path.read_text())
            differ = changed_settings(saved, self.config)
            if differ:
                raise DnasPruneError(f"{self.out} was started with different settings ({', '.join(differ)}); "
                                     "use another --out or restore them")
            redo = changed_settings(saved, self.config, rerunnable=True)
        check_writable_dir(self.out)
        atomic_write_text(text, saved_path)
        return redo

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
        redo = self._check_run_dir()
        status: dict[str, str] = {}
        stages = self.outputs()
        pending = [stage for stage, outputs in stages.items() if not all(p.is_file() for p in outputs)
                   or (stage == "report" and redo)]  # a new export is made by its missing file
        if redo:
            self.log(f"changed since the last run: {', '.join(redo)}; the report is made again")
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
