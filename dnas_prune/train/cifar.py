"""CIFAR-10 in memory: decoded once (cached on disk), held as one uint8 tensor, augmented whole batches at a time.

Per-sample PIL transforms through a ``DataLoader`` cost more CPU than training a small ResNet, so crops and flips
are vectorized indexing over a batch (:class:`BatchStream`). All randomness comes from ``(seed, epoch)``.
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
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import DataError, DnasPruneError
from ..io.checkpoint import atomic_torch_save, cache_dir, user_cache_home
from .batching import PIXELS, Normalize, Splits, holdout, rank_slices
from .progress import Progress

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FLIP_MODES = ("random", "alternate", "none")
LAYOUT = "`<root>/train/<class>/*.jpg` + `<root>/test/<class>/*.jpg` or `<root>/cifar-10-batches-py`"
_OFFICIAL = "cifar-10-batches-py"
_CACHE_FORMAT = 1


def _is_main_process() -> bool:
    """Rank 0 under torchrun, or a single process: the one that prints progress."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_data_root(data: str | os.PathLike | None, download: bool = True) -> Path:
    """``data``, else ``$DNAS_PRUNE_DATA``, else the user cache dir (downloading the official batches there)."""
    chosen = data if data is not None else os.environ.get("DNAS_PRUNE_DATA")
    if chosen is not None:
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise DataError(f"data directory {root} does not exist; expected {LAYOUT} (pass --data, data.root in a config, or set DNAS_PRUNE_DATA)")
        return root
    root = user_cache_home() / "cifar10"
    if (root / _OFFICIAL).is_dir():
        return root
    if download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types; the user needs one line either way
            raise DataError(
                f"could not download CIFAR-10 into {root} ({type(exc).__name__}: {exc}); "
                f"pass --data DIR (data.root in a config) holding {LAYOUT}"
            ) from None
        return root
    raise DataError(f"no CIFAR-10 found; pass --data DIR (data.root in a config) or set DNAS_PRUNE_DATA to a "
                    f"directory holding {LAYOUT}")


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

    @property
    def preprocess(self) -> dict:
        """How an image becomes the model's input, in plain data (see ``Splits.inference``)."""
        return {"pixels": PIXELS, "resize": None, "center_crop": None, "mean": list(self.mean), "std": list(self.std)}

    def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                device: str | torch.device = "cpu", channels_last: bool = False, rank: int = 0,
                world_size: int = 1, flip: str = "random", crop_padding: int = 4) -> BatchStream:
        return BatchStream(self, batch_size, train=train, seed=seed, epoch=epoch, device=device,
                           channels_last=channels_last, mean=self.mean, std=self.std, rank=rank, world_size=world_size,
                           flip=flip, crop_padding=crop_padding)


class CifarData(Splits[Split]):
    """CIFAR-10's splits, held in memory."""


def _class_files(split_dir: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        entries = [p for p in (split_dir / name).iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        found = sorted(p for p in entries if p.suffix.lower() in (".jpg", ".jpeg"))
        if len(found) < len(entries) or not found:  # a class read in part, or not at all, would skew the labels
            other = sorted({p.suffix.lower() for p in entries} - {".jpg", ".jpeg"})
            raise DataError(f"{split_dir / name}: {len(found)} JPEG images" + (f" and {len(entries) - len(found)} other "
                            f"images ({', '.join(other[:3])})" if other else "") + "; the CIFAR-style reader takes "
                            "same-size JPEGs only: use --data-kind imagefolder for other images")
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
    """A cache file named by the tree's path (its first part, shared by every version of the tree), file count and
    newest mtime, so edits invalidate it."""
    stamp = [str(root.resolve())]
    for split in ("train", "test", _OFFICIAL):
        directory = root / split
        if directory.is_dir():
            count, newest = 0, 0
            for dirpath, _, names in os.walk(directory):
                count += len(names)
                newest = max([newest] + [os.stat(os.path.join(dirpath, n)).st_mtime_ns for n in names])
            stamp.append(f"{split}:{count}:{newest}")
    place, key = (hashlib.sha256(text.encode()).hexdigest()[:16] for text in (stamp[0], "|".join(stamp)))
    return cache_dir() / f"cifar10-{place}-{key}.pt"


def _read_cached(root: Path) -> dict:
    path = _cache_path(root)
    unplaced = path.with_name(f"cifar10-{path.stem.rsplit('-', 1)[1]}.pt")  # this state, as older versions named it
    if unplaced.is_file() and not path.is_file():
        try:
            unplaced.rename(path)
        except OSError:
            path = unplaced
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
    except (OSError, DnasPruneError):  # a cache that cannot be written only costs a re-decode next time
        return cached
    for older in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.pt"):  # this tree before it was edited
        if older != path:
            try:
                older.unlink()
            except OSError:  # gone meanwhile, or not ours to remove
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
    train_idx, val_idx = holdout(labels, len(classes), val_size, limit_train, seed)
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
        flip: str = "random",
        crop_padding: int = 4,
    ) -> None:
        if crop_padding < 0:
            raise ValueError(f"crop padding must be >= 0, got {crop_padding}")
        self.split, self.train, self.device = split, train, torch.device(device)
        self.pad = crop_padding
        n = len(split)
        drop_last = train if drop_last is None else drop_last
        self.slices = rank_slices(n, batch_size, rank, world_size, drop_last, start_batch)
        self.normalize = Normalize(mean, std, self.device, channels_last)
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
