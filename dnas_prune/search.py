"""The search as a command: the :class:`~dnas_prune.pruner.Pruner` inside the shared training loop.

:class:`SearchHooks` plugs a Pruner into :class:`~dnas_prune.training.Trainer` (checkpoints, resume, DDP,
evaluation), and :func:`search` runs it, lands on the budget, refits BN statistics and writes ``supernet.pt``
and ``search.json``. How the search steers itself to the budget is told in :mod:`~dnas_prune.pruner`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data import TrainingData
from .errors import CheckpointError, DnasPruneError
from .models import available_weights, build_model, create_model
from .pruner import Pruner, SearchConfig, expected_ratios, refit_bn
from .supernet import Supernet
from .checkpoint import atomic_write_json, safe_load
from .training import Trainer, TrainConfig, TrainHooks

__all__ = ["SearchConfig", "SearchHooks", "search", "load_supernet", "load_pretrained", "recalibrate_bn"]


class SearchHooks(TrainHooks):
    """Calls the :class:`~dnas_prune.pruner.Pruner` from the training loop and reports its state each epoch.

    Readable state for monitoring: ``pruner`` (and its ``net`` and ``config``).
    """

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
        hard = self.net.hard_cost()
        metrics.update(
            hard_macs_ratio=hard.macs / self.net.dense_cost.macs,
            hard_params_ratio=hard.params / self.net.dense_cost.params,
            expected_ratio=expected_ratios(self.net)[self.config.metric],
            target_ratio=self.pruner.target,
            offset=self.pruner.offset,
            temperature=self.pruner.temperature,
            blocks_open=sum(self.net.block_open().values()),
        )

    def state_dict(self) -> dict:
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state_dict(state["pruner"])


def load_pretrained(path: str | Path, model_name: str | None, num_classes: int) -> nn.Module:
    """A dense model from a ``dnas-prune train`` output (``model.pt`` or ``train.pt``), a plain torchvision-style
    state_dict (then ``model_name`` says which architecture), or the tag of shipped weights such as ``cifar10``."""
    if not Path(path).exists() and model_name is not None and str(path) in available_weights(model_name):
        return create_model(model_name, num_classes=num_classes, weights=str(path))
    state = safe_load(path, "a dnas_prune model or a state_dict")
    if isinstance(state, dict) and "spec" in state and "state_dict" in state:
        model, weights = build_model(state["spec"]), state["state_dict"]
    elif isinstance(state, dict) and state.get("kind") == "dnas_prune.trainer":
        spec = state.get("metadata", {}).get("spec")
        if spec is None:
            raise CheckpointError(f"{path} is a trainer checkpoint without a model spec; pass its model.pt instead")
        model, weights = build_model(spec), state["model"]
    elif isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        if model_name is None:
            raise CheckpointError(f"{path} is a plain state_dict; also pass --model to say which architecture it is")
        model, weights = create_model(model_name, num_classes=num_classes), state
    else:
        raise CheckpointError(f"{path} is neither a dnas_prune model file nor a state_dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{path} does not fit the model: {lines[min(1, len(lines) - 1)]}") from None
    return model


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
    """Per-group open counts and block decisions: what search.json and the reports show."""
    state = net.gate_state()
    groups = {name: {"kind": net.groups[name].kind, "open": int(mask.sum()), "size": net.groups[name].size}
              for name, mask in state.items()}
    alive = net.block_open()
    return {"groups": groups, "blocks_open": sum(alive.values()), "blocks_total": len(alive)}


def search(
    model: nn.Module,
    data: TrainingData,
    train_config: TrainConfig,
    search_config: SearchConfig,
    out_dir: str | Path,
    resume: bool = False,
    input_size: tuple[int, int, int] | None = None,
    wrap_hooks: Callable[[TrainHooks], TrainHooks] | None = None,
) -> tuple[Supernet, dict]:
    """Run the whole search; returns the projected supernet and the summary written to ``search.json``.

    ``wrap_hooks`` lets the caller put an observer (e.g. TensorBoard monitoring) around the search hooks
    without this module knowing about it. With ``train_config.distill_weight > 0`` the supernet also learns from
    the dense model it starts from (a frozen copy), as the finetune does.
    """
    if train_config.ema_decay > 0:
        raise DnasPruneError(f"ema_decay {train_config.ema_decay} applies to dense training and finetuning, not the "
                             "search, whose gates and BN statistics are fitted on the live weights; set it to 0 here")
    out = Path(out_dir)
    input_size = input_size or data.train.input_size
    teacher = copy.deepcopy(model) if train_config.distill_weight > 0 else None
    steps = train_config.epochs * (len(data.train) // train_config.batch_size)
    pruner = Pruner(model, input_size, total_steps=steps, config=search_config)
    net = pruner.net
    hooks = SearchHooks(pruner)
    metadata = {"kind": "dnas_prune.search", "supernet": net.config(), "search": asdict(search_config)}
    trainer = Trainer(net, data, train_config, out, hooks=wrap_hooks(hooks) if wrap_hooks else hooks,
                      checkpoint_name="supernet.pt", metadata=metadata, teacher=teacher)
    trainer.fit(resume=resume and (out / "supernet.pt").is_file())
    before = net.hard_cost()
    projection = pruner.project()
    final = net.hard_cost()
    recalibrate_bn(net, data, search_config.recalibrate_batches, train_config.batch_size, train_config.seed,
                   bool(trainer.channels_last), trainer.device, trainer.autocast)
    val = trainer.evaluate(data.val) if len(data.val) else {"acc": float("nan")}
    test = trainer.evaluate(data.test)
    dense = net.dense_cost
    summary = {
        "target": {"metric": search_config.metric, "ratio": search_config.target},
        "dense": {"macs": dense.macs, "params": dense.params},
        "before_projection": {"macs_ratio": before.macs / dense.macs, "params_ratio": before.params / dense.params},
        "projection": {"metric": search_config.metric, **projection},
        "steering": pruner.summary(),
        "final": {"macs": final.macs, "params": final.params, "macs_ratio": final.macs / dense.macs,
                  "params_ratio": final.params / dense.params},
        "accuracy": {"val": val["acc"], "test": test["acc"], "note": "hard supernet after projection, before finetune"},
        "gates": gate_summary(net),
        "config": {"train": asdict(train_config), "search": asdict(search_config)},
        "history": trainer.history,
    }
    if trainer.is_main:
        trainer.metadata["supernet"] = net.config()
        trainer.metadata["summary"] = {k: summary[k] for k in ("final", "accuracy")}
        trainer.save_checkpoint()
        atomic_write_json(summary, out / "search.json")
    return net, summary


def load_supernet(path: str | Path) -> Supernet:
    """Rebuild the supernet saved by :func:`search` (weights, gates and pinned state)."""
    state = safe_load(path, "a dnas_prune search checkpoint (RUN_DIR/supernet.pt)")
    meta = state.get("metadata", {}) if isinstance(state, dict) else {}
    if not isinstance(meta, dict) or meta.get("kind") != "dnas_prune.search" or "model" not in state:
        kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a search checkpoint (found {kind or 'an unknown file'}); "
                              "pass the supernet.pt written by `dnas-prune search`")
    try:
        return Supernet.from_config(meta["supernet"], state["model"]).eval()
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: supernet config and weights do not match ({str(exc).splitlines()[0]})") from None
