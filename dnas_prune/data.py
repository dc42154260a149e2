"""CIFAR-10 as in-memory uint8 tensors, and batches augmented as whole tensors.

Per-sample PIL transforms through a ``DataLoader`` cost more CPU than training a small ResNet, so the
CIFAR path decodes once (cached on disk), keeps the dataset as one uint8 tensor and crops/flips whole
batches with vectorized indexing. All randomness comes from a generator seeded by ``(seed, epoch)``, so
batches are reproducible, resumable mid-epoch and identical when split across ranks.
ImageNet-style trees use the ordinary torchvision pipeline (:func:`imagefolder_loaders`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from .checkpoint import atomic_torch_save
from .errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

LAYOUT = "`<root>/train/<class>/*.jpg` + `<root>/test/<class>/*.jpg` or `<root>/cifar-10-batches-py`"
_OFFICIAL = "cifar-10-batches-py"
_CACHE_FORMAT = 1


def _cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dnas_prune"


def resolve_data_root(data: str | os.PathLike | None, download: bool = True) -> Path:
    """``data``, else ``$DNAS_PRUNE_DATA``, else the user cache dir (downloading the official batches there)."""
    chosen = data if data is not None else os.environ.get("DNAS_PRUNE_DATA")
    if chosen is not None:
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise DataError(f"data directory {root} does not exist; expected {LAYOUT} (pass --data or set DNAS_PRUNE_DATA)")
        return root
    root = _cache_home() / "cifar10"
    if (root / _OFFICIAL).is_dir():
        return root
    if download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types; the user needs one line either way
            raise DataError(
                f"could not download CIFAR-10 into {root} ({type(exc).__name__}: {exc}); "
                f"pass --data DIR holding {LAYOUT}"
            ) from None
        return root
    raise DataError(f"no CIFAR-10 found; pass --data DIR or set DNAS_PRUNE_DATA to a directory holding {LAYOUT}")


@dataclass
class Split:
    images: Tensor  # (N, 3, H, W) uint8, contiguous
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class CifarData:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _class_files(split_dir: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        files.extend(found)
        labels.extend([label] * len(found))
    return classes, files, labels


def _decode(files: Sequence[Path]) -> Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    images: list[Tensor] = []
    chunk = 4096
    with warnings.catch_warnings():  # torchvision.io warns per call that TorchCodec will replace it
        warnings.simplefilter("ignore", DeprecationWarning)
        for start in range(0, len(files), chunk):
            raw = [read_file(str(p)) for p in files[start : start + chunk]]
            try:
                images.extend(decode_jpeg(raw, mode=ImageReadMode.RGB))
            except RuntimeError as exc:
                raise DataError(f"cannot decode a JPEG among {files[start]}..: {exc}".splitlines()[0]) from None
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise DataError(f"images under {files[0].parent.parent} have different sizes {sorted(shapes)[:3]}; expected one size")
    return torch.stack(images).contiguous()


def _read_imagefolder(root: Path) -> dict:
    classes, files, labels = _class_files(root / "train")
    test_classes, test_files, test_labels = _class_files(root / "test")
    if not files or not test_files:
        raise DataError(f"no JPEGs under {root}/train or {root}/test; expected {LAYOUT}")
    if classes != test_classes:
        raise DataError(f"train and test class folders differ under {root}: {classes} vs {test_classes}")
    return {
        "classes": classes,
        "train_images": _decode(files),
        "train_labels": torch.tensor(labels, dtype=torch.int64),
        "test_images": _decode(test_files),
        "test_labels": torch.tensor(test_labels, dtype=torch.int64),
    }


def _read_official(root: Path) -> dict:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=False)
        test = CIFAR10(str(root), train=False, download=False)
    except RuntimeError as exc:
        raise DataError(f"{root / _OFFICIAL} is incomplete or corrupt ({exc}); delete it and download again") from None

    def to_tensor(array) -> Tensor:
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()

    return {
        "classes": list(train.classes),
        "train_images": to_tensor(train.data),
        "train_labels": torch.tensor(train.targets, dtype=torch.int64),
        "test_images": to_tensor(test.data),
        "test_labels": torch.tensor(test.targets, dtype=torch.int64),
    }


def _cache_path(root: Path) -> Path:
    """A cache file named by the tree's path, file count and newest mtime, so edits invalidate it."""
    stamp = [str(root.resolve())]
    for split in ("train", "test", _OFFICIAL):
        directory = root / split
        if directory.is_dir():
            count, newest = 0, 0
            for dirpath, _, names in os.walk(directory):
                count += len(names)
                newest = max([newest] + [os.stat(os.path.join(dirpath, n)).st_mtime_ns for n in names])
            stamp.append(f"{split}:{count}:{newest}")
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("DNAS_PRUNE_CACHE") or _cache_home())
    return cache_dir / f"cifar10-{key}.pt"


def _read_cached(root: Path) -> dict:
    path = _cache_path(root)
    if path.is_file():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("format") == _CACHE_FORMAT:
                return cached
        except Exception:  # a stale or truncated cache is rebuilt, never trusted
            pass
    if (root / _OFFICIAL).is_dir():
        cached = _read_official(root)
    elif (root / "train").is_dir() and (root / "test").is_dir():
        cached = _read_imagefolder(root)
    else:
        raise DataError(f"{root} has the wrong layout; expected {LAYOUT}")
    cached["format"] = _CACHE_FORMAT
    try:
        atomic_torch_save(cached, path)
    except OSError:  # a read-only cache only costs a re-decode next time
        pass
    return cached


