"""torchrun: a 2-process gloo search makes the same gate decisions as 1 process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnas_prune.io.checkpoint import safe_load
from dnas_prune.cli import main

from conftest import write_tree

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_process_search_matches_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_tree(tmp_path / "cifar", {"train": 40, "test": 4})
    env = {**os.environ, "DNAS_PRUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["-m", "dnas_prune", "search", "--model", "cifar_resnet20", "--data", str(data), "--target-macs", "0.5",
            "--epochs", "2", "--batch-size", "48", "--val-size", "24", "--precision", "fp32", "--memory-format",
            "contiguous", "--gate-lr", "0.05", "--no-progress", "--no-tensorboard", "--seed", "1",
            # The Taylor prior re-ranks all gates at once from gradients that per-rank BN statistics perturb, which
            # the drift bound below does not cover; the gamma prior keeps this a test of the DDP plumbing.
            "--prior", "gamma"]
    monkeypatch.setenv("DNAS_PRUNE_CACHE", env["DNAS_PRUNE_CACHE"])  # the 1-process reference runs in this process
    assert main([*args[2:], "--out", str(tmp_path / "one")]) == 0  # (conftest: 1 thread, as OMP_NUM_THREADS=1)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for mistake in ("gate logits changed", "no gate got a gradient", "more Pruner steps"):  # Pruner._check_the_loop
        assert mistake not in run.stderr, run.stderr[-3000:]

    one = safe_load(tmp_path / "one" / "supernet.pt", "a search checkpoint")
    two = safe_load(tmp_path / "two" / "supernet.pt", "a search checkpoint")
    gates = [k for k in one["model"] if k.endswith(".logits")]
    assert gates
    for key in gates:
        a, b = one["model"][key], two["model"][key]
        # Per-rank BatchNorm statistics (no SyncBatchNorm on CPU) are the only difference between the runs. The gate
        # optimizer's steps are normalized to about lr, so where that noise changes a gradient the runs drift apart
        # by up to ~2·lr per step: 4 steps x 0.1 here, with slack. No decision may flip.
        torch.testing.assert_close(b, a, rtol=0, atol=0.45, msg=key)
        assert torch.equal(a > 0, b > 0), key
    for run in (one, two):
        assert 0.49 <= run["metadata"]["summary"]["final"]["macs_ratio"] <= 0.51
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_the_cli_leaves_the_process_group_even_when_the_command_fails(tmp_path: Path) -> None:
    # A gloo group left for the interpreter's exit to tear down can abort a rank after its run succeeded (SIGABRT,
    # "terminate called without an active exception"), failing the torchrun launch above now and then.
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["finalize", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out.pt")]) == 2
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
