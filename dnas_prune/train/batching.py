"""What the in-memory CIFAR splits and the streamed ImageFolder splits share.

Both hold out a seeded, class-stratified validation subset, give rank ``r`` the ``r``-th slice of every global
batch (so batches do not depend on the number of processes), and normalize uint8 batches on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

import torch
from torch import Tensor

from ..errors import DataError

S = TypeVar("S")


PIXELS = "RGB, channels first, divided by 255, then (x - mean) / std per channel"  # what Normalize does


@dataclass
class Splits(Generic[S]):
    """Train/val/test splits of one source and its class names (a :class:`~dnas_prune.train.data.TrainingData`)."""

    train: S
    val: S
    test: S
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def inference(self) -> dict:
        """What a deployment needs besides the weights, as model files and exports record it: the class names
        (label i is ``classes[i]``) and the test split's preprocessing (``preprocess`` of a split)."""
        return {"classes": list(self.classes), "preprocess": self.test.preprocess}


def holdout(labels: Tensor, num_classes: int, val_size: int, limit_train: int | None,
             seed: int) -> tuple[Tensor, Tensor]:
    """(train, val) indices: val is a seeded class-stratified subset of train, held out before ``limit_train``."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise DataError(f"--val-size must be in [0, {n}) for {n} training images, got {val_size}")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    permuted = labels[perm]
    is_val = torch.zeros(n, dtype=torch.bool)
    per_class, extra = divmod(val_size, num_classes)
    for c in range(num_classes):
        positions = (permuted == c).nonzero().flatten()[: per_class + (c < extra)]
        is_val[positions] = True
    val_idx, train_idx = perm[is_val], perm[~is_val]
    if limit_train is not None:
        if limit_train < 1:
            raise DataError(f"--limit-train must be positive, got {limit_train}")
        train_idx = train_idx[:limit_train]
    return train_idx, val_idx


def rank_slices(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool,
                 start_batch: int = 0) -> list[tuple[int, int]]:
    """Rank ``rank``'s ``[lo, hi)`` positions in every global batch of ``batch_size`` (empty slices left out)."""
    if batch_size < 1 or batch_size % world_size:
        raise DataError(f"batch size {batch_size} must be positive and divisible by the world size {world_size}")
    local = batch_size // world_size
    count = n // batch_size if drop_last else -(-n // batch_size)
    slices = []
    for b in range(start_batch, count):
        lo = b * batch_size + rank * local
        hi = min(lo + local, (b + 1) * batch_size, n)
        if hi > lo:
            slices.append((lo, hi))
    return slices


class Normalize:
    """A uint8 batch to float32 on the device in the chosen memory format, normalized there (uint8 copies 4x less)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool) -> None:
        self.device, self.channels_last = device, channels_last
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t).to(device)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(torch.float32).mul_(self.scale).add_(self.shift)
