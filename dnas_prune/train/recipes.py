"""The training recipe of each stage, defined once: the CLI flags, the pipeline's TOML keys and the experiments
all default to these (tests/test_defaults.py holds them together). Why each value: experiments/results/train_*.md
for dense training; search and finetune start from a trained parent, hence a lower lr and a cosine decay."""

from __future__ import annotations

import random

import numpy as np
import torch

from .loop import TrainConfig

# The 30-epoch CIFAR recipe measured best here: batch 128, peak lr 0.2, no label smoothing, weight decay 2.5e-4,
# all training images (dense training decides nothing on a validation split), and the last epoch in every
# CLEAN_EPOCHS_PER on un-augmented images.
TRAIN_RECIPE = TrainConfig(batch_size=128, lr=0.2, warmup_epochs=2.0, label_smoothing=0.0, weight_decay=2.5e-4)
TRAIN_VAL_SIZE = 0
CLEAN_EPOCHS_PER = 15
SEARCH_RECIPE = TrainConfig(epochs=10, lr=0.05, schedule="cosine", warmup_epochs=0.0)
FINETUNE_RECIPE = TrainConfig(epochs=10, lr=0.05, schedule="cosine", warmup_epochs=0.5)


def seed_everything(seed: int) -> None:
    """Seed torch, Python and NumPy: CPU runs are then reproducible, so resume and DDP can be tested for equality."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
