"""TensorBoard monitoring of train, search and finetune runs, attached from the outside.

:class:`MonitorHooks` is one callback of a :class:`~dnas_prune.train.loop.Trainer` among others, so the
training and search code never depend on this module. It logs what the run computed (the loss, the epoch's
metrics, and for a search the budget numbers of its :class:`~dnas_prune.search.pruner.Pruner`), never its
own version of them, and writes to ``RUN_DIR/tb`` on rank 0 only. Logging is paced to stay well under 2 % of step time: scalars
every ``scalar_every`` steps (the loss is summed on-device in between, so there is one host sync per
interval), gate histograms every ``histogram_every`` steps, and figures once per epoch. The last step of
every epoch also logs scalars and histograms, so short runs still show a point per epoch. The figures (gate
heatmap, widths) are matplotlib figures logged with ``add_figure``, drawn with the report's width chart so the
live view and the final report read the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from ..finalize import finalize
from ..models import spec_of
from ..models.cost import count_cost
from ..search.pruner import Pruner
from ..search.supernet import Supernet
from ..train.loop import Trainer, TrainHooks
from .report import WidthBar, widths_figure
from .summary import width_table

SCALAR_EVERY = 20
HISTOGRAM_EVERY = 200
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)

_EPOCH_SCALARS = {"train_acc": "acc/train", "val_acc": "acc/val", "test_acc": "acc/test",
                  "train_loss": "loss/train_epoch", "val_loss": "loss/val", "test_loss": "loss/test"}


# ---------------------------------------------------------------------------------------------- gate state
def stage_channels(net: Supernet, widths: dict[str, int]) -> dict[str, int]:
    """``{"layer2.stream": w, "layer2.inner": sum of the stage's kept inner channels, ...}`` (and ``stem``) from the
    widths of :meth:`~dnas_prune.search.supernet.Supernet.decisions`."""
    result = {}
    for name in net.channel_groups:
        info = net.groups[name]
        key = name if info.kind == "stream" else f"layer{info.stage}.inner"
        result[key] = result.get(key, 0) + widths[name]
    return result


def architecture_table(net: Supernet) -> str:
    """Dense vs finalized widths (Markdown) of the supernet's current hard state; ``net`` is not modified."""
    pruned = finalize(net)
    return width_table(spec_of(net.model), spec_of(pruned), net.dense_cost, count_cost(pruned, net.input_size))


# ---------------------------------------------------------------------------------------------- figures
def width_bars(net: Supernet) -> list[WidthBar]:
    """The widths finalization would keep now as bars of :func:`~dnas_prune.report.report.widths_figure`."""
    decided = net.decisions()
    owner = {group: info.name for info in net.blocks for group in info.inner}
    return [WidthBar(name, net.groups[name].stage, net.groups[name].kind == "stream", net.groups[name].size,
                     decided.widths[name], name in owner and not decided.blocks[owner[name]])
            for name in net.channel_groups]


def width_chart(net: Supernet) -> Figure:
    """Kept vs dense width per channel group as finalization would keep the current gates."""
    return widths_figure(width_bars(net), "Widths per block and stage: current hard gates vs dense")


def gate_heatmap(net: Supernet) -> Figure:
    """P(open) per channel: one row per gated channel group (network order, stages split by white lines), one
    column per channel, grey where a group has no such channel. A narrow column on the left shows, for an inner
    group, the P(open) of its block's gate."""
    probs = {name: p.float().cpu().numpy() for name, p in net.gate_probabilities().items()}
    rows = [name for name in net.channel_groups if name in probs]
    fig = Figure(figsize=(8.0, min(14.0, max(3.5, 1.4 + 0.2 * len(rows)))), dpi=100, layout="constrained")
    title = "Gate P(open) per channel group"
    if not rows:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, "no gated channel groups", ha="center", va="center", transform=ax.transAxes)
        return fig
    block_gate = {group: info.gate for info in net.blocks for group in info.inner}
    grid = np.full((len(rows), max(probs[name].size for name in rows)), np.nan)
    blocks = np.full((len(rows), 1), np.nan)
    for r, name in enumerate(rows):
        grid[r, :probs[name].size] = probs[name]
        if block_gate.get(name) in probs:
            blocks[r, 0] = probs[block_gate[name]].item()
    has_blocks = not np.isnan(blocks).all()
    if has_blocks:
        block_ax, ax = fig.subplots(1, 2, sharey=True, width_ratios=[1, 30])
    else:
        block_ax, ax = None, fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
    style = {"aspect": "auto", "interpolation": "nearest", "cmap": cmap, "vmin": 0.0, "vmax": 1.0}
    image = ax.imshow(grid, **style)
    label_ax = ax
    if block_ax is not None:
        block_ax.imshow(blocks, **style)
        block_ax.set_xticks([0], ["block"], rotation=90, fontsize=8)
        label_ax = block_ax
    label_ax.set_yticks(range(len(rows)), rows, fontsize=7 if len(rows) > 24 else 8)
    label_ax.set_ylabel("channel group")
    for r in range(1, len(rows)):
        if net.groups[rows[r]].stage != net.groups[rows[r - 1]].stage:
            for each in (ax, block_ax) if block_ax is not None else (ax,):
                each.axhline(r - 0.5, color="white", linewidth=1.5)
    ax.set_xlabel("channel index")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="P(open)", fraction=0.05, pad=0.02)
    return fig


