"""A latency model of the device: per-layer lookup tables over the widths the search can reach (issue 28).

The pieces, in the order a table is made and used:

- ``units``: what a ResNet is cut into (a conv with its BN and ReLU, an add, a ReLU, the pool + fc), keyed by layer
  shape, and the grid of (in, out) widths each key is measured on;
- ``cells``: how one grid cell is timed (the module standing for a unit, the timer with a table's settings);
- ``table``: the measured grids, read by interpolation (padded widths rounded up), plus a fitted constant and
  scale: the predicted latency of a finalized model, or the differentiable expected latency of a supernet;
- ``build``: measuring a table (cells beside a reference, whole models beside the dense one), caching it per device
  setting and checking a cached one against the device before a search trusts it;
- ``pairs``: the dense and a pruned model timed side by side for a while in a new process (``apart``), what a
  landing measures.

``latency_table(model, batch_size)`` is the entry point: from the cache, or measured now.
"""

from .build import (DEFAULT_CHANNEL_STEP, DEFAULT_POINTS, FIT_KEEP_LEVELS, STALE_ERROR, axis_pads, build_table,
                    cache_path, cached_table, channel_block, device_name, latency_table, pad_probe_widths,
                    random_spec, stale_error, table_for_settings, table_settings)
from .cells import DTYPES, Timing, cell_module
from .table import (TABLE_FORMAT, LatencyTable, LatencyTerms, LayerTable, SupernetLatency, padded_width,
                    supernet_terms)
from .units import LayerUse, grid_axis, layer_uses, plan_layers, spec_uses, unit_key

__all__ = [
    "DEFAULT_CHANNEL_STEP", "DEFAULT_POINTS", "DTYPES", "FIT_KEEP_LEVELS", "STALE_ERROR", "TABLE_FORMAT",
    "LatencyTable", "LatencyTerms", "LayerTable", "LayerUse", "SupernetLatency", "Timing", "axis_pads", "build_table",
    "cache_path", "cached_table", "cell_module", "channel_block", "device_name", "grid_axis", "latency_table",
    "layer_uses", "pad_probe_widths", "padded_width", "plan_layers", "random_spec", "spec_uses", "stale_error",
    "supernet_terms", "table_for_settings", "table_settings", "unit_key",
]
