"""Building, caching and checking a latency table: every grid cell timed beside a reference, whole models timed
beside the dense one for the constant and scale, the result cached per device setting.

Why every timing is paired: a shared CPU's speed drifts by tens of percent within seconds, so two timings taken
a minute apart do not compare. Each grid cell is timed with its forwards interleaved with those of one fixed
reference unit (the most used layer shape at mid-grid); the cell's value is the median over rounds of its time
over the reference's in the same round, times the reference's median over the whole build. Whole models are
timed the same way beside the dense model (:meth:`LatencyTable.measure_beside_dense`). The table is then
consistent within itself, whatever the machine did while it was built; what remains is the machine's speed of
the moment, which a ratio to the dense model timed side by side (what ``--target-latency`` reads) cancels and
milliseconds (``--target-latency-ms``) cannot.

Why one constant and one scale on top: the units alone do not see what the whole forward adds (the model's and
the blocks' Python calls, flatten) nor that in a real forward a layer's weights are not warm in cache from the
previous repeat. So whole models are measured too: the dense model and sixteen shrunk ones (random finalized
architectures at evenly spaced keep levels, seeded), and ``measured = constant + scale * sum(units)`` is fitted
through the dense model's point exactly (a budget is a fraction of the dense model, so the dense model must read
right: a fit free to miss it skewed every predicted fraction by as much) and by least squares on the
others' relative error (the error the budget feels). Two numbers, fitted on models spanning the latency range the
search moves through, keep the per-layer structure while anchoring the total to what the device measures; a scale
that is not positive is refused and the fit falls back to a constant offset alone, and a negative constant (which
predicted negative latencies for small models, so a floor below zero and targets no device reaches) to a scale
alone. ``experiments/latency_model.py``
checks the result on random architectures the fit did not see.

Cache. A table is built once per (parent spec, input size, batch size, threads, dtype, memory format, device,
torch version, grid step and size, allocator state) and kept as JSON in ``$DNAS_PRUNE_CACHE`` (else the user cache
directory the data loader uses), written atomically. ``memory_format="auto"`` is resolved once at build time by
timing the dense model in both layouts; the table records the layout it measured in and every later measurement
(:meth:`LatencyTable.measure`) uses it. Every timing runs with glibc keeping freed memory
(:mod:`dnas_prune.device.allocator`): without it, whether a batch-64 forward page-faults its activations afresh
depends on what the process ran before, and a table measured in one state did not describe the other. The key
names the device, not its state, so before a new search trusts a cached table, two of its fit models are timed
beside the dense one again (:func:`stale_error`); when their ratios moved more than ``STALE_ERROR`` since the
build, the table is measured again. A
resumed search keeps the table it started with.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...device.allocator import keep_freed_memory
from ...device.policy import (MEMORY_FORMAT_CHOICES, MEMORY_FORMATS, PRECISIONS, memory_format_name,
                              resolve_precision, using_threads)
from ...device.timing import Runner, measure_latency, paired_ratio, time_interleaved
from ...errors import DnasPruneError
from ...io.checkpoint import cache_dir
from ...io.pruned import default_input_size
from ...models import MODEL_NAMES, build_model, create_model, spec_of, validate_spec
from ...models.spec import Spec
from ...train.progress import Progress
from .cells import DTYPES, CellTimer, Timing, cell_module
from .table import LatencyTable, LayerTable, fit_constant_and_scale
from .units import plan_layers, spec_uses

DEFAULT_CHANNEL_STEP = 8
DEFAULT_POINTS = 10
# shrunk models measured beside the dense one to fit the constant and scale: keep 0.15, 0.20, ..., 0.90
FIT_KEEP_LEVELS = tuple(round(0.15 + 0.05 * i, 2) for i in range(16))
FIT_SEED = 0
# a grid cell over OUTLIER_FACTOR times all its neighbours is timed OUTLIER_RETIMES more times, keeping the fastest
OUTLIER_FACTOR, OUTLIER_RETIMES = 1.4, 2
# cells timed per axis of each layer shape, off the grid, to tell whether the device pads that width
PAD_PROBES = 2
# a cached table is checked before it is trusted: its fit models at these keep levels, timed beside the dense one
# now, must read their ratios within STALE_ERROR of what they read at the build, or the table is measured again
STALE_PROBE_LEVELS, STALE_ERROR = (0.3, 0.6), 0.15


# --------------------------------------------------------------------------------------------- random architectures
def random_spec(spec: Spec, rng: random.Random, channel_step: int, keep: float | None = None,
                remove: float | None = None) -> Spec:
    """A random finalized architecture of the dense ``spec``.

    ``keep`` (default: uniform in [0.15, 1]) sets the overall level: every stream and inner width is ``keep`` times
    its full width, jittered by a factor uniform in [0.6, 1.4], rounded to a multiple of ``channel_step`` (at least
    one step; widths at or below the step stay full). Each block is removed with probability ``remove`` (default
    ``0.5 * (1 - keep)``): an identity block disappears, a block with a projection keeps only its projection.
    Streams joined by identity shortcuts keep one width, as a supernet's stream group does.
    """
    keep = rng.uniform(0.15, 1.0) if keep is None else keep
    remove = 0.5 * (1.0 - keep) if remove is None else remove

    def width(full: int) -> int:
        if full <= channel_step:
            return full
        w = round(full * min(1.0, keep * rng.uniform(0.6, 1.4)) / channel_step) * channel_step
        return max(channel_step, min(full, w))

    out = copy.deepcopy(spec)
    out["stem"] = stream = width(spec["stem"])
    for stage in out["stages"]:
        if stage["blocks"] and stage["blocks"][0]["downsample"]:
            stage["width"] = width(stage["width"])
        else:
            stage["width"] = stream
        blocks = []
        for block in stage["blocks"]:
            if rng.random() < remove:
                if block["downsample"]:
                    blocks.append({"inner": None, "downsample": True})
                continue
            inner = None if block["inner"] is None else [width(w) for w in block["inner"]]
            blocks.append({"inner": inner, "downsample": block["downsample"]})
        stage["blocks"] = blocks
        stream = stage["width"]
    return validate_spec(out)


# --------------------------------------------------------------------------------------------- build / cache
def device_name(device: str) -> str:
    """What the table is tied to: the CPU model and the ISA torch dispatches to, or the GPU's name."""
    if device == "cuda":
        return f"cuda:{torch.cuda.get_device_name()}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu:{model}:{torch.backends.cpu.get_cpu_capability()}"


