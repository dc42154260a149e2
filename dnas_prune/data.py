"""Training data behind one interface: a split knows its size, its input size and how to batch one epoch.

CIFAR-10 is held in memory: per-sample PIL transforms through a ``DataLoader`` cost more CPU than training a
small ResNet, so the CIFAR path decodes once (cached on disk), keeps the dataset as one uint8 tensor and
crops/flips whole batches with vectorized indexing (:class:`Split`, :class:`BatchStream`). ImageNet-style trees
are too big for memory and are decoded per sample by ``DataLoader`` workers (:class:`ImageFolderSplit`).
Either way all randomness comes from ``(seed, epoch)`` and each rank takes its slice of every global batch, so
batches are reproducible and do not depend on the number of processes.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from .checkpoint import atomic_torch_save
from .errors import DataError
from .progress import Progress

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FLIP_MODES = ("random", "alternate", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATA_KINDS = ("cifar", "imagefolder")
IMAGE_SIZE = 224  # ImageFolder crops: the ImageNet convention
LAYOUT = "`<root>/train/<class>/*.jpg` + `<root>/test/<class>/*.jpg` or `<root>/cifar-10-batches-py`"
IMAGEFOLDER_LAYOUT = "`<root>/train/<class>/*` + `<root>/val/<class>/*`"
_OFFICIAL = "cifar-10-batches-py"
_CACHE_FORMAT = 1


def _is_main_process() -> bool:
    """Rank 0 under torchrun, or a single process: the one that prints progress."""
    return int(os.environ.get("RANK", "0")) == 0


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


class Batches(Protocol):
    """One epoch of normalized ``(inputs, labels)`` batches on the device; ``len`` is the number of batches."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


class DataSplit(Protocol):
    """What training needs of a split, however its images are stored (:class:`Split`, :class:`ImageFolderSplit`).

    ``batches`` depends on its arguments only: the same ``(seed, epoch)`` gives the same batches, and rank ``r`` of
    ``world_size`` gets the ``r``-th slice of every global batch of ``batch_size``.
    """

    def __len__(self) -> int: ...

    @property
    def input_size(self) -> tuple[int, int, int]: ...

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


@dataclass
class Split:
    """An in-memory split (CIFAR): one uint8 tensor, batched by :class:`BatchStream`."""

    images: Tensor  # (N, 3, H, W) uint8, contiguous
    labels: Tensor  # (N,) int64
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return c, h, w

    def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                device: str | torch.device = "cpu", channels_last: bool = False, rank: int = 0,
                world_size: int = 1, flip: str = "random", crop_padding: int = 4) -> BatchStream:
        return BatchStream(self, batch_size, train=train, seed=seed, epoch=epoch, device=device,
                           channels_last=channels_last, mean=self.mean, std=self.std, rank=rank, world_size=world_size,
                           flip=flip, crop_padding=crop_padding)


@dataclass
class CifarData:
    train: Split
    val: Split
    test: Split
    classes: list[str]

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


def _decode(files: Sequence[Path], desc: str = "decoding") -> Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    images: list[Tensor] = []
    chunk = 4096
    with warnings.catch_warnings(), Progress(len(files), desc, unit="images", enabled=_is_main_process()) as progress:
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io warns per call that TorchCodec replaces it
        for start in range(0, len(files), chunk):
            raw = [read_file(str(p)) for p in files[start : start + chunk]]
            try:
                images.extend(decode_jpeg(raw, mode=ImageReadMode.RGB))
            except RuntimeError as exc:
                raise DataError(f"cannot decode a JPEG among {files[start]}..: {exc}".splitlines()[0]) from None
            progress.update(len(raw))
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
        "train_images": _decode(files, "decoding train"),
        "train_labels": torch.tensor(labels, dtype=torch.int64),
        "test_images": _decode(test_files, "decoding test"),
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
        if _is_main_process():
            print(f"decoding the JPEGs under {root} once; the decoded images are cached in {path} "
                  "(set DNAS_PRUNE_CACHE to move it)", flush=True)
        cached = _read_imagefolder(root)
    else:
        raise DataError(f"{root} has the wrong layout; expected {LAYOUT}")
    cached["format"] = _CACHE_FORMAT
    try:
        atomic_torch_save(cached, path)
    except OSError:  # a read-only cache only costs a re-decode next time
        pass
    return cached


