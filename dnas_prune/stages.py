"""The stages of a pruning run, each written once: the CLI commands, the TOML pipeline and the experiments call
these functions instead of writing their own stage bodies."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from torch import nn

from .errors import DnasPruneError
from .io.checkpoint import atomic_write_json
from .io.pruned import load_pruned_with_metadata, save_pruned
from .search.hooks import SearchHooks, gate_summary, recalibrate_bn
from .search.pruner import Pruner, SearchConfig
from .search.supernet import Supernet
from .train.data import TrainingData
from .train.loop import TrainConfig, Trainer, TrainHooks


def finetune_pruned(pruned_path: str | Path, data: TrainingData, config: TrainConfig, out_dir: str | Path, *,
                    data_root: str, hooks: TrainHooks | None = None, resume: bool = False,
                    teacher: nn.Module | None = None) -> tuple[Trainer, dict]:
    """Train the model in ``pruned_path``; writes ``out_dir/finetune.pt`` (resumable) and ``out_dir/pruned.pt``
    (the same metadata plus the new accuracies). Returns the trainer and its final metrics.

    ``teacher`` (usually the dense parent) is distilled from when ``config.distill_weight > 0``."""
    model, metadata = load_pruned_with_metadata(pruned_path)
    out = Path(out_dir)
    trainer = Trainer(model.train(), data, config, out, hooks=hooks, checkpoint_name="finetune.pt",
                      metadata={"kind": "dnas_prune.finetune", "source": str(pruned_path)}, teacher=teacher)
    metrics = trainer.fit(resume=resume and trainer.checkpoint_path.is_file())
    if trainer.is_main:
        keep = {k: v for k, v in metadata.items() if k not in ("macs", "params")}
        save_pruned(trainer.final_model.eval(), out / "pruned.pt",
                    **{**keep, "dataset": data_root, "test_acc": metrics["test_acc"], "val_acc": metrics.get("val_acc"),
                       "finetune_epochs": config.epochs})
    return trainer, metrics


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