def load_cifar10(
    root: str | os.PathLike, val_size: int = 5000, limit_train: int | None = None, seed: int = 0
) -> CifarData:
    """Train/val/test splits; val is a seeded class-stratified subset of train, held out before ``limit_train``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; expected {LAYOUT}")
    raw = _read_cached(root)
    images, labels, classes = raw["train_images"], raw["train_labels"], list(raw["classes"])
    n = len(labels)
    if not 0 <= val_size < n:
        raise DataError(f"--val-size must be in [0, {n}) for {n} training images, got {val_size}")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    permuted = labels[perm]
    is_val = torch.zeros(n, dtype=torch.bool)
    per_class, extra = divmod(val_size, len(classes))
    for c in range(len(classes)):
        positions = (permuted == c).nonzero().flatten()[: per_class + (c < extra)]
        is_val[positions] = True
    val_idx, train_idx = perm[is_val], perm[~is_val]
    if limit_train is not None:
        if limit_train < 1:
            raise DataError(f"--limit-train must be positive, got {limit_train}")
        train_idx = train_idx[:limit_train]
    return CifarData(
        train=Split(images[train_idx].contiguous(), labels[train_idx]),
        val=Split(images[val_idx].contiguous(), labels[val_idx]),
        test=Split(raw["test_images"], raw["test_labels"]),
        classes=classes,
    )


class BatchStream:
    """One epoch of batches from a Split, augmented on whole batches as tensors (no per-sample PIL)."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        epoch: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        drop_last: bool | None = None,
    ) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise DataError(f"batch size {batch_size} must be positive and divisible by the world size {world_size}")
        self.split, self.train, self.device = split, train, torch.device(device)
        self.channels_last = channels_last
        self.local = batch_size // world_size
        n = len(split)
        drop_last = train if drop_last is None else drop_last
        count = n // batch_size if drop_last else -(-n // batch_size)
        self.slices = []
        for b in range(start_batch, count):
            lo = b * batch_size + rank * self.local
            hi = min(lo + self.local, (b + 1) * batch_size, n)
            if hi > lo:
                self.slices.append((lo, hi))
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t).to(self.device)
        if train:
            # The whole epoch's randomness is drawn up front, so skipping batches or ranks changes nothing.
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self.order = torch.randperm(n, generator=generator)
            self.offsets = torch.randint(0, 9, (n, 2), generator=generator)
            self.flips = torch.rand(n, generator=generator) < 0.5
        else:
            self.order = None

    def __len__(self) -> int:
        return len(self.slices)

    def _augment(self, images: Tensor, index: Tensor) -> Tensor:
        """Pad-4 random crop and horizontal flip of a uint8 batch by one gather."""
        b, c, h, w = images.shape
        padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
        rows = self.offsets[index, 0, None] + torch.arange(h)
        ramp = torch.arange(w)
        cols = self.offsets[index, 1, None] + torch.where(self.flips[index, None], w - 1 - ramp, ramp)
        flat = padded.view(b, c, (h + 8) * (w + 8))
        gather = (rows[:, :, None] * (w + 8) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, gather).view(b, c, h, w)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        images, labels = self.split.images, self.split.labels
        for lo, hi in self.slices:
            if self.order is None:
                x, y = images[lo:hi], labels[lo:hi]
            else:
                index = self.order[lo:hi]
                x, y = self._augment(images[index], index), labels[index]
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = x.to(torch.float32).mul_(self.scale).add_(self.shift)
            yield x, y.to(self.device, non_blocking=True)


def imagefolder_loaders(
    root: str | os.PathLike,
    batch_size: int,
    workers: int = 4,
    image_size: int = 224,
    distributed: bool = False,
    seed: int = 0,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Train/val loaders for an ImageNet-style ``root/train`` + ``root/val`` tree (``batch_size`` per process)."""
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    root = Path(root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(f"{root} has the wrong layout; expected `<root>/train/<class>/*` + `<root>/val/<class>/*`")
    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    train_tf = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), *normalize])
    val_tf = v2.Compose([v2.ToImage(), v2.Resize(int(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size), *normalize])
    try:
        train_set = ImageFolder(str(root / "train"), transform=train_tf)
        val_set = ImageFolder(str(root / "val"), transform=val_tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{root}: {exc}".splitlines()[0]) from None
    if train_set.classes != val_set.classes:
        raise DataError(f"train and val class folders differ under {root}")
    train_sampler = DistributedSampler(train_set, seed=seed) if distributed else None
    val_sampler = DistributedSampler(val_set, shuffle=False) if distributed else None
    generator = torch.Generator().manual_seed(seed)
    common = {"batch_size": batch_size, "num_workers": workers, "pin_memory": torch.cuda.is_available(),
              "persistent_workers": workers > 0}
    train = DataLoader(train_set, sampler=train_sampler, shuffle=train_sampler is None, drop_last=True,
                       generator=generator, **common)
    val = DataLoader(val_set, sampler=val_sampler, shuffle=False, **common)
    return train, val