# ---------------------------------------------------------------------------------------------- hooks
def _hparam(value: Any) -> bool | int | float | str:
    """add_hparams accepts only scalars and strings: lists, None and the like become their repr."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def flatten_config(**sections: Any) -> dict[str, bool | int | float | str]:
    """``{"train.lr": 0.05, "search.target": 0.5, ...}`` from dataclasses or dicts, for the HPARAMS tab."""
    flat = {}
    for prefix, section in sections.items():
        items = asdict(section) if is_dataclass(section) else dict(section)
        flat.update({f"{prefix}.{key}": _hparam(value) for key, value in items.items()})
    return flat


class MonitorHooks(TrainHooks):
    """Logs a run to TensorBoard (rank 0 only), as a callback after the others.

    In a search (its ``pruner`` given, or found among the trainer's callbacks) budget, gate and width panels are
    logged too: the budget from the Pruner's attributes and the search's epoch metrics. Call :meth:`close` when
    the run is over.
    """

    def __init__(self, log_dir: str | Path = "tb", *, pruner: Pruner | None = None,
                 scalar_every: int = SCALAR_EVERY, histogram_every: int = HISTOGRAM_EVERY) -> None:
        self.log_dir = Path(log_dir)
        self.pruner = pruner
        self.scalar_every = max(1, scalar_every)
        self.histogram_every = max(1, histogram_every)
        self.writer: SummaryWriter | None = None
        self.is_main = True
        self.step = 0  # last global step seen
        self._ce_sum: Tensor | float = 0.0
        self._ce_count = 0
        self._interval_start = time.perf_counter()
        self._interval_steps = 0

    @property
    def searching(self) -> bool:
        return self.pruner is not None

    def _open(self, trainer: Trainer | None) -> SummaryWriter | None:
        """The writer, created on first use on rank 0. A resumed run hides the events it will rewrite."""
        if trainer is not None:
            self.is_main = trainer.is_main
        if not self.is_main:
            return None
        if self.writer is None:
            purge = trainer.global_step + 1 if trainer is not None and trainer.global_step > 0 else None
            self.writer = SummaryWriter(str(self.log_dir), purge_step=purge, flush_secs=30)
            self.writer.add_custom_scalars(self._layout())
        return self.writer

    def _layout(self) -> dict:
        layout = {"accuracy": {
            "accuracy": ["Multiline", ["acc/train", "acc/val", "acc/test"]],
            "loss": ["Multiline", ["loss/ce", "loss/val"]],
            "throughput (img/s)": ["Multiline", ["throughput/img_per_s"]],
        }}
        if self.searching:
            metric = self.pruner.config.metric
            layout["budget"] = {
                f"{metric} ratio (target, hard)": ["Multiline", ["budget/target", f"budget/hard_{metric}_ratio"]],
                "hard cost ratios": ["Multiline", [f"budget/hard_{m}_ratio" for m in self.pruner.hard_ratios]],
                "expected ratio (per epoch)": ["Multiline", ["budget/expected_ratio"]],
                "logit offset": ["Multiline", ["budget/offset"]],
            }
            layout["gates"] = {
                "temperature": ["Multiline", ["gates/temperature"]],
                "open blocks": ["Multiline", ["blocks/open"]],
                "stream channels": ["Multiline", [r"channels/.*\.stream", "channels/stem"]],
                "inner channels": ["Multiline", [r"channels/.*\.inner"]],
                "learning rates": ["Multiline", ["lr/weights", "lr/gates"]],
            }
        return layout

    # ------------------------------------------------------------------ callbacks
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.pruner is None:  # a search's callback among the trainer's (the search stage passes it instead)
            found = (getattr(c, "pruner", None) for c in trainer.callbacks.callbacks)
            self.pruner = next((p for p in found if isinstance(p, Pruner)), None)
        self._open(trainer)
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    def after_step(self, trainer: Trainer, step: int, metrics: dict) -> None:
        self.step = step
        if self.writer is None:
            return
        self._ce_sum = self._ce_sum + metrics["loss"]
        self._ce_count += 1
        self._interval_steps += 1
        epoch_end = step % trainer.steps_per_epoch == 0
        if step % self.scalar_every == 0 or epoch_end:
            self._log_scalars(trainer, step)
        if self.searching and (step % self.histogram_every == 0 or epoch_end):
            self._log_histograms(step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict) -> None:
        if self.writer is None:
            return
        for key, tag in _EPOCH_SCALARS.items():
            if key in metrics:
                self.writer.add_scalar(tag, metrics[key], trainer.global_step)
        if "expected_ratio" in metrics:  # the search's callback put it there, before this one
            self.writer.add_scalar("budget/expected_ratio", metrics["expected_ratio"], trainer.global_step)
        if self.searching:
            self._log_images(trainer.global_step)
        self.writer.flush()

    # ------------------------------------------------------------------ logging
    def _log_scalars(self, trainer: Trainer, step: int) -> None:
        w = self.writer
        w.add_scalar("loss/ce", float(self._ce_sum) / self._ce_count, step)
        self._ce_sum, self._ce_count = 0.0, 0
        now = time.perf_counter()
        w.add_scalar("throughput/img_per_s", self._interval_steps * trainer.config.batch_size
                     / max(now - self._interval_start, 1e-9), step)
        self._interval_start, self._interval_steps = now, 0
        w.add_scalar("lr/weights", trainer.optimizer.param_groups[0]["lr"], step)
        if not self.searching:
            return
        pruner = self.pruner
        w.add_scalar("budget/offset", pruner.offset, step)
        w.add_scalar("budget/target", pruner.target, step)
        w.add_scalar("gates/temperature", pruner.temperature, step)
        w.add_scalar("lr/gates", pruner.gate_optimizer.param_groups[0]["lr"], step)
        self._log_hard_state(step)

    def _log_hard_state(self, step: int) -> None:
        """What finalization would keep right now: the Pruner's hard cost ratios, kept blocks and channels."""
        w = self.writer
        for metric, ratio in self.pruner.hard_ratios.items():
            w.add_scalar(f"budget/hard_{metric}_ratio", ratio, step)
        decided = self.pruner.net.decisions()
        w.add_scalar("blocks/open", decided.blocks_kept, step)
        for name, value in stage_channels(self.pruner.net, decided.widths).items():
            w.add_scalar(f"channels/{name}", value, step)

    def _log_histograms(self, step: int) -> None:
        net = self.pruner.net
        blocks = []
        for name, p in net.gate_probabilities().items():
            if net.groups[name].kind == "block":
                blocks.append(p.reshape(()))
            else:
                self.writer.add_histogram(f"gate_prob/{name}", p.float().cpu(), step, bins=HISTOGRAM_BINS)
        if blocks:
            self.writer.add_histogram("gate_prob/blocks", torch.stack(blocks).float().cpu(), step, bins=HISTOGRAM_BINS)

    def _log_images(self, step: int) -> None:
        self.writer.add_figure("gates/heatmap", gate_heatmap(self.pruner.net), step)
        self.writer.add_figure("architecture/widths", width_chart(self.pruner.net), step)

    # ------------------------------------------------------------------ end of run
    def log_search_summary(self, summary: dict) -> None:
        """After :func:`~dnas_prune.stages.search`: the projected state one step past training (scalars,
        histograms, images), the architecture table it finalizes to, and config + final metrics as hparams."""
        if not self.searching or self._open(None) is None:
            return
        step = self.step + 1
        self._log_hard_state(step)
        self._log_histograms(step)
        self._log_images(step)
        self.writer.add_text("architecture/search", architecture_table(self.pruner.net), step)
        final, accuracy = summary["final"], summary["accuracy"]
        for split in ("val", "test"):  # the last epoch's point: the search evaluates it after the projection
            if math.isfinite(accuracy[split]):
                self.writer.add_scalar(f"acc/{split}", accuracy[split], step)
        self.log_hparams(
            flatten_config(train=summary["config"]["train"], search=summary["config"]["search"]),
            {"macs_ratio": final["macs_ratio"], "params_ratio": final["params_ratio"], "val_acc": accuracy["val"],
             "test_acc": accuracy["test"], "blocks_open": summary["gates"]["blocks_open"]},
        )

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """One HPARAMS-tab session (written by TensorBoard to the ``hparams`` subdirectory)."""
        if self._open(None) is None:
            return
        self.writer.add_hparams({k: _hparam(v) for k, v in hparams.items()},
                                {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None},
                                run_name="hparams", global_step=self.step)

    def log_training_hparams(self, config: Any, extra: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The HPARAMS session of a train/finetune run: its TrainConfig, ``extra`` keys and final accuracies."""
        self.log_hparams({**flatten_config(train=config), **extra},
                         {k: metrics.get(k) for k in ("train_acc", "val_acc", "test_acc")})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def log_text(log_dir: str | Path, tag: str, text: str, step: int = 0) -> None:
    """One Markdown text entry in ``log_dir`` (e.g. the finalized architecture next to a search's logs)."""
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_text(tag, text, step)
