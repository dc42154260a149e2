"""The search inside the shared training loop: the :class:`~dnas_prune.search.pruner.Pruner` as training hooks.

:class:`SearchHooks` plugs a Pruner into :class:`~dnas_prune.train.loop.Trainer` (checkpoints, resume, DDP,
evaluation); :func:`recalibrate_bn` refits BN statistics for the hard network on a fixed stream of training
batches, and :func:`load_supernet` reads back the ``supernet.pt`` the search stage
(:func:`dnas_prune.stages.search`) writes. How the search steers itself to the budget is told in
:mod:`~dnas_prune.search.pruner`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..io.checkpoint import safe_load
from ..train.data import TrainingData
from ..train.loop import Trainer, TrainHooks
from .pruner import Pruner, SearchConfig, expected_ratios, refit_bn
from .supernet import Supernet


class SearchHooks(TrainHooks):
    """The :class:`~dnas_prune.search.pruner.Pruner` as a callback of the training loop: it steps the gates after
    every weight step, refits BN before each evaluation, and reports the budget in each epoch's metrics."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner

    @property
    def net(self) -> Supernet:
        return self.pruner.net

    @property
    def config(self) -> SearchConfig:
        return self.pruner.config

    def excluded_parameters(self) -> list[nn.Parameter]:
        return list(self.net.gate_parameters())

    def after_step(self, trainer: Trainer, step: int, metrics: dict) -> None:
        self.pruner.step()

    def before_evaluate(self, trainer: Trainer, epoch: int) -> None:
        """Eval mode computes the hard network with running BN statistics that followed a changing network: refit
        them first. Training normalizes by batch statistics, so this changes what is logged, not what is learned."""
        recalibrate_bn(self.net, trainer.data, self.config.recalibrate_batches, trainer.config.batch_size,
                       trainer.config.seed, bool(trainer.channels_last), trainer.device, trainer.autocast)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict) -> None:
        """The epoch's budget numbers into the epoch's metrics (so into metrics.json, search.json's history and,
        for a monitor after this callback, TensorBoard)."""
        metrics.update({f"hard_{metric}_ratio": ratio for metric, ratio in self.pruner.hard_ratios.items()})
        metrics.update(
            expected_ratio=expected_ratios(self.net)[self.config.metric],
            target_ratio=self.pruner.target,
            offset=self.pruner.offset,
            temperature=self.pruner.temperature,
            blocks_open=self.net.decisions().blocks_kept,
        )

    def state_dict(self) -> dict:
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state_dict(state["pruner"])


def recalibrate_bn(net: Supernet, data: TrainingData, batches: int, batch_size: int, seed: int,
                   channels_last: bool, device: torch.device, autocast) -> None:
    """Refit BN statistics for the pinned hard network on ``batches`` training batches (a fixed stream)."""
    if batches <= 0:
        return
    stream = data.train.batches(batch_size, train=True, seed=seed, epoch=10_000, device=device,
                                channels_last=channels_last)
    refit_bn(net, (x for i, (x, _) in zip(range(batches), stream)), autocast)
    net.eval()


def gate_summary(net: Supernet) -> dict[str, Any]:
    """Per gated group what finalization keeps of it (channels, or 1/0 for a block gate) and the kept residual
    branches: what search.json and the reports show."""
    decided = net.decisions()
    groups = {name: {"kind": net.groups[name].kind, "size": net.groups[name].size,
                     "open": int(decided.blocks[name]) if net.groups[name].kind == "block" else decided.widths[name]}
              for name in net.gated_groups}
    return {"groups": groups, "blocks_open": decided.blocks_kept, "blocks_total": len(decided.blocks)}


def load_supernet(path: str | Path) -> Supernet:
    """Rebuild the supernet saved by :func:`search` (weights, gates and pinned state)."""
    return load_supernet_with_metadata(path)[0]


def load_supernet_with_metadata(path: str | Path) -> tuple[Supernet, dict]:
    """:func:`load_supernet` and the checkpoint's metadata (the search's settings, the data's classes...)."""
    state = safe_load(path, "a dnas_prune search checkpoint (RUN_DIR/supernet.pt)")
    meta = state.get("metadata", {}) if isinstance(state, dict) else {}
    if not isinstance(meta, dict) or meta.get("kind") != "dnas_prune.search" or "model" not in state:
        kind = (state.get("kind") or state.get("format")) if isinstance(state, dict) else type(state).__name__
        found = {"dnas_prune.pruned": "a pruned model: it is finalized already"}.get(kind, kind or "an unknown file")
        if kind == "dnas_prune.pruned" and meta.get("kind") == "dense":
            raise CheckpointError(f"{path} is a dense model, not a search checkpoint: search it first "
                                  f"(`dnas-prune search --pretrained {path} ...`), then finalize its supernet.pt")
        raise CheckpointError(f"{path} is not a search checkpoint (found {found}); "
                              "pass the supernet.pt written by `dnas-prune search`")
    try:
        return Supernet.from_config(meta["supernet"], state["model"]).eval(), meta
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: supernet config and weights do not match ({str(exc).splitlines()[0]})") from None
