"""Shared fixtures: the real CIFAR-10 tree (skipped when absent), a tiny fake one built per test, and the tiny
model, data and config the trainer tests run on."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg

from dnas_prune.train.cifar import CifarData, Split
from dnas_prune.models import cifar_resnet
from dnas_prune.train.loop import TrainConfig, TrainHooks

REPO = Path(__file__).resolve().parents[1]

# Unit tests use tiny tensors: one intra-op thread avoids OpenMP spin-waiting when cores are shared, and leaves
# the parallelism to pytest-xdist's workers, one per core (pyproject.toml).
torch.set_num_threads(1)
TINY_CLASSES = ("cat", "dog", "frog")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reads the real CIFAR-10 tree is marked ``real_data``: the fixture is the mark."""
    for item in items:
        if {"cifar_root", "small_cifar_root"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


def real_cifar_root() -> Path:
    """Where the real CIFAR-10 tree is: ``$DNAS_PRUNE_DATA``, else ``../shared/data/cifar10-jpeg`` next to the repo."""
    return Path(os.environ.get("DNAS_PRUNE_DATA") or REPO / ".." / "shared" / "data" / "cifar10-jpeg").resolve()


@pytest.fixture
def cifar_root() -> Path:
    """The real CIFAR-10 tree (real_cifar_root), or the test is skipped."""
    root = real_cifar_root()
    if not (root / "train").is_dir() and not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 not found at {root}")
    return root


@pytest.fixture(scope="session")
def small_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slice of the real CIFAR-10 tree (symlinks to 200 training and 50 test images a class), for CLI runs whose
    checks do not depend on how much data there is: evaluating the whole test split would be most of their time."""
    real = real_cifar_root()
    if not (real / "train").is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {real}")
    root = tmp_path_factory.mktemp("cifar10-slice")
    for split, per_class in (("train", 200), ("test", 50)):
        for folder in sorted(p for p in (real / split).iterdir() if p.is_dir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:per_class]:
                (root / split / folder.name / image.name).symlink_to(image)
    return root


def write_tree(root: Path, splits: dict[str, int], classes=TINY_CLASSES, seed: int = 0, size: int = 32) -> Path:
    """An ImageFolder tree of random ``size``x``size`` JPEGs, ``splits`` mapping split name -> images per class."""
    generator = torch.Generator().manual_seed(seed)
    warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
    for split, per_class in splits.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
                (folder / f"{i:04d}.jpg").write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())
    return root


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """3 classes x (12 train + 4 test) JPEGs; the decode cache goes to tmp_path, not the user's cache."""
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    return write_tree(tmp_path / "cifar", {"train": 12, "test": 4})


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    """An ImageNet-style tree: 3 classes x (8 train + 4 val) 48x48 JPEGs."""
    return write_tree(tmp_path / "imagenet", {"train": 8, "val": 4}, size=48)


def make_synthetic(n_train: int = 256, n_eval: int = 64, classes: int = 4, seed: int = 0):
    """A learnable toy CIFAR: each class has its own mean colour under uniform noise."""
    from dnas_prune.train.cifar import CifarData, Split

    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.arange(n) % classes
        colours = torch.linspace(40, 215, classes)[labels].view(n, 1, 1, 1)
        noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=generator)
        return Split((colours + noise).clamp(0, 255).to(torch.uint8), labels)

    return CifarData(split(n_train), split(n_eval), split(n_eval), [f"c{i}" for i in range(classes)])


@pytest.fixture
def synthetic_data():
    return make_synthetic()


def read_events(log_dir: Path):
    """Everything TensorBoard wrote under ``log_dir``, nothing sampled away."""
    from tensorboard.backend.event_processing import event_accumulator

    guidance = {kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    return event_accumulator.EventAccumulator(str(log_dir), size_guidance=guidance).Reload()


def tiny_data(n: int = 32) -> CifarData:
    """Random 16x16 images of 3 classes: enough for the trainer to run, nothing to learn."""
    g = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        return Split(torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=g),
                     torch.randint(0, 3, (count,), generator=g))

    return CifarData(train=split(n), val=split(8), test=split(8), classes=["a", "b", "c"])


def tiny_model(seed: int = 0) -> nn.Module:
    """A 3-class ResNet-8 with widths 4/8/8, seeded so two calls build the same weights."""
    torch.manual_seed(seed)
    return cifar_resnet(8, num_classes=3, widths=(4, 8, 8))


def tiny_train_config(**overrides) -> TrainConfig:
    """Two epochs of two steps on :func:`tiny_data`."""
    base = dict(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5, memory_format="contiguous", progress=False)
    return TrainConfig(**{**base, **overrides})


class Interrupt(TrainHooks):
    """Stops a run at the start of its second epoch, as Ctrl-C would."""

    def on_epoch_start(self, trainer, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