# Output channels a CPU convolution kernel computes per vector (fp32 lanes; oneDNN's bf16 kernels block by the same
# count), by the ISA torch dispatches to: a width that is not a multiple leaves a part-filled block per layer, whose
# cost moves with how the threads split the blocks (experiments/results/width_stability.md).
CHANNEL_BLOCKS = {"AVX512": 16, "AVX2": 8}


def channel_block(device: str) -> int | None:
    """The channel block of the convolution kernels on ``device`` (a table's ``settings["device"]``, as
    :func:`device_name` writes it), or None where it is not known (GPUs, other CPUs)."""
    kind, _, rest = device.partition(":")
    return CHANNEL_BLOCKS.get(rest.rpartition(":")[2]) if kind == "cpu" else None


@functools.lru_cache(maxsize=None)
def _registry_spec(name: str) -> str:
    with torch.device("meta"):
        return json.dumps(spec_of(create_model(name)), sort_keys=True)


def _resolve_model(model: str | Spec | nn.Module) -> tuple[str, Spec]:
    """(name, spec). A module or spec that is a registry model's gets that model's name, so that a search on the
    parent finds the table ``dnas-prune latency-table --model NAME`` built (the name is part of the cache key)."""
    if isinstance(model, str):
        if model not in MODEL_NAMES:
            raise DnasPruneError(f"unknown model {model!r}; known models: {', '.join(MODEL_NAMES)}")
        return model, json.loads(_registry_spec(model))
    spec = spec_of(model) if isinstance(model, nn.Module) else validate_spec(copy.deepcopy(model))
    key = json.dumps(spec, sort_keys=True)
    for name in MODEL_NAMES:
        if _registry_spec(name) == key:
            return name, spec
    return (type(model).__name__ if isinstance(model, nn.Module) else "spec"), spec


