"""Training data behind one interface: a split knows its size, its input size and how to batch one epoch.

CIFAR-10 is held in memory: per-sample PIL transforms through a ``DataLoader`` cost more CPU than training a
small ResNet, so :mod:`~dnas_prune.train.cifar` decodes once (cached on disk), keeps the dataset as one uint8
tensor and crops/flips whole batches with vectorized indexing. ImageNet-style trees are too big for memory and
:mod:`~dnas_prune.train.imagefolder` decodes them per sample in ``DataLoader`` workers. Either way all randomness
comes from ``(seed, epoch)`` and each rank takes its slice of every global batch (:mod:`~dnas_prune.train.batching`),
so batches are reproducible and do not depend on the number of processes. :func:`load_dataset` picks the source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Protocol

import torch
from torch import Tensor

from ..errors import DataError
from .cifar import load_cifar10, resolve_data_root
from .imagefolder import IMAGE_SIZE, IMAGEFOLDER_LAYOUT, load_imagefolder

DATA_KINDS = ("cifar", "imagefolder")


class Batches(Protocol):
    """One epoch of normalized ``(inputs, labels)`` batches on the device; ``len`` is the number of batches."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


class DataSplit(Protocol):
    """What training needs of a split, however its images are stored (:class:`~dnas_prune.train.cifar.Split`, :class:`~dnas_prune.train.imagefolder.ImageFolderSplit`).

    ``batches`` depends on its arguments only: the same ``(seed, epoch)`` gives the same batches, and rank ``r`` of
    ``world_size`` gets the ``r``-th slice of every global batch of ``batch_size``.
    """

    def __len__(self) -> int: ...

    @property
    def input_size(self) -> tuple[int, int, int]: ...

    @property
    def preprocess(self) -> dict: ...

    def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                device: str | torch.device = "cpu", channels_last: bool = False, rank: int = 0,
                world_size: int = 1, flip: str = "random", crop_padding: int = 4) -> Batches: ...


class TrainingData(Protocol):
    """Train/val/test splits and class names: what the Trainer, the search and finetuning take."""

    @property
    def train(self) -> DataSplit: ...

    @property
    def val(self) -> DataSplit: ...

    @property
    def test(self) -> DataSplit: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def num_classes(self) -> int: ...

    def inference(self) -> dict: ...


def load_dataset(
    kind: str,
    data: str | os.PathLike | None,
    *,
    val_size: int,
    limit_train: int | None,
    seed: int,
    image_size: int = IMAGE_SIZE,
    workers: int | None = None,
) -> tuple[TrainingData, Path]:
    """The splits of a ``kind`` tree and its root. ``data`` defaults to ``$DNAS_PRUNE_DATA``; only CIFAR-10 then
    falls back to the download cache (``image_size`` and ``workers`` are for ImageFolder trees)."""
    if kind == "cifar":
        root = resolve_data_root(data)
        return load_cifar10(root, val_size=val_size, limit_train=limit_train, seed=seed), root
    if kind != "imagefolder":
        raise DataError(f"data kind must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
    chosen = data if data is not None else os.environ.get("DNAS_PRUNE_DATA")
    if chosen is None:
        raise DataError(f"no ImageFolder tree given; pass --data DIR (data.root in a config) or set DNAS_PRUNE_DATA "
                        f"to a directory holding {IMAGEFOLDER_LAYOUT}")
    root = Path(chosen).expanduser()
    return load_imagefolder(root, val_size, limit_train, seed, image_size, workers), root
