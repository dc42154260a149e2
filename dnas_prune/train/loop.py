"""The training loop shared by dense training, the supernet search and finetuning.

One :class:`Trainer` owns the optimizer, schedule, checkpoints and metrics, and runs under the machine's policy
(precision, memory format: :mod:`dnas_prune.device.policy`). The search, monitoring and tests plug in as
:class:`TrainHooks` callbacks instead of copying the loop. A checkpoint holds everything needed to resume
bit-for-bit (on CPU) and loads with ``weights_only=True``.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..device.allocator import keep_freed_memory
from ..device.policy import (MEMORY_FORMAT_CHOICES, PRECISIONS, autocast, choose_memory_format, memory_format_name,
                             process_rank, resolve_precision)
from ..errors import CheckpointError, DnasPruneError, TrainingDiverged
from ..io.checkpoint import atomic_torch_save, atomic_write_json, safe_load
from .cifar import FLIP_MODES
from .data import Batches, DataSplit, TrainingData
from .distill import distillation_loss
from .progress import Progress

CHECKPOINT_FORMAT = 1


# What a resume must keep (the rest, e.g. epochs, device, progress, may change): these make the run another one.
RESUME_FIXED = ("batch_size", "lr", "momentum", "nesterov", "weight_decay", "label_smoothing", "distill_weight",
                "distill_temperature", "flip", "crop_padding", "ema_decay", "schedule", "warmup_epochs",
                "schedule_start", "seed")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256  # global, over all ranks
    lr: float = 0.3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    distill_weight: float = 0.0  # > 0: the loss mixes in distillation from a teacher (the dense parent), see distill.py
    distill_temperature: float = 4.0
    flip: str = "random"  # "alternate": each image mirrored in exactly one of every two epochs (CIFAR data)
    crop_padding: int = 4  # CIFAR random crops: zero-pad by this many pixels, crop back (0: no translation)
    clean_epochs: int = 0  # the last N epochs see un-augmented images (no crop, no flip), as the test split does
    ema_decay: float = 0.0  # > 0: evaluate and return an exponential moving average of the weights, updated every step
    schedule: str = "onecycle"  # "onecycle": linear up, linear down to 0; "cosine": linear warmup, cosine to 0
    warmup_epochs: float = 3.0
    # One schedule over several runs (a search, then its finetune): the schedule spans ``schedule_epochs`` epochs
    # (0: this run's ``epochs``) and this run starts ``schedule_start`` epochs into it.
    schedule_epochs: float = 0.0
    schedule_start: float = 0.0
    device: str = "cpu"
    precision: str = "auto"  # "bf16" | "fp32" | "auto": bf16 where the hardware runs it natively (resolve_precision)
    memory_format: str = "auto"  # "auto" | "channels_last" | "nchw" ("contiguous" is read as "nchw")
    seed: int = 0
    test_every_epoch: bool = False  # the test split is for reporting: by default only after the last epoch
    sync_bn: bool = False  # SyncBatchNorm across DDP ranks (CUDA only: torch has no CPU kernel for it)
    progress: bool = True

    def __post_init__(self) -> None:
        self.memory_format = memory_format_name(self.memory_format)
        choices = {"schedule": ("onecycle", "cosine"), "precision": PRECISIONS, "flip": FLIP_MODES,
                   "memory_format": MEMORY_FORMAT_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DnasPruneError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        # The basic quantities first: a bad epoch count must not surface as a complaint about clean_epochs.
        for name, value in (("epochs", self.epochs), ("batch size", self.batch_size), ("lr", self.lr)):
            if not value > 0:
                raise DnasPruneError(f"{name} must be positive, got {value}")
        if self.schedule_epochs < 0 or self.schedule_start < 0:
            raise DnasPruneError(f"schedule_epochs (--schedule-epochs) and schedule_start (--schedule-start) must be "
                                 f">= 0, got {self.schedule_epochs} and {self.schedule_start}")
        if self.schedule_start + self.epochs > (self.schedule_epochs or self.epochs) + 1e-9:
            raise DnasPruneError(f"this run's epochs must lie inside its lr schedule: schedule_start (--schedule-start) "
                                 f"{self.schedule_start} + epochs {self.epochs} > {self.schedule_epochs or self.epochs}; "
                                 "set schedule_epochs (--schedule-epochs) to the whole schedule's length")
        if self.crop_padding < 0:
            raise DnasPruneError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if not 0 <= self.clean_epochs <= self.epochs:
            raise DnasPruneError(f"clean_epochs must be in [0, epochs={self.epochs}], got {self.clean_epochs}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise DnasPruneError(f"weight_decay must be >= 0 and label_smoothing in [0, 1), got {self.weight_decay}, "
                                 f"{self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            raise DnasPruneError(f"ema_decay must be in [0, 1) (0: no averaging), got {self.ema_decay}")
        if not 0 <= self.distill_weight <= 1 or not self.distill_temperature > 0:
            raise DnasPruneError(f"distill_weight must be in [0, 1] and distill_temperature > 0, got "
                                 f"{self.distill_weight}, {self.distill_temperature}")


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model`` with per-step ``decay``, over its BN running statistics too, so the
    average is a model that evaluates as it stands. Its first update copies the weights."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def lr_factor(step: int, total: int, warmup: int, schedule: str, start: int = 0) -> float:
    """Multiplier of the peak lr at iteration ``step`` of a run that begins ``start`` iterations into a schedule of
    ``total`` (a module-level function so schedulers pickle cleanly)."""
    step += start
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


class TrainHooks:
    """A callback of the training loop: the search, monitoring and tests plug in here instead of copying the loop.
    Default: no-ops. A :class:`Trainer` takes several, run in the order given (see :class:`Callbacks`)."""

    def excluded_parameters(self) -> list[nn.Parameter]:
        """Parameters kept out of the SGD weight groups (e.g. gates with their own optimizer)."""
        return []

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        pass

    def loss(self, trainer: "Trainer", ce: Tensor, logits: Tensor, step: int) -> Tensor:
        return ce

    def before_optimizer_step(self, trainer: "Trainer") -> None:
        """Called after backward, before the weight update (gradients are in place)."""

    def after_step(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        pass

    def before_evaluate(self, trainer: "Trainer", epoch: int) -> None:
        """Called after an epoch's training, before its val/test evaluation (e.g. to fit BN statistics to the
        network that eval mode computes)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Callbacks(TrainHooks):
    """Several callbacks as one, each hook called on each in order: so the search's callback has stepped the
    gates before a monitor after it logs them. ``loss`` is chained (each gets the loss the one before returned);
    the checkpoint keeps one dict of all their states, so their keys must differ."""

    def __init__(self, callbacks: Sequence[TrainHooks] = ()) -> None:
        self.callbacks = list(callbacks)

    def excluded_parameters(self) -> list[nn.Parameter]:
        return [p for callback in self.callbacks for p in callback.excluded_parameters()]

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(trainer, epoch)

    def loss(self, trainer: "Trainer", ce: Tensor, logits: Tensor, step: int) -> Tensor:
        for callback in self.callbacks:
            ce = callback.loss(trainer, ce, logits, step)
        return ce

    def before_optimizer_step(self, trainer: "Trainer") -> None:
        for callback in self.callbacks:
            callback.before_optimizer_step(trainer)

    def after_step(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        for callback in self.callbacks:
            callback.after_step(trainer, step, metrics)

    def before_evaluate(self, trainer: "Trainer", epoch: int) -> None:
        for callback in self.callbacks:
            callback.before_evaluate(trainer, epoch)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(trainer, epoch, metrics)

    def state_dict(self) -> dict:
        state: dict = {}
        for callback in self.callbacks:
            own = callback.state_dict()
            clash = state.keys() & own.keys()
            if clash:
                raise DnasPruneError(f"two training callbacks keep state under {sorted(clash)[0]!r}")
            state.update(own)
        return state

    def load_state_dict(self, state: dict) -> None:
        for callback in self.callbacks:
            callback.load_state_dict(state)


PROGRESS_EVERY = 0.25  # without a terminal, a progress line at every quarter of an epoch
# Called after each epoch on the main rank; its text is appended to the epoch's line (e.g. the whole run's ETA).
_EPOCH_NOTE: ContextVar[Callable[["Trainer", dict], str] | None] = ContextVar("dnas_prune_epoch_note", default=None)


@contextmanager
def epoch_note(note: Callable[["Trainer", dict], str]) -> Iterator[None]:
    """Within this block every :class:`Trainer` appends ``note(trainer, metrics)`` to its per-epoch line; the
    pipeline uses it to show the whole run's ETA under trainers it does not construct itself (the search's)."""
    token = _EPOCH_NOTE.set(note)
    try:
        yield
    finally:
        _EPOCH_NOTE.reset(token)


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """SGD training with per-iteration schedule, bf16 autocast where the hardware has it, atomic per-epoch
    checkpoints and exact resume."""

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        callbacks: Sequence[TrainHooks] = (),
        checkpoint_name: str = "train.pt",
        metadata: dict | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.callbacks = Callbacks(callbacks)
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / checkpoint_name
        self.metadata = metadata or {}
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DnasPruneError("--device cuda was requested but CUDA is not available")
        self.precision = resolve_precision(config.precision, self.device)  # a resumed run keeps its checkpoint's
        self.rank, self.world_size = process_rank()
        self.is_main = self.rank == 0
        if config.batch_size % self.world_size:
            raise DnasPruneError(f"batch size {config.batch_size} is not divisible by {self.world_size} processes")
        for role, net in (("model", model), ("teacher", teacher if config.distill_weight > 0 else None)):
            classes = next((m.out_features for m in reversed(list(net.modules())) if isinstance(m, nn.Linear)),
                           None) if net is not None else None
            if classes is not None and classes != data.num_classes:  # else labels would be silently misread
                raise DnasPruneError(f"the {role} predicts {classes} classes and the data has {data.num_classes} "
                                     f"({', '.join(data.classes[:3])}{', ...' if data.num_classes > 3 else ''}); "
                                     "use a model trained on these classes")
        self.model = model.to(self.device)
        if config.distill_weight > 0 and teacher is None:
            raise DnasPruneError("distill_weight > 0 needs a teacher (the dense parent): dense training has none; "
                                 "distill when searching or finetuning (finetune --teacher DENSE.pt)")
        self.teacher = None
        if config.distill_weight > 0:  # frozen, in eval mode: its outputs are targets, not something to train
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.ddp_model: nn.Module = self.model  # wrapped by fit() once the memory format is fixed
        self.steps_per_epoch = len(data.train) // config.batch_size
        if self.steps_per_epoch < 1:
            raise DnasPruneError(f"{len(data.train)} training images do not fill one batch of {config.batch_size}")
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov)
        total = round((config.schedule_epochs or config.epochs) * self.steps_per_epoch)
        warmup = min(total, round(config.warmup_epochs * self.steps_per_epoch))
        if 0 < total <= warmup:
            warnings.warn(f"the lr warm-up ({config.warmup_epochs:g} epochs) spans the whole schedule "
                          f"({total} steps): the lr ends at its peak; set warmup_epochs (--warmup-epochs) below the "
                          "epochs", stacklevel=2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, total=total, warmup=warmup, schedule=config.schedule,
                                    start=round(config.schedule_start * self.steps_per_epoch)))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.ema = weight_average(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.history: list[dict] = []
        self.channels_last: bool | None = None
        self.last_eval_time = 0.0  # seconds the last epoch's evaluation took (BN refits by hooks included)

    @property
    def final_model(self) -> nn.Module:
        """The model that evaluation reports and commands save: the weight average if ``ema_decay`` > 0."""
        return self.ema.module if self.ema is not None else self.model

    def _param_groups(self) -> list[dict]:
        """Weight decay on conv/linear weights only; BN parameters and biases (ndim <= 1) are not decayed."""
        excluded = {id(p) for p in self.callbacks.excluded_parameters()}
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad and id(p) not in excluded:
                (decay if p.ndim > 1 else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def autocast(self) -> torch.autocast:
        return autocast(self.device, self.precision)

    def _choose_memory_format(self) -> bool:
        """channels_last or not, the same choice on every rank (see :func:`~dnas_prune.device.policy.choose_memory_format`)."""
        local = min(64, self.config.batch_size // self.world_size)  # enough to rank the formats, cheap for big models
        return choose_memory_format(self.model, self.data.train.input_size, self.config.memory_format, local,
                                    self.device, self.precision, announce=self.is_main)

    def _batches(self, split: DataSplit, train: bool, epoch: int = 0, batch_size: int | None = None) -> Batches:
        cfg = self.config
        clean = train and epoch >= cfg.epochs - cfg.clean_epochs
        return split.batches(batch_size or cfg.batch_size, train=train, seed=cfg.seed, epoch=epoch,
                             device=self.device, channels_last=bool(self.channels_last), rank=self.rank,
                             world_size=self.world_size, flip="none" if clean else cfg.flip,
                             crop_padding=0 if clean else cfg.crop_padding)

    def _all_reduce(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    @torch.no_grad()
    def evaluate(self, split: DataSplit, model: nn.Module | None = None, desc: str = "") -> dict:
        """Accuracy and (unsmoothed) cross-entropy on a split, in eval mode under the training precision; of
        :attr:`final_model` unless ``model`` is given. ``desc`` names the split in progress output."""
        desc = desc or f"{len(split)} images"
        model = model or self.final_model
        if self.channels_last is None:
            self.channels_last = self._choose_memory_format()
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        eval_batch = max(self.world_size, 2 * self.config.batch_size // self.world_size * self.world_size)
        stream = self._batches(split, train=False, batch_size=eval_batch)
        # A bar on a terminal; elsewhere a line only when an evaluation runs past PLAIN_SECONDS.
        with Progress(len(stream), f"  evaluating {desc}", unit="batches",
                      enabled=self.config.progress and self.is_main) as progress:
            for x, y in stream:
                with self.autocast():
                    logits = model(x)
                loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
                count += len(y)
                progress.update()
        model.train(was_training)
        loss_total, correct_total, count_total = self._all_reduce([loss_sum.item(), float(correct.item()), float(count)])
        if count_total == 0:
            return {"acc": float("nan"), "loss": float("nan")}
        return {"acc": correct_total / count_total, "loss": loss_total / count_total}

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training split; returns loss, accuracy, throughput and the last lr."""
        cfg = self.config
        self.ddp_model.train()
        stream = self._batches(self.data.train, train=True, epoch=epoch)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        seen = 0
        # A tqdm bar on a terminal; in a log, a plain line at every quarter of the epoch (and every 10 s).
        bar = Progress(len(stream), f"epoch {epoch + 1}/{cfg.epochs}", unit="steps",
                       enabled=cfg.progress and self.is_main, every=PROGRESS_EVERY)
        start = time.perf_counter()
        for x, y in stream:
            with self.autocast():
                logits = self.ddp_model(x)
                ce = self.criterion(logits.float(), y)
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(x)
                    ce = distillation_loss(logits, teacher_logits, ce, cfg.distill_weight, cfg.distill_temperature)
            loss = self.callbacks.loss(self, ce, logits, self.global_step)
            if not torch.isfinite(loss.detach()).item():
                self._diverged(loss.item())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.callbacks.before_optimizer_step(self)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += ce.detach().double().cpu() * len(y)
            correct += (logits.detach().argmax(1) == y).sum().cpu()
            seen += len(y)
            self.global_step += 1
            step_metrics = {"loss": ce.detach(), "lr": self.scheduler.get_last_lr()[0]}
            self.callbacks.after_step(self, self.global_step, step_metrics)
            if bar.enabled:  # CPU tensors: reading them costs no device sync
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                **{"img/s": f"{seen * self.world_size / elapsed:.0f}"})
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        loss_total, correct_total, seen_total = self._all_reduce([loss_sum.item(), float(correct.item()), float(seen)])
        return {"train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total,
                "img_per_s": seen_total / elapsed, "epoch_time": elapsed, "lr": self.scheduler.get_last_lr()[0]}

    def _diverged(self, value: float) -> None:
        last = (f"last good checkpoint: {self.checkpoint_path} (epoch {self.epoch})"
                if self.epoch > 0 and self.checkpoint_path.is_file() else "no checkpoint was written yet")
        raise TrainingDiverged(f"loss became {value} at epoch {self.epoch + 1}, step {self.global_step}; {last}; "
                               "lower --lr or check the data")

    def fit(self, resume: bool = False, evaluate_last: bool = True) -> dict:
        """Train until ``config.epochs`` epochs are done (continuing from the checkpoint if ``resume``).
        ``evaluate_last=False`` leaves the last epoch unevaluated, for a caller that changes the model and evaluates
        it afterwards (a search projects its gates first)."""
        cfg = self.config
        keep_freed_memory()  # steps stop page-faulting their activations afresh (see device/allocator.py)
        if resume:
            self.load_checkpoint(self.checkpoint_path)
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        if self.channels_last is None:
            self.channels_last = self._choose_memory_format()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        if self.world_size > 1 and self.ddp_model is self.model:  # DDP's gradient buckets follow the layout
            if cfg.sync_bn:
                if self.device.type != "cuda":
                    raise DnasPruneError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            self.callbacks.on_epoch_start(self, epoch)
            metrics = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            last = epoch + 1 == cfg.epochs
            testing = (cfg.test_every_epoch or last) and (evaluate_last or not last)
            validating = len(self.data.val) > 0 and (evaluate_last or not last)
            eval_start = time.perf_counter()
            if validating or testing:
                self.callbacks.before_evaluate(self, epoch)
            if validating:
                val = self.evaluate(self.data.val, desc="val")
                metrics.update(val_acc=val["acc"], val_loss=val["loss"])
                if self.ema is not None:  # side by side, so the average's effect is measured in the same run
                    metrics["raw_val_acc"] = self.evaluate(self.data.val, self.model, desc="val (live weights)")["acc"]
            if testing:
                test = self.evaluate(self.data.test, desc="test")
                metrics.update(test_acc=test["acc"], test_loss=test["loss"])
                if self.ema is not None:
                    metrics["raw_test_acc"] = self.evaluate(self.data.test, self.model, desc="test (live weights)")["acc"]
            self.last_eval_time = time.perf_counter() - eval_start  # not in metrics: those must resume bit-for-bit
            self.callbacks.on_epoch_end(self, epoch, metrics)
            self.epoch = epoch + 1
            self.history.append(metrics)
            if self.is_main:
                self.save_checkpoint()
                atomic_write_json({"config": asdict(cfg), "precision": self.precision, "metadata": self.metadata,
                                   "history": self.history},
                             self.out_dir / "metrics.json")
                note = _EPOCH_NOTE.get()
                print(self._summary(metrics) + (note(self, metrics) if note else ""), flush=True)
        return dict(self.history[-1]) if self.history else {}

    def _summary(self, m: dict) -> str:
        val = f" val {m['val_acc']:.4f}" if "val_acc" in m else ""
        test = f" test {m['test_acc']:.4f}" if "test_acc" in m else ""
        return (f"epoch {m['epoch']}/{self.config.epochs}: loss {m['train_loss']:.4f} train {m['train_acc']:.4f}"
                f"{val}{test} | {m['img_per_s']:.0f} img/s, {m['epoch_time']:.1f}s")

    def save_checkpoint(self) -> Path:
        state = {
            "format": CHECKPOINT_FORMAT,
            "kind": "dnas_prune.trainer",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": _rng_state(),
            "hooks": self.callbacks.state_dict(),  # the key of checkpoint format 1
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "config": asdict(self.config),
            "metadata": self.metadata,
            "history": self.history,
            "channels_last": bool(self.channels_last),
            "precision": self.precision,
            "data": self._data_shape(),
        }
        return atomic_torch_save(state, self.checkpoint_path)

    def _data_shape(self) -> dict[str, list[int]]:
        """What a resume must find again of the data: split sizes (--val-size, --limit-train) and input size."""
        return {"sizes": [len(self.data.train), len(self.data.val), len(self.data.test)],
                "input_size": list(self.data.train.input_size)}

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        state = safe_load(path, "a dnas_prune trainer checkpoint")
        if not isinstance(state, dict) or state.get("kind") != "dnas_prune.trainer":
            raise CheckpointError(f"{path} is not a dnas_prune trainer checkpoint")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} has checkpoint format {state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")
        if (self.ema is not None) != (state.get("ema") is not None):
            said = "with" if state.get("ema") is not None else "without"
            raise CheckpointError(f"{path} was trained {said} a weight average (--ema-decay); resume it {said} one")
        saved = state.get("config") or {}
        changed = [f"{name} {saved[name]!r} (now {getattr(self.config, name)!r})" for name in RESUME_FIXED
                   if name in saved and saved[name] != getattr(self.config, name)]
        data, now = state.get("data"), self._data_shape()  # data: absent from checkpoints of older versions
        if data is not None and data != now:
            changed.append(f"data of {data['sizes']} train/val/test images at {data['input_size']} (now "
                           f"{now['sizes']} at {now['input_size']}: --val-size, --limit-train or --image-size)")
        if changed:
            raise CheckpointError(f"{path} was trained with {', '.join(changed)}: resume with its settings (more "
                                  "epochs may be given), or start afresh in another --out")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path} does not match this model/optimizer: {str(exc).splitlines()[0]}") from None
        self.callbacks.load_state_dict(state["hooks"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.history = list(state["history"])
        self.channels_last = state["channels_last"]
        if self.config.precision == "auto":
            self.precision = state.get("precision", self.precision)
        _set_rng_state(state["rng"])
