"""A killed search resumes exactly, and a crash during a checkpoint write never loses the previous one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dnas_prune.errors import CheckpointError
from dnas_prune.checkpoint import atomic_torch_save, safe_load

from conftest import write_tree

REPO = Path(__file__).resolve().parents[1]


def search_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dnas_prune", "search", "--model", "cifar_resnet20", "--data", str(data),
            "--target-macs", "0.5", "--epochs", "3", "--batch-size", "8", "--val-size", "8", "--seed", "3",
            "--out", str(out), "--no-progress", "--no-tensorboard", "--memory-format", "contiguous", *extra]


def test_search_killed_with_sigkill_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_tree(tmp_path / "cifar", {"train": 40, "test": 4})
    env = {**os.environ}
    subprocess.run(search_command(data, tmp_path / "straight"), check=True, capture_output=True, cwd=REPO, env=env,
                   timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(search_command(data, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "metrics.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the search ended before it could be killed"
    process.send_signal(signal.SIGKILL)  # in epoch 2, after epoch 1's checkpoint
    process.wait()
    assert safe_load(killed / "supernet.pt", "a search checkpoint")["epoch"] == 1
    subprocess.run(search_command(data, killed, "--resume"), check=True, capture_output=True, cwd=REPO, env=env,
                   timeout=600)

    a = safe_load(tmp_path / "straight" / "supernet.pt", "a search checkpoint")
    b = safe_load(killed / "supernet.pt", "a search checkpoint")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=1e-4, msg=key)


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


def test_process_killed_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1}, path)
    writer = (
        "import sys, torch\n"
        "from dnas_prune.checkpoint import atomic_torch_save\n"
        "atomic_torch_save({'epoch': 2, 'big': torch.randn(64, 1024, 1024)}, sys.argv[1])\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer, str(path)], cwd=REPO)
    deadline = time.time() + 120
    while not any(p.name != "ckpt.pt" for p in tmp_path.iterdir()) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the writer finished before it could be killed"
    assert safe_load(path, "a checkpoint")["epoch"] == 1
