"""Progress a person can trust: a tqdm bar on a terminal, plain periodic lines anywhere else.

On a terminal (stdout and stderr both TTYs) :class:`Progress` is a tqdm bar with a postfix (loss, img/s, ...).
When the output goes to a file or a pipe it never writes ``\\r`` updates: it prints one plain line on stdout at
each ``every`` fraction of the total (if given) and whenever ``PLAIN_SECONDS`` have passed since the process's
last progress line, so a log shows steady lines and nothing stays silent for long: a bar that starts after a quiet
phase (loading, BN refitting, saving) speaks at its first update, not ``PLAIN_SECONDS`` after its own start.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from ..device.timing import QUIET_SECONDS as PLAIN_SECONDS  # longest silence between plain lines


def is_terminal() -> bool:
    """True when both stdout and stderr are terminals: only then are ``\\r``-redrawn bars readable."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Count ``total`` units under ``desc``; ``set_postfix`` values are shown on the bar or in each plain line.

    ``every``: in plain mode, also print a line at each multiple of this fraction of ``total`` (e.g. 0.25).
    ``enabled=False`` prints nothing at all.
    """

    last_plain_line: float | None = None  # when any Progress of this process last printed a plain line

    def __init__(self, total: int, desc: str, *, unit: str = "it", enabled: bool = True,
                 every: float | None = None, terminal: bool | None = None) -> None:
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.done = 0
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        earlier = Progress.last_plain_line  # the quiet phase before this bar counts as silence too
        self._last_line = self.start if earlier is None or earlier > self.start else earlier
        self._every = every
        self._next_mark = every
        self.bar: tqdm | None = None
        self.plain = enabled and not (is_terminal() if terminal is None else terminal)
        if enabled and not self.plain:
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.plain:
            return
        now = time.perf_counter()
        fraction = self.done / self.total if self.total else 1.0
        at_mark = self._next_mark is not None and fraction >= self._next_mark - 1e-9
        if at_mark:
            while self._next_mark is not None and fraction >= self._next_mark - 1e-9:
                self._next_mark += self._every
        if at_mark or now - self._last_line >= PLAIN_SECONDS:
            self._last_line = Progress.last_plain_line = now
            print(self.line(now), flush=True)

    def line(self, now: float | None = None) -> str:
        """The plain progress line: ``desc: 25% (8/31 steps) key value ... | ~12 s left``."""
        now = time.perf_counter() if now is None else now
        fraction = self.done / self.total if self.total else 1.0
        extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
        left = ""
        if 0 < self.done < self.total:
            left = f" | ~{format_duration((now - self.start) * (self.total - self.done) / self.done)} left"
        return f"{self.desc}: {fraction:.0%} ({self.done}/{self.total} {self.unit}){extra}{left}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