def table_settings(model: str | Spec | nn.Module, batch_size: int = 1, *, input_size: Sequence[int] | None = None,
                   threads: int | None = None, precision: str = "fp32", memory_format: str = "auto",
                   device: str = "cpu", channel_step: int = DEFAULT_CHANNEL_STEP,
                   points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """The key a table is built and cached under (checked, with everything resolved but ``auto`` memory format)."""
    name, spec = _resolve_model(model)

    def positive(value: Any, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DnasPruneError(f"{what} must be a positive integer, got {value!r}")

    positive(batch_size, "batch size")
    positive(channel_step, "channel step")
    positive(points, "grid points")
    if points < 2:
        raise DnasPruneError(f"grid points must be at least 2, got {points}")
    if threads is not None:
        positive(threads, "threads")
    if device not in ("cpu", "cuda"):
        raise DnasPruneError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DnasPruneError("device cuda requested but torch sees no CUDA device")
    if precision not in PRECISIONS:
        raise DnasPruneError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = resolve_precision(precision, torch.device(device))
    memory_format = memory_format_name(memory_format)
    if memory_format not in MEMORY_FORMAT_CHOICES:
        raise DnasPruneError(f"memory format must be one of {', '.join(MEMORY_FORMAT_CHOICES)}, got {memory_format!r}")
    size = tuple(int(v) for v in (input_size or default_input_size(spec)))
    if len(size) != 3 or min(size) < 1:
        raise DnasPruneError(f"input size must be 3 positive integers (C H W), got {list(input_size or [])}")
    spec_uses(spec, size)  # fails early on an input too small for the strides
    return {
        "model": name, "spec": spec, "input_size": list(size), "batch_size": batch_size,
        "threads": threads or torch.get_num_threads(), "dtype": dtype, "memory_format": memory_format,
        "device": device_name(device), "torch": str(torch.__version__), "channel_step": channel_step, "points": points,
        "allocator": keep_freed_memory(),  # tables measured with another allocator state do not describe this one
    }


def cache_path(settings: dict[str, Any], directory: str | os.PathLike | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(directory or cache_dir() / "latency") / f"{settings['model']}-bs{settings['batch_size']}-{digest}.json"


def _layout_trial(dense: nn.Module, settings: dict[str, Any], timing: Timing) -> dict[str, float]:
    """{layout: median ms} of the dense model in each layout, timed interleaved (so drift does not pick it)."""
    return measure_latency(dense, settings["input_size"], settings["batch_size"], threads=settings["threads"],
                           dtype=DTYPES[settings["dtype"]], memory_format="auto", warmup=timing.model_warmup,
                           repeats=timing.model_repeats, max_seconds=timing.model_seconds / 2)["layout_ms"]


def _outlier_cells(grid: list[list[float]]) -> list[tuple[int, int]]:
    """Cells over OUTLIER_FACTOR times every grid neighbour's value (up, down, left, right). A cell's time grows
    smoothly with its widths; a cell far above all of its neighbours was most likely timed during a slow spell
    of a shared machine that the reference, a smaller op, felt less. Such cells are timed again."""
    out = []
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            near = [grid[a][b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                    if 0 <= a < len(grid) and 0 <= b < len(row)]
            if near and value > OUTLIER_FACTOR * max(near):
                out.append((i, j))
    return out


def pad_probe_widths(axis: Sequence[int], step: int) -> list[int]:
    """Off-grid widths that tell whether the device pads an axis: one past a grid point whose next grid point is
    at most ``step`` further, where padding and interpolation disagree most. Grid points that are multiples of
    twice the step come first (a 16-channel SIMD block steps there on a step-8 grid); at most PAD_PROBES."""
    pairs = [a for a, b in zip(axis, axis[1:]) if a >= step and 2 <= b - a <= step]
    ordered = [a for a in pairs if a % (2 * step) == 0] + [a for a in pairs if a % (2 * step)]
    return [int(a) + 1 for a in ordered[:PAD_PROBES]]


def axis_pads(layer: LayerTable, axis: int, probes: Sequence[tuple[float, float, float]]) -> bool:
    """Whether the probes ((in width, out width, measured ms) off the grid on ``axis``) read closer to the padded
    model of that axis than to plain interpolation (relative error summed over the probes)."""
    if not probes:
        return False

    def error(pads: tuple[bool, bool]) -> float:
        model = LayerTable(layer.unit, layer.in_axis.tolist(), layer.out_axis.tolist(), layer.ms.tolist(),
                           step=layer.step, pads=pads)
        return sum(abs(float(model(cin, cout)) / ms - 1.0) for cin, cout, ms in probes)

    padded = (True, layer.pads[1]) if axis == 0 else (layer.pads[0], True)
    return error(padded) < error(layer.pads)


def _reference_runner(plan: dict[str, dict[str, Any]], settings: dict[str, Any], memory_format: str) -> Runner:
    """The unit every grid cell is timed beside: the most used layer shape at the middle of its grid. A shared
    CPU's speed drifts by tens of percent over seconds; a cell's time over the reference's in the same rounds
    does not, and the reference's median over the whole build turns those ratios back into milliseconds."""
    key, entry = max(plan.items(), key=lambda item: len(item[1]["uses"]))
    cin, cout = entry["in"][len(entry["in"]) // 2], entry["out"][len(entry["out"]) // 2]
    module, input_size = cell_module(entry["unit"], cin, cout, settings["batch_size"])
    runner = Runner(module, input_size, settings["batch_size"], memory_format, DTYPES[settings["dtype"]])
    runner.unit = f"{key} {cin}->{cout}"  # type: ignore[attr-defined]
    return runner


def build_table(settings: dict[str, Any], timing: Timing = Timing(), progress: bool = True,
                fit_keep_levels: Sequence[float] = FIT_KEEP_LEVELS) -> LatencyTable:
    """Measure every grid cell, then whole models to fit the constant and scale (see the module docstring)."""
    started, load_start = time.perf_counter(), os.getloadavg()
    spec, size = settings["spec"], settings["input_size"]
    plan = plan_layers(spec_uses(spec, size), settings["channel_step"], settings["points"])
    device = settings["device"].split(":")[0]
    timer = CellTimer(device, settings["batch_size"], settings["threads"], DTYPES[settings["dtype"]], "nchw")
    dense = build_model(spec)
    info: dict[str, Any] = {}
    memory_format = settings["memory_format"]
    if memory_format == "auto":  # one layout for the table: the faster one for the dense model
        trial = {fmt: timer(dense, size, timing.model_warmup, timing.model_repeats, timing.model_seconds / 2,
                            fmt)["median_ms"] for fmt in MEMORY_FORMATS} if device != "cpu" else \
            _layout_trial(dense, settings, timing)
        memory_format = min(trial, key=trial.get)
        info["memory_format_trial_ms"] = trial
    info["memory_format"] = timer.memory_format = memory_format
    rng = random.Random(FIT_SEED)
    fit_specs = [spec] + [random_spec(spec, rng, settings["channel_step"], keep=k) for k in fit_keep_levels]
    cells = sum(len(e["in"]) * len(e["out"]) for e in plan.values())
    step = settings["channel_step"]
    probe_plan = {key: [pad_probe_widths(e["in"], step), pad_probe_widths(e["out"], step)]
                  for key, e in plan.items()}
    cells += sum(len(p) for probes in probe_plan.values() for p in probes)
    noisy = 0
    threads = settings["threads"] if device == "cpu" else None
    reference = _reference_runner(plan, settings, memory_format) if device == "cpu" else None
    reference_times: list[float] = []
    grids: dict[str, list[list[float]]] = {}
    padding: dict[str, dict[str, Any]] = {}
    with using_threads(threads), Progress(cells + len(fit_specs) - 1, f"latency table {settings['model']} bs "
                                          f"{settings['batch_size']}", unit="cell", enabled=progress,
                                          every=0.1) as bar:
        def time_cell(entry: dict[str, Any], cin: int, cout: int) -> tuple[float, dict[str, Any]]:
            module, input_size = cell_module(entry["unit"], cin, cout, settings["batch_size"])
            if reference is None:  # (the grid's numbers are plain floats: no inference tensors leak)
                timed = timer(module, input_size, timing.cell_warmup, timing.cell_repeats, timing.cell_seconds)
                return timed["median_ms"], timed
            # timed beside the reference: the ratio, scaled below by the reference's overall median
            cell = Runner(module, input_size, settings["batch_size"], memory_format, DTYPES[settings["dtype"]])
            reference.times = []
            with torch.inference_mode():
                time_interleaved([reference, cell], timing.cell_warmup, timing.cell_repeats, timing.cell_seconds)
            reference_times.extend(reference.times)
            return paired_ratio(cell, reference), cell.summary()

        retimed = 0
        for key, entry in plan.items():
            bar.set_postfix(layer=key)
            grid = []
            for cin in entry["in"]:
                row = []
                for cout in entry["out"]:
                    value, timed = time_cell(entry, cin, cout)
                    row.append(value)
                    noisy += timed.get("warning") is not None
                    bar.update()
                grid.append(row)
            for i, j in _outlier_cells(grid):  # a slow spell of the machine, not the shape: the faster timing
                for _ in range(OUTLIER_RETIMES):
                    grid[i][j] = min(grid[i][j], time_cell(entry, entry["in"][i], entry["out"][j])[0])
                retimed += 1
            grids[key] = grid
            # does the device pad this key's widths? a few off-grid cells against both models of each axis
            layer = LayerTable(entry["unit"], entry["in"], entry["out"], grid, entry["uses"], step)
            probed: dict[str, list[tuple[float, float, float]]] = {}
            for axis, name in enumerate(("in", "out")):
                other = entry["out" if axis == 0 else "in"]
                probes = probed[name] = []
                for width in probe_plan[key][axis]:
                    cin, cout = (width, other[len(other) // 2]) if axis == 0 else (other[len(other) // 2], width)
                    probes.append((cin, cout, time_cell(entry, cin, cout)[0]))
                    bar.update()
                pads = list(layer.pads)
                pads[axis] = axis_pads(layer, axis, probes)
                layer.pads = (pads[0], pads[1])
            padding[key] = {"pads": list(layer.pads), "probes": probed}
        reference_ms = statistics.median(reference_times) * 1e3 if reference_times else 1.0
        layers = {key: LayerTable(entry["unit"], entry["in"], entry["out"],
                                  [[v * reference_ms for v in row] for row in grids[key]], entry["uses"], step,
                                  padding[key]["pads"])
                  for key, entry in plan.items()}
        info["padding"] = {key: {"pads": p["pads"], "probes": {axis: [[cin, cout, ms * reference_ms]
                                                                      for cin, cout, ms in probes]
                                                               for axis, probes in p["probes"].items()}}
                           for key, p in padding.items()}
        if reference is not None:
            info["reference"] = {"unit": reference.unit, "median_ms": reference_ms, "forwards": len(reference_times)}
        table = LatencyTable(settings, layers, info=info)
        bar.set_postfix(layer="whole models")
        timed_models = table.measure_beside_dense(fit_specs[1:], timing, on_each=bar.update)
    fit = [{"dense": True, "keep": None, "spec": spec, "measured_ms": timed_models["dense_ms"], "ratio": 1.0,
            "warning": None, "table_sum_ms": sum(table.layers_ms(spec).values())}]
    for keep, fit_spec, timed in zip(fit_keep_levels, fit_specs[1:], timed_models["models"]):
        fit.append({"dense": False, "keep": keep, "spec": fit_spec, "measured_ms": timed["ms"],
                    "ratio": timed["ratio"], "warning": timed["warning"],
                    "table_sum_ms": sum(table.layers_ms(fit_spec).values())})
    table.constant_ms, table.scale = fit_constant_and_scale(fit)
    table.info["fit"] = fit
    table.info["cells"] = {"count": cells, "noisy": noisy, "retimed": retimed}
    table.info["built"] = {"seconds": time.perf_counter() - started, "load_average": list(load_start),
                     "load_average_end": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "timing": timing.__dict__}
    return table


def latency_table(model: str | Spec | nn.Module, batch_size: int = 1, *, input_size: Sequence[int] | None = None,
                  threads: int | None = None, precision: str = "fp32", memory_format: str = "auto",
                  device: str = "cpu", channel_step: int = DEFAULT_CHANNEL_STEP, points: int = DEFAULT_POINTS,
                  rebuild: bool = False, progress: bool = True, directory: str | os.PathLike | None = None,
                  timing: Timing = Timing(), check: bool = True) -> LatencyTable:
    """The latency table of ``model`` (a registry name, a spec or a ResNet: the parent the search starts from),
    loaded from the cache or built (and cached) when absent, unreadable, of another format or ``rebuild``. With
    ``check``, a cached table is first checked against the device (:func:`stale_error`) and measured again when it
    no longer matches. A resumed search does not check (:func:`table_for_settings`): it keeps the table it began with.

    ``threads`` defaults to torch's current setting and is fixed while measuring; ``precision`` ``auto`` resolves
    as training's does (bf16 where the hardware runs it natively); ``input_size`` defaults to the family's.
    """
    settings = table_settings(model, batch_size, input_size=input_size, threads=threads, precision=precision,
                              memory_format=memory_format, device=device, channel_step=channel_step, points=points)
    if check and not rebuild:
        table = cached_table(settings, directory)
        if table is not None:
            if progress:
                print(f"checking the cached latency table {table.path} against this device ({len(STALE_PROBE_LEVELS)} "
                      "shrunk models timed beside the dense one)", flush=True)
            error = stale_error(table, timing)
            if error <= STALE_ERROR:
                return table
            print(f"the device has moved since the cached latency table {table.path} was measured (shrunk models "
                  f"timed beside the dense one read up to {error:.0%} other ratios now); measuring it again",
                  flush=True)
            rebuild = True
    return table_for_settings(settings, rebuild=rebuild, progress=progress, directory=directory, timing=timing)


def stale_error(table: LatencyTable, timing: Timing = Timing()) -> float:
    """How far the device has moved since ``table`` was measured: the largest relative change of the pruned/dense
    ratio of shrunk models (the table's fit models at STALE_PROBE_LEVELS, with blocks removed as a search removes
    them) timed beside the dense model now, against what they read when the table was built. A cache key names the
    device, not its state: a shared machine's neighbours, clocks or memory bandwidth can change after a table is
    measured. What the table's fit misses is not drift and a rebuild would not mend it, so it is not counted; a
    table that did not record its fit (older files), or whose reading of those models was noisy, is read against
    its predictions instead."""
    fitted = {f["keep"]: f for f in table.info.get("fit", []) if not f["dense"] and not f.get("warning")}
    if all(k in fitted for k in STALE_PROBE_LEVELS):
        probes = [fitted[k]["spec"] for k in STALE_PROBE_LEVELS]
        then = [fitted[k]["ratio"] for k in STALE_PROBE_LEVELS]
    else:
        rng = random.Random(f"stale/{FIT_SEED}")
        probes = [random_spec(table.dense_spec, rng, table.settings["channel_step"], keep=k, remove=0.0)
                  for k in STALE_PROBE_LEVELS]
        dense = table.predict_ms(table.dense_spec)
        then = [table.predict_ms(spec) / dense for spec in probes]
    timed = table.measure_beside_dense(probes, timing)["models"]
    return max(abs(ratio - t["ratio"]) / t["ratio"] for ratio, t in zip(then, timed))


def cached_table(settings: dict[str, Any], directory: str | os.PathLike | None = None) -> LatencyTable | None:
    """The cached table of ``settings``, or None when absent, unreadable or of other settings (another format)."""
    path = cache_path(settings, directory)
    if not path.is_file():
        return None
    try:
        table = LatencyTable.load(path)
    except (DnasPruneError, KeyError, TypeError, ValueError):
        return None  # a stale or damaged cache entry is rebuilt, never trusted
    return table if table.settings == settings else None


def table_for_settings(settings: dict[str, Any], *, rebuild: bool = False, progress: bool = True,
                       directory: str | os.PathLike | None = None, timing: Timing = Timing()) -> LatencyTable:
    """The table of ``settings`` (as :func:`table_settings` gives and ``table.settings`` keeps): from the cache, or
    measured now. How a search checkpoint finds its latency model again."""
    path = cache_path(settings, directory)
    table = None if rebuild else cached_table(settings, directory)
    if table is not None:
        return table
    table = build_table(settings, timing, progress)
    try:
        table.save(path)
    except (OSError, DnasPruneError) as exc:  # a cache that cannot be written only costs a rebuild next time
        print(f"warning: could not cache the latency table in {path} ({exc})", flush=True)
    return table
