"""ImageNet-style trees, too big for memory: decoded per sample by ``DataLoader`` workers.

The order and every sample's augmentation seed are drawn up front from ``(seed, epoch)`` as the CIFAR path does,
so the batches do not depend on the number of workers or ranks.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..errors import DataError
from .batching import PIXELS, Normalize, Splits, holdout, rank_slices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224  # ImageFolder crops: the ImageNet convention
IMAGEFOLDER_LAYOUT = "`<root>/train/<class>/*` + `<root>/val/<class>/*`"


def default_workers() -> int:
    """Loader processes per training process: the usable cores shared among torchrun's local ranks, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class _Images(torch.utils.data.Dataset):
    """Decodes and transforms the image of a key ``(index, seed)``. The seed fixes the random transform whichever
    process runs it (a worker or, with 0 workers, the trainer itself, whose global RNG it leaves untouched)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform) -> None:
        from torchvision.datasets.folder import default_loader  # PIL, converted to RGB

        self.samples, self.transform, self.loader = samples, transform, default_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[Tensor, int]:
        index, seed = key
        path, label = self.samples[index]
        try:
            image = self.loader(path)
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file") from None
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class _LoaderBatches:
    """A DataLoader's uint8 batches, normalized on the device."""

    def __init__(self, loader: torch.utils.data.DataLoader, normalize: Normalize) -> None:
        self.loader, self.normalize = loader, normalize

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        it = iter(self.loader)
        try:
            for x, y in it:
                yield self.normalize(x), y.to(self.normalize.device, non_blocking=True)
        except Exception as exc:
            _release_iterator(exc.__traceback__)
            if isinstance(exc, DataError):  # from a worker, the message carries its traceback: keep the last line
                last = str(exc).strip().splitlines()[-1]
                raise DataError(last.split("DataError: ", 1)[-1]) from None
            raise
        finally:
            it = None  # this generator's frame stays in the traceback too; the iterator must not


def _release_iterator(tb: TracebackType | None) -> None:
    """Clear the DataLoader's own frames in ``tb`` so the traceback no longer holds the loader's iterator.

    A worker's exception is re-raised from a local variable, so it sits in a reference cycle that only the garbage
    collector frees, and its frames keep the iterator (and its worker processes) alive until then; an iterator
    shut down by the collector takes 2 x 5 s to join its workers. Cleared, the iterator goes with the last
    reference :meth:`_LoaderBatches.__iter__` holds and its workers stop at once."""
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("torch.utils.data"):
            try:
                tb.tb_frame.clear()  # not tb_frame.f_locals: reading it would cache another reference on the frame
            except RuntimeError:  # a frame still executing (as traceback.clear_frames does)
                pass
        tb = tb.tb_next


class ImageFolderSplit:
    """Image files decoded per sample by ``workers`` DataLoader processes.

    Train batches: RandomResizedCrop + horizontal flip; eval batches: resize to ``size·256/224`` + center crop.
    The order and every sample's augmentation seed are drawn up front from ``(seed, epoch)`` like
    :class:`BatchStream` does, so the batches do not depend on the number of workers or ranks.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: int, workers: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        from torchvision.transforms import v2

        self.samples, self.image_size, self.workers = list(samples), image_size, workers
        self.mean, self.std = tuple(mean), tuple(std)
        # On the PIL image (cropped before it becomes a tensor), ending in a plain uint8 tensor.
        self.train_transform = v2.Compose([v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(),
                                           v2.PILToTensor()])
        self.resize = int(image_size * 256 / 224)  # the eval resize: ImageNet's 256 for a 224 crop, scaled
        self.eval_transform = v2.Compose([v2.Resize(self.resize), v2.CenterCrop(image_size),
                                          v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    @property
    def preprocess(self) -> dict:
        """The eval transform in plain data (see ``Splits.inference``): shorter side resized, centre crop."""
        return {"pixels": PIXELS, "resize": self.resize, "center_crop": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}

    def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                device: str | torch.device = "cpu", channels_last: bool = False, rank: int = 0,
                world_size: int = 1, flip: str = "random", crop_padding: int = 4) -> _LoaderBatches:
        from torch.utils.data import DataLoader

        clean = train and flip == "none" and crop_padding == 0  # a clean epoch: shuffled, under the eval transform
        if not clean and flip != "random":
            raise DataError(f"imagefolder data flips at random only; --flip {flip} is for CIFAR data")
        if not clean and crop_padding != 4:
            raise DataError("imagefolder data takes RandomResizedCrop; --crop-padding is for CIFAR data")

        device = torch.device(device)
        n = len(self.samples)
        slices = rank_slices(n, batch_size, rank, world_size, drop_last=train)
        if train:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=generator).tolist()
            seeds: list[int | None] = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        else:
            order, seeds = list(range(n)), [None] * n
        keys = [[(order[p], seeds[p]) for p in range(lo, hi)] for lo, hi in slices]
        dataset = _Images(self.samples, self.train_transform if train and not clean else self.eval_transform)
        # A generator of its own: the loader's worker seeds must not be drawn from the trainer's global RNG.
        loader = DataLoader(dataset, batch_sampler=keys, num_workers=self.workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator())
        return _LoaderBatches(loader, Normalize(self.mean, self.std, device, channels_last))


class ImageFolderData(Splits[ImageFolderSplit]):
    """An ImageFolder tree's splits, streamed from disk."""


def _scan(directory: Path) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(directory))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{directory}: {exc}".splitlines()[0]) from None
    return found.classes, found.samples


def load_imagefolder(
    root: str | os.PathLike,
    val_size: int = 0,
    limit_train: int | None = None,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    workers: int | None = None,
) -> ImageFolderData:
    """Train from ``root/train`` (val: a seeded class-stratified subset of it, held out before ``limit_train``) and
    test from ``root/val``. Only file lists are read here; images are decoded batch by batch."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(f"{root} has the wrong layout; expected {IMAGEFOLDER_LAYOUT}")
    if image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise DataError(f"workers must be 0 or more, got {workers}")
    classes, samples = _scan(root / "train")
    test_classes, test_samples = _scan(root / "val")
    if classes != test_classes:
        raise DataError(f"train and val class folders differ under {root}: {classes[:3]}... vs {test_classes[:3]}...")
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    train_idx, val_idx = holdout(labels, len(classes), val_size, limit_train, seed)

    def split(chosen: Sequence[tuple[str, int]]) -> ImageFolderSplit:
        return ImageFolderSplit(chosen, image_size, workers)

    return ImageFolderData(train=split([samples[i] for i in train_idx.tolist()]),
                           val=split([samples[i] for i in val_idx.tolist()]), test=split(test_samples),
                           classes=classes)
