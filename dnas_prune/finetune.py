"""Finetuning a finalized model: the plain pruned network trained further with the shared loop."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .data import TrainingData
from .pruned_io import load_pruned_with_metadata, save_pruned
from .training import TrainConfig, Trainer, TrainHooks


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
