"""How much of the machine other processes use while this one times something.

A timing shares the cores with whatever else runs: a second training, its data loaders, a build. When the others
want more cores than the timing leaves free, forwards are preempted at random (a longer one more often), and a
pruned/dense ratio can read off by more than a latency landing's window. Nothing in the timings says so; the
kernel's counters do (Linux ``/proc/stat``): the CPU time spent on this machine, minus this process's and its
finished children's, over the wall time.
"""

from __future__ import annotations

import os
import resource
import time
from types import TracebackType

CROWDED_MARGIN = 0.1  # cores: what daemons use in the background stays well under it


def _busy_seconds() -> float | None:
    """CPU seconds every process on this machine has run (user, nice, system, irq, softirq), or None off Linux.
    Steal is left out: it is time the hypervisor gave to other machines, not to processes here."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have finished (a new process timing a pair is one)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OthersCpu:
    """``with OthersCpu() as others: ...`` leaves ``others.cores``: the cores other processes kept busy on average
    during the block (None where the kernel does not say). A child process counts as this one's once it has
    finished within the block."""

    cores: float | None = None

    def __enter__(self) -> "OthersCpu":
        self._start = (time.monotonic(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        wall, busy, own = time.monotonic(), _busy_seconds(), _own_seconds()
        wall0, busy0, own0 = self._start
        if busy is not None and busy0 is not None and wall > wall0:
            self.cores = max(0.0, ((busy - busy0) - (own - own0)) / (wall - wall0))


def crowded(others_cores: float | None, threads: int) -> bool:
    """Whether other processes wanted more cores than a timing at ``threads`` threads left them."""
    return others_cores is not None and others_cores > max(0, (os.cpu_count() or 1) - threads) + CROWDED_MARGIN