def _holdout(labels: Tensor, num_classes: int, val_size: int, limit_train: int | None,
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


def load_cifar10(
    root: str | os.PathLike, val_size: int = 5000, limit_train: int | None = None, seed: int = 0
) -> CifarData:
    """Train/val/test splits; val is a seeded class-stratified subset of train, held out before ``limit_train``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; expected {LAYOUT}")
    raw = _read_cached(root)
    images, labels, classes = raw["train_images"], raw["train_labels"], list(raw["classes"])
    train_idx, val_idx = _holdout(labels, len(classes), val_size, limit_train, seed)
    return CifarData(
        train=Split(images[train_idx].contiguous(), labels[train_idx]),
        val=Split(images[val_idx].contiguous(), labels[val_idx]),
        test=Split(raw["test_images"], raw["test_labels"]),
        classes=classes,
    )


def _rank_slices(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool,
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


class _Normalize:
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
        flip: str = "random",
        crop_padding: int = 4,
    ) -> None:
        if crop_padding < 0:
            raise ValueError(f"crop padding must be >= 0, got {crop_padding}")
        self.split, self.train, self.device = split, train, torch.device(device)
        self.pad = crop_padding
        n = len(split)
        drop_last = train if drop_last is None else drop_last
        self.slices = _rank_slices(n, batch_size, rank, world_size, drop_last, start_batch)
        self.normalize = _Normalize(mean, std, self.device, channels_last)
        if train:
            # The whole epoch's randomness is drawn up front, so skipping batches or ranks changes nothing.
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self.order = torch.randperm(n, generator=generator)
            self.offsets = torch.randint(0, 2 * crop_padding + 1, (n, 2), generator=generator)
            if flip == "alternate":  # each image is mirrored in exactly one of every two consecutive epochs
                per_image = torch.rand(n, generator=torch.Generator().manual_seed(seed * 1_000_003 - 1)) < 0.5
                self.flips = per_image ^ bool(epoch % 2)
            elif flip == "random":
                self.flips = torch.rand(n, generator=generator) < 0.5
            elif flip == "none":
                self.flips = torch.zeros(n, dtype=torch.bool)
            else:
                raise ValueError(f"flip must be one of {', '.join(FLIP_MODES)}, got {flip!r}")
        else:
            self.order = None

    def __len__(self) -> int:
        return len(self.slices)

    def _augment(self, images: Tensor, index: Tensor) -> Tensor:
        """Zero-pad, random crop and horizontal flip of a uint8 batch by one gather."""
        b, c, h, w = images.shape
        p = self.pad
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        rows = self.offsets[index, 0, None] + torch.arange(h)
        ramp = torch.arange(w)
        cols = self.offsets[index, 1, None] + torch.where(self.flips[index, None], w - 1 - ramp, ramp)
        flat = padded.view(b, c, (h + 2 * p) * (w + 2 * p))
        gather = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, gather).view(b, c, h, w)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        images, labels = self.split.images, self.split.labels
        for lo, hi in self.slices:
            if self.order is None:
                x, y = images[lo:hi], labels[lo:hi]
            else:
                index = self.order[lo:hi]
                x, y = self._augment(images[index], index), labels[index]
            yield self.normalize(x), y.to(self.device, non_blocking=True)


# ----------------------------------------------------------------------------- ImageNet-style trees
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

    def __init__(self, loader: torch.utils.data.DataLoader, normalize: _Normalize) -> None:
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
        self.eval_transform = v2.Compose([v2.Resize(int(image_size * 256 / 224)), v2.CenterCrop(image_size),
                                          v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

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
        slices = _rank_slices(n, batch_size, rank, world_size, drop_last=train)
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
        return _LoaderBatches(loader, _Normalize(self.mean, self.std, device, channels_last))


@dataclass
class ImageFolderData:
    train: ImageFolderSplit
    val: ImageFolderSplit
    test: ImageFolderSplit
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


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
    train_idx, val_idx = _holdout(labels, len(classes), val_size, limit_train, seed)

    def split(chosen: Sequence[tuple[str, int]]) -> ImageFolderSplit:
        return ImageFolderSplit(chosen, image_size, workers)

    return ImageFolderData(train=split([samples[i] for i in train_idx.tolist()]),
                           val=split([samples[i] for i in val_idx.tolist()]), test=split(test_samples),
                           classes=classes)


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
        raise DataError(f"no ImageFolder tree given; pass --data DIR or set DNAS_PRUNE_DATA to a directory holding "
                        f"{IMAGEFOLDER_LAYOUT}")
    root = Path(chosen).expanduser()
    return load_imagefolder(root, val_size, limit_train, seed, image_size, workers), root
