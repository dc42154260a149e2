"""ImageNet-style trees end to end: `dnas-prune run` with data.kind = "imagefolder", reproducible rank-sliced
batches from DataLoader workers, and a one-line error for a tree of the wrong layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dnas_prune.cli import main
from dnas_prune.train.imagefolder import load_imagefolder
from dnas_prune.errors import DataError
from dnas_prune.io.pruned import load_pruned_with_metadata

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "resnet50_imagefolder.toml"
# The shipped GPU recipe cut down to resnet18 at 64x64 on CPU: one epoch of batch 8 per training stage.
TINY = [
    "device='cpu'", "model.name='resnet18'", "data.image_size=64", "data.workers=0", "data.val_size=3",
    "progress=false", "tensorboard=false", "export.formats=['onnx']", "report.batch_sizes=[1, 2]",
    "report.max_seconds=0.05",
    *(f"{stage}.{key}" for stage in ("pretrain", "search", "finetune")
      for key in ("epochs=1", "batch_size=8", "memory_format='contiguous'")),
    "pretrain.warmup_epochs=0.0", "search.warmup_epochs=0.0",  # the finetune continues the search's schedule
]


def batches(data_split, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(data_split.batches(8, **kw))


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.slow
def test_run_end_to_end(tiny_imagenet: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = ["run", str(CONFIG), "--out", str(out), "--set", f"data.root={tiny_imagenet}"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert all(f"[{stage}] done" in printed for stage in ("pretrain", "search", "finalize", "finetune", "export", "report"))
    for name in ("report.md", "report.json", "export/model.onnx"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "resnet18" and report["latency"]["input_size"] == [3, 64, 64]
    assert 0 < report["pruned"]["macs"] < report["dense"]["macs"]
    model, metadata = load_pruned_with_metadata(out / "finetune" / "pruned.pt")
    assert metadata["input_size"] == [3, 64, 64] and metadata["macs"] == report["pruned"]["macs"]
    assert metadata["preprocess"]["resize"] == 73 and metadata["preprocess"]["center_crop"] == 64  # the eval transform
    assert metadata["classes"] == sorted(d.name for d in (tiny_imagenet / "train").iterdir())
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert main(["profile", str(out / "finetune" / "pruned.pt"), "--batch-sizes", "1", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert "input: 3x64x64" in printed and "of the dense model's" in printed


def test_batches_are_deterministic_and_rank_sliced(tiny_imagenet: Path) -> None:
    data = load_imagefolder(tiny_imagenet, val_size=3, image_size=16, workers=0)
    assert (len(data.train), len(data.val), len(data.test)) == (21, 3, 12)
    assert data.classes == ["cat", "dog", "frog"] and data.train.input_size == (3, 16, 16)
    first = batches(data.train, train=True, seed=3, epoch=1)
    assert [x.shape for x, _ in first] == [(8, 3, 16, 16)] * 2  # the last partial batch is dropped
    torch.manual_seed(123)  # the global RNG plays no part, and is left alone
    state = torch.get_rng_state()
    assert same(first, batches(data.train, train=True, seed=3, epoch=1))
    assert torch.equal(state, torch.get_rng_state())
    assert not same(first, batches(data.train, train=True, seed=3, epoch=2))
    parts = [batches(data.train, train=True, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(first, *parts):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with_workers = load_imagefolder(tiny_imagenet, val_size=3, image_size=16, workers=2)
    assert same(first, batches(with_workers.train, train=True, seed=3, epoch=1))
    test = batches(data.test, train=False)
    assert [len(y) for _, y in test] == [8, 4] and torch.cat([y for _, y in test]).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert same(test, batches(with_workers.test, train=False, seed=9, epoch=5))  # eval: no randomness
    with pytest.raises(DataError, match="flip alternate is for CIFAR"):
        batches(data.train, train=True, flip="alternate")
    clean = batches(data.train, train=True, seed=3, epoch=1, flip="none", crop_padding=0)  # a clean epoch
    order = torch.randperm(21, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))[:16]
    labels = torch.tensor([data.train.samples[i][1] for i in order.tolist()])
    assert torch.equal(torch.cat([y for _, y in clean]), labels)  # shuffled as a training epoch
    evaluated = torch.cat([x for x, _ in batches(data.train, train=False)])
    assert torch.equal(torch.cat([x for x, _ in clean]), evaluated[order])  # under the eval transform


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_one_line_error(tiny_imagenet: Path, workers: int) -> None:
    bad = tiny_imagenet / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    data = load_imagefolder(tiny_imagenet, val_size=0, image_size=16, workers=workers)
    with pytest.raises(DataError) as info:
        batches(data.train, train=True) + batches(data.val, train=False)
    assert str(info.value).startswith(f"cannot read image {bad}") and "\n" not in str(info.value)


def test_wrong_layout_is_one_line_from_the_cli(tiny_imagenet: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny_imagenet / "val").rename(tiny_imagenet / "test")  # a CIFAR-style tree
    with pytest.raises(DataError, match="wrong layout"):
        load_imagefolder(tiny_imagenet)
    for args in (["train", "--model", "resnet18", "--data-kind", "imagefolder", "--data", str(tiny_imagenet),
                  "--out", str(tmp_path / "train")],
                 ["run", str(CONFIG), "--set", f"data.root={tiny_imagenet}", "--out", str(tmp_path / "run")]):
        capsys.readouterr()
        code = main(args)  # in-process; test_cli_errors.py checks that a real process exits the same way
        stderr = capsys.readouterr().err
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert "wrong layout" in lines[0] and "`<root>/train/<class>/*` + `<root>/val/<class>/*`" in lines[0]
