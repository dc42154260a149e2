"""The new process of ``pairs.time_pairs_apart``: ``python -m dnas_prune.search.latency.apart``.

Reads the request (a table as ``LatencyTable.to_dict``, two specs, how long and how often) as JSON on stdin, and
prints one JSON line ``[dense_ms, pruned_ms, ratio]`` per side-by-side timing as it is done.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .cells import Timing
from .pairs import time_pairs_here
from .table import LatencyTable


def main() -> int:
    request: dict[str, Any] = json.loads(sys.stdin.read())
    table = LatencyTable.from_dict(request["table"])
    time_pairs_here(table, request["dense"], request["pruned"], request["at_least"], request["seconds"],
                    Timing(**request["timing"]), on_pair=lambda pair: print(json.dumps(pair), flush=True),
                    threads=request.get("threads"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
