"""Freed memory kept: a batch-64 forward stops page-faulting its activations afresh (device/allocator.py).

Each state runs in a fresh interpreter (the setting is process-wide and cannot be undone). Page faults are counted,
not timed, so the check holds on a busy machine.
"""

import json
import platform
import subprocess
import sys

import pytest

from dnas_prune import keep_freed_memory

CHILD = """
import json, resource, sys, torch
from torch import nn
from dnas_prune.device.allocator import keep_freed_memory
state = keep_freed_memory() if sys.argv[1] == "kept" else "default"
torch.set_num_threads(1)
# activations of 64 x 16 x 32 x 32 fp32 (4 MiB each), as in a CIFAR ResNet's first stage at batch 64
model = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())]).eval()
x = torch.randn(64, 16, 32, 32)
with torch.inference_mode():
    for _ in range(5):
        model(x)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model(x)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5
print(json.dumps({"state": state, "faults": faults}))
"""


def run_child(state: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, state], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_says_what_it_did_and_is_idempotent():
    first = keep_freed_memory()
    assert first == keep_freed_memory()
    if platform.libc_ver()[0] == "glibc":
        assert first == "glibc, freed memory kept"
    else:
        assert first.startswith("unchanged")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting exists only in glibc")
def test_a_forward_with_freed_memory_kept_does_not_fault_its_activations_in_again():
    default, kept = run_child("default"), run_child("kept")
    assert kept["state"] == "glibc, freed memory kept"
    # 4 MiB is 1024 pages: the default state faults whole activations in again on every forward; kept, none
    # usually, but the kernel may take back an odd page run, so the bound is half an activation per forward
    assert default["faults"] > 1000, default
    assert kept["faults"] < 512 and kept["faults"] * 10 < default["faults"], (kept, default)
