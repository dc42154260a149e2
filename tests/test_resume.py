"""An interrupted search resumes exactly, and a crash or kill during a checkpoint write never loses the previous one.

Interruptions are deterministic: a hook stops the run after a given step (no kill timed by polling), and a kill
during a write is simulated by looking at the disk at the moment it would land.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from dnas_prune.io import checkpoint as checkpoint_module
from dnas_prune.io.checkpoint import atomic_torch_save, safe_load
from dnas_prune.cli import main
from dnas_prune import stages
from dnas_prune.train.loop import TrainHooks

from conftest import write_tree

# 3 classes x 24 train images, 8 held out for val: 64 images, 8 steps of batch 8 per epoch, 3 epochs.
STEPS_PER_EPOCH = 8
STOP_AT = STEPS_PER_EPOCH + 3  # mid-way through epoch 2: its checkpoint is epoch 1's, 3 steps of work are lost
TIMING = {"img_per_s", "epoch_time"}


class AfterEachStep(TrainHooks):
    """Calls ``action(global_step)`` after each step, once the search's own callback ran."""

    def __init__(self, action) -> None:
        self.action = action

    def after_step(self, trainer, global_step: int, metrics: dict) -> None:
        self.action(global_step)


def observe_search(monkeypatch: pytest.MonkeyPatch, action) -> None:
    """Make ``dnas-prune search`` call ``action(step)`` after every step, besides whatever callbacks it passes."""
    real_search = stages.search

    def search(*args, callbacks=(), **kwargs):
        return real_search(*args, callbacks=[*callbacks, AfterEachStep(action)], **kwargs)

    monkeypatch.setattr(stages, "search", search)


def stop_at(step: int):
    def action(global_step: int) -> None:
        if global_step == step:
            raise KeyboardInterrupt  # as Ctrl-C would
    return action


def search_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["search", "--model", "cifar_resnet20", "--data", str(data), "--target-macs", "0.5", "--epochs", "3",
            "--batch-size", "8", "--val-size", "8", "--seed", "3", "--out", str(out), "--no-progress",
            "--no-tensorboard", "--memory-format", "contiguous", "--precision", "fp32", *extra]


@pytest.mark.slow
def test_search_interrupted_mid_epoch_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    data = write_tree(tmp_path / "cifar", {"train": 24, "test": 4})
    assert main(search_args(data, tmp_path / "straight")) == 0

    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        observe_search(patch, stop_at(STOP_AT))
        assert main(search_args(data, cut)) == 130  # main's answer to Ctrl-C
    saved = safe_load(cut / "supernet.pt", "a search checkpoint")
    assert (saved["epoch"], saved["global_step"]) == (1, STEPS_PER_EPOCH)  # the last epoch boundary, nothing after
    assert not (cut / "search.json").exists()

    steps: list[int] = []
    with monkeypatch.context() as patch:
        observe_search(patch, steps.append)
        assert main(search_args(data, cut, "--resume")) == 0
    assert steps == list(range(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH + 1))  # resumed: epochs 2 and 3 only
    a = safe_load(tmp_path / "straight" / "supernet.pt", "a search checkpoint")
    b = safe_load(cut / "supernet.pt", "a search checkpoint")
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # bit for bit: same batches, same RNG, same optimizer and controller state
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=0, msg=key)
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in b["history"]] == \
           [{k: v for k, v in m.items() if k not in TIMING} for m in a["history"]]
    summaries = [json.loads((run / "search.json").read_text()) for run in (tmp_path / "straight", cut)]
    for summary in summaries:
        summary.pop("history")  # compared above, without its timings
    assert summaries[0] == summaries[1]


def test_crash_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = safe_load(path, "a checkpoint")
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_a_kill_at_any_point_of_a_write_leaves_a_loadable_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A SIGKILL runs no clean-up, so what counts is the disk at the instant it lands: looked at half-way through
    the bytes, after the fsync before the rename, and after the rename, the path holds one whole checkpoint."""
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1}, path)
    seen: list[tuple[int, list[str]]] = []

    def look() -> None:
        seen.append((safe_load(path, "a checkpoint")["epoch"], sorted(p.name for p in tmp_path.iterdir())))

    real_save, real_replace = torch.save, os.replace

    def save_half_then_look(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half of a checkpoint")
        f.flush()
        look()
        f.seek(0)
        f.truncate()
        real_save(obj, f, *args, **kwargs)

    def replace_looking(src, dst):
        look()
        real_replace(src, dst)
        look()

    monkeypatch.setattr(torch, "save", save_half_then_look)
    monkeypatch.setattr(os, "replace", replace_looking)
    atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    (half, half_files), (before, before_files), (after, after_files) = seen
    assert (half, before, after) == (1, 1, 2)
    assert len(half_files) == len(before_files) == 2  # the temp file was beside it, in a folder of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    (tmp_path / ".ckpt.pt.killed00.tmp").mkdir()  # what a SIGKILL during a write leaves: the next write clears it
    (tmp_path / ".ckpt.pt.killed00.tmp" / "ckpt.pt").write_bytes(b"PK half")
    (tmp_path / ".ckpt.pt.older000.tmp.pt").write_bytes(b"PK half")  # the temp file of earlier versions
    kept = [".ckpt.pt.bak.writing0.tmp", ".ckpt.pt.writing0.tmp", ".other.pt.kept0000.tmp"]
    for name in kept:  # a writer of this file still at work (recent), another file's
        (tmp_path / name).mkdir()
    hour_ago = time.time() - 2 * checkpoint_module.STALE_SECONDS
    for name in (".ckpt.pt.killed00.tmp", ".ckpt.pt.older000.tmp.pt", kept[0], kept[2]):
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    atomic_torch_save({"epoch": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "ckpt.pt"])
