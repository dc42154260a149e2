"""The latency model (dnas_prune.search.latency): interpolation, gradients, the supernet term mapping, the cache
and the ``latency-table`` command. Tables here are synthetic or measured on a tiny model with a tiny grid: nothing
asserts a wall-clock time."""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dnas_prune.errors import DnasPruneError
from dnas_prune.search import latency
from dnas_prune.search.latency import build as latency_build
from dnas_prune.search.latency import pairs as latency_pairs
from dnas_prune.search.latency import table as latency_table_module
from dnas_prune.cli import main
from dnas_prune.models import build_model, create_model, spec_of, validate_spec
from dnas_prune.search.fold import fold
from dnas_prune.search.latency import (LatencyTable, LayerTable, Timing, grid_axis, latency_table, plan_layers,
                                       random_spec, spec_uses, table_settings)
from dnas_prune.search.landing import LANDING_TIMINGS, settled
from dnas_prune.search.supernet import Supernet

from test_cli_errors import assert_one_line_error, cli

TINY = {
    "format": 1, "family": "cifar", "block": "basic", "num_classes": 3, "stem": 4,
    "stages": [{"width": 4, "stride": 1, "blocks": [{"inner": [4], "downsample": False}]},
               {"width": 8, "stride": 2, "blocks": [{"inner": [8], "downsample": True}]}],
}
FAST = Timing(cell_warmup=1, cell_repeats=3, cell_seconds=0.01, model_warmup=1, model_repeats=3, model_seconds=0.05)


def synthetic_table(spec: dict, input_size, channel_step: int = 8, points: int = 5, constant: float = 0.1,
                    scale: float = 1.2, **settings) -> LatencyTable:
    """A table whose cells follow a known, non-bilinear function of the widths (no timing)."""
    plan = plan_layers(spec_uses(spec, input_size), channel_step, points)
    layers = {key: LayerTable(e["unit"], e["in"], e["out"],
                              [[0.01 + 1e-4 * i ** 0.9 * o for o in e["out"]] for i in e["in"]], e["uses"])
              for key, e in plan.items()}
    base = {"model": "spec", "spec": spec, "input_size": list(input_size), "batch_size": 1, "threads": 1,
            "dtype": "fp32", "memory_format": "nchw", "device": "cpu:test", "torch": torch.__version__,
            "channel_step": channel_step, "points": points}
    return LatencyTable({**base, **settings}, layers, constant, scale, {"memory_format": "nchw"})


def test_grid_axis_is_dense_at_small_widths_and_ends_at_full() -> None:
    axis = grid_axis(64, 8, 8)
    assert axis[0] == 1 and axis[-1] == 64 and len(axis) <= 8
    assert all(w % 8 == 0 for w in axis[1:])
    gaps = [b - a for a, b in zip(axis[1:], axis[2:])]
    assert gaps == sorted(gaps)  # spacing grows with the width
    assert grid_axis(64, 8, 10) == [1, 8, 16, 24, 32, 40, 48, 56, 64]  # every width a step-8 search reaches
    assert grid_axis(16, 8, 8) == [1, 4, 8, 12, 16]  # a finer divisor of the step when it leaves few points
    assert grid_axis(1, 8, 8) == [1]


def test_interpolation_exact_at_grid_points_and_monotone_between() -> None:
    in_axis, out_axis = [1, 4, 8, 16], [1, 8, 32]
    ms = [[0.1 + 0.01 * i * o + 0.05 * (i == 4) for o in out_axis] for i in in_axis]
    table = LayerTable({"op": "conv"}, in_axis, out_axis, ms)
    for a, i in enumerate(in_axis):
        for b, o in enumerate(out_axis):
            assert float(table(i, o)) == pytest.approx(ms[a][b], rel=1e-12)
    for a in range(len(in_axis) - 1):  # along the in axis, between neighbours: a straight line
        xs = torch.linspace(in_axis[a], in_axis[a + 1], 9, dtype=torch.float64)
        values = table(xs, torch.full_like(xs, 20.0))
        steps = values.diff()
        assert bool((steps >= -1e-12).all()) or bool((steps <= 1e-12).all())
    ys = torch.linspace(1, 32, 17, dtype=torch.float64)
    assert bool((table(torch.full_like(ys, 5.0), ys).diff() >= 0).all())
    assert float(table(100, 100)) == pytest.approx(ms[-1][-1])  # clamped to the grid
    assert float(table(0.2, 0.5)) == pytest.approx(ms[0][0])


def test_gradient_flows_to_widths() -> None:
    table = LayerTable({"op": "conv"}, [1, 8, 16], [1, 16], [[0.1, 0.2], [0.3, 0.9], [0.5, 1.7]])
    cin = torch.tensor([3.0, 12.0], dtype=torch.float64, requires_grad=True)
    cout = torch.tensor([5.0, 9.0], dtype=torch.float64, requires_grad=True)
    table(cin, cout).sum().backward()
    assert bool((cin.grad > 0).all()) and bool((cout.grad > 0).all())


def test_a_padded_axis_costs_what_the_next_grid_point_costs() -> None:
    """A device that rounds the out width up (SIMD blocks) runs 17 channels as slowly as 24 or 32: the padded
    axis reads the next grid point (or the next multiple of the step where the grid is sparser), grid points and
    fixed widths read themselves, and the gradient keeps the smooth slope."""
    in_axis, out_axis = [1, 8, 16], [1, 8, 10, 16, 24, 32, 64]
    ms = [[0.1 + 0.01 * i * o for o in out_axis] for i in in_axis]
    plain = LayerTable({"op": "conv"}, in_axis, out_axis, ms, step=8)
    padded = LayerTable({"op": "conv"}, in_axis, out_axis, ms, step=8, pads=(False, True))
    for o in out_axis:
        assert float(padded(8, o)) == pytest.approx(float(plain(8, o)))
    assert float(padded(8, 17)) == pytest.approx(float(plain(8, 24)))
    assert float(padded(8, 9)) == pytest.approx(float(plain(8, 10)))  # the next grid point, nearer than 16
    assert float(padded(8, 33)) == pytest.approx(float(plain(8, 40)))  # between sparse points: the step's multiple
    assert float(padded(12, 17)) == pytest.approx(float(plain(12, 24)))  # the in axis does not pad
    assert float(padded(8, 17)) > float(plain(8, 17))
    cout = torch.tensor([17.0, 30.5], dtype=torch.float64, requires_grad=True)
    padded(torch.full_like(cout, 8.0), cout).sum().backward()
    assert bool((cout.grad > 0).all())
    assert LayerTable.from_dict(padded.to_dict()).pads == (False, True)


def test_pad_probes_sit_one_past_a_grid_point() -> None:
    assert latency.pad_probe_widths([1, 8, 16, 24, 32, 40, 48, 56, 64], 8) == [17, 33]
    assert latency.pad_probe_widths([1, 4, 8, 12, 16], 8) == [9, 13]
    assert latency.pad_probe_widths([1, 64, 256, 512], 8) == []  # no neighbours within a step: nothing to tell
    assert latency.pad_probe_widths([10], 8) == []


def test_the_build_finds_which_axis_the_device_pads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake device whose convs cost in width x (out width rounded up to 4): the table finds the out axes padded
    and the in axes not, and predicts an off-grid architecture as that device runs it."""
    from dnas_prune.device import timing as timing_module

    def work(model: nn.Module) -> float:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        return 1e-6 * (1 + sum(c.in_channels * -(-c.out_channels // 4) * 4 * c.kernel_size[0] ** 2 for c in convs))

    monkeypatch.setattr(timing_module.Runner, "once", lambda self: work(self.model))
    spec = {**TINY, "stem": 8, "stages": [{"width": 8, "stride": 1, "blocks": [{"inner": [8], "downsample": False}]},
                                          {"width": 16, "stride": 2, "blocks": [{"inner": [16], "downsample": True}]}]}
    steady = Timing(cell_warmup=1, cell_repeats=3, cell_seconds=10.0, model_warmup=1, model_repeats=3,
                    model_seconds=10.0)
    table = latency.build_table(table_settings(spec, 1, input_size=(3, 8, 8), threads=1, memory_format="nchw",
                                               channel_step=2, points=10), steady, progress=False)
    probed = {axis: [k for k in table.layers if k.startswith("conv") and table.info["padding"][k]["probes"].get(axis)]
              for axis in ("in", "out")}
    assert probed["out"] and all(table.layers[k].pads[1] for k in probed["out"])  # the out axis pads
    assert probed["in"] and not any(table.layers[k].pads[0] for k in probed["in"])  # the in axis does not
    odd = validate_spec({**spec, "stem": 5, "stages": [{"width": 5, "stride": 1, "blocks": [{"inner": [7],
                                                                                          "downsample": False}]},
                                                        {"width": 13, "stride": 2, "blocks": [{"inner": [9],
                                                                                            "downsample": True}]}]})
    ratio = table.predict_ms(odd) / table.predict_ms(spec)
    assert ratio == pytest.approx(work(build_model(odd)) / work(build_model(spec)), rel=0.02)
    for layer in table.layers.values():  # read without the padding, the same table predicts it too fast
        layer.pads = (False, False)
    assert table.predict_ms(odd) / table.predict_ms(spec) < 0.95 * ratio


@pytest.fixture(scope="module")
def nets() -> dict[str, Supernet]:
    torch.manual_seed(0)
    return {"cifar_resnet20": Supernet(create_model("cifar_resnet20"), (3, 32, 32)),
            "resnet50": Supernet(create_model("resnet50"), (3, 224, 224))}


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet50"])
def test_term_mapping_covers_every_conv_and_linear_once(nets: dict[str, Supernet], name: str) -> None:
    net = nets[name]
    terms = latency.supernet_terms(net)
    modules = [n for n, m in net.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    mapped = [t.name for t in terms.terms if t.macs_coef > 0]
    assert sorted(mapped) == sorted(modules) and len(set(mapped)) == len(mapped)
    # the same widths and branch factors give the Supernet's MACs: every term reads the right group and block
    g = torch.Generator().manual_seed(1)
    counts = net.group_sizes * torch.rand(len(net.group_sizes), generator=g, dtype=torch.float64)
    counts[3] = 0.0  # an empty group: a branch that reads it is dead, in both
    blocks = torch.rand(len(net.branch_blocks), generator=g, dtype=torch.float64)
    assert float(terms.macs(counts, blocks)) == pytest.approx(float(net.cost_from_counts(counts, blocks)[0]), rel=1e-12)
    table = synthetic_table(spec_of(net.model), net.input_size)
    assert table.for_supernet(net).dense_ms() == pytest.approx(table.predict_ms(spec_of(net.model)), rel=1e-12)


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet50"])
def test_spec_units_cover_every_conv_and_linear_once(name: str) -> None:
    """The same for finalized specs: the dense one and shrunk ones with removed blocks and projection-only blocks."""
    dense = spec_of(create_model(name))
    rng = random.Random(3)
    for spec in [dense] + [random_spec(dense, rng, 8, keep=0.3, remove=0.6) for _ in range(3)]:
        model = build_model(spec, device="meta")
        modules = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        uses = [u.name for u in spec_uses(spec, (3, 32, 32) if spec["family"] == "cifar" else (3, 224, 224))
                if u.macs_coef > 0]
        assert sorted(uses) == sorted(modules) and len(set(uses)) == len(uses)


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet50"])
def test_supernet_latency_is_the_finalized_models(nets: dict[str, Supernet], name: str) -> None:
    """Hard gate decisions (with a branch emptied, so blocks go) predict what the folded model's spec predicts."""
    net = nets[name]
    g = torch.Generator().manual_seed(2)
    state = {}
    for group, info in net.groups.items():
        if info.gated and info.kind == "block":
            state[group] = bool(torch.rand(1, generator=g) < 0.7)
        elif info.gated:
            mask = torch.rand(info.size, generator=g) < 0.6
            mask[0] = True
            state[group] = mask
    state["layer2.0.conv1"] = torch.zeros(net.groups["layer2.0.conv1"].size, dtype=torch.bool)  # projection left
    state["layer1.1.conv1"] = torch.zeros(net.groups["layer1.1.conv1"].size, dtype=torch.bool)  # identity: removed
    net.set_gate_state(state)
    try:
        net.eval()
        spec = spec_of(fold(net))
        table = synthetic_table(spec_of(net.model), net.input_size)
        assert spec["stages"][1]["blocks"][0]["inner"] is None
        assert table.for_supernet(net).hard_ms() == pytest.approx(table.predict_ms(spec), rel=1e-12)
    finally:
        net.release_gates()
        net.train()


def test_expected_latency_backpropagates_to_gates(nets: dict[str, Supernet]) -> None:
    net = nets["cifar_resnet20"]
    net.train()
    lat = synthetic_table(spec_of(net.model), net.input_size).for_supernet(net)
    for gate in net.gates.values():
        gate.logits.grad = None
    ms = lat.expected_ms()
    ms.backward()
    grads = [gate.logits.grad for gate in net.gates.values()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool((g != 0).any()) for g in grads)
    net.latency = lat
    try:
        marginal = net.marginal_costs("latency")
    finally:
        net.latency = None
    assert set(marginal) == set(net.gated_groups) and all(v >= 0 for v in marginal.values())


def test_random_specs_are_valid_and_on_the_step() -> None:
    dense = spec_of(create_model("resnet50"))
    rng = random.Random(0)
    for _ in range(5):
        spec = validate_spec(random_spec(dense, rng, 16))
        widths = [spec["stem"]] + [s["width"] for s in spec["stages"]]
        widths += [w for s in spec["stages"] for b in s["blocks"] for w in (b["inner"] or [])]
        assert all(w % 16 == 0 for w in widths)


def test_fit_recovers_constant_and_scale() -> None:
    fit = latency_table_module.fit_constant_and_scale
    points = [{"table_sum_ms": s, "measured_ms": 0.3 + 1.5 * s} for s in (1.0, 2.0, 4.0)]
    assert fit(points) == pytest.approx((0.3, 1.5))
    falling = [{"table_sum_ms": s, "measured_ms": 5.0 - s} for s in (1.0, 2.0)]
    assert fit(falling) == pytest.approx((3.0, 1.0))  # no negative scale: a constant offset instead
    # through the dense point exactly, whatever the others say
    noisy = [{"table_sum_ms": 4.0, "measured_ms": 7.0, "dense": True}] + [
        {"table_sum_ms": s, "measured_ms": (0.3 + 1.5 * s) * f} for s, f in ((1.0, 1.2), (2.0, 0.9), (3.0, 1.1))]
    constant, scale = fit(noisy)
    assert constant + scale * 4.0 == pytest.approx(7.0) and scale > 0
    # the line through the points crosses zero above a sum of 0: a small model was predicted below zero (a floor
    # under 0, targets no device reaches), so a scale alone
    steep = [{"table_sum_ms": 4.0, "measured_ms": 8.0, "dense": True}] + [
        {"table_sum_ms": s, "measured_ms": 4.0 * s - 8.0} for s in (2.5, 3.0, 3.5)]
    assert fit(steep) == pytest.approx((0.0, 2.0))


def test_a_cached_table_with_a_negative_constant_is_refitted_on_load() -> None:
    steep = [{"table_sum_ms": 4.0, "measured_ms": 8.0, "dense": True}] + [
        {"table_sum_ms": s, "measured_ms": 4.0 * s - 8.0} for s in (2.5, 3.0, 3.5)]
    data = {"format": latency_table_module.TABLE_FORMAT, "settings": {}, "constant_ms": -8.0, "scale": 4.0,
            "info": {"fit": steep}, "layers": {}}
    table = LatencyTable.from_dict(data)
    assert (table.constant_ms, table.scale) == pytest.approx((0.0, 2.0))


def test_cache_round_trip_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(input_size=(3, 8, 8), threads=1, memory_format="nchw", channel_step=4, points=2, progress=False,
              directory=tmp_path, timing=FAST, check=False)  # the check against the device: the test below
    built = latency_table(TINY, 1, **kw)
    path = built.path
    assert path is not None and path.parent == tmp_path and path.is_file()
    assert all(bool((t.ms > 0).all()) for t in built.layers.values()) and len(built.info["fit"]) == 1 + len(latency.FIT_KEEP_LEVELS)
    assert set(built.layers) == {u.key for u in spec_uses(TINY, (3, 8, 8))}

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached table")

    monkeypatch.setattr(latency_build, "build_table", no_build)
    loaded = latency_table(TINY, 1, **kw)
    assert loaded.to_dict() == built.to_dict()
    smaller = random_spec(TINY, random.Random(0), 4, keep=0.5)
    assert loaded.predict_ms(smaller) == built.predict_ms(smaller)
    dense_ms, smaller_ms, ratio = loaded.measure_pair(TINY, smaller, FAST)  # interleaved, with the table's settings
    assert dense_ms > 0 and smaller_ms > 0 and ratio > 0
    streamed: list[tuple[float, float, float]] = []
    with warnings.catch_warnings():  # in a new process (pairs.CHILD), which runs: no warning of timing here instead
        warnings.simplefilter("error")
        pairs = loaded.time_pairs(TINY, smaller, at_least=3, seconds=0.0, timing=FAST, on_pair=streamed.append)
    assert len(pairs) == 3 and all(d > 0 and p > 0 and r > 0 for d, p, r in pairs) and streamed == pairs
    with monkeypatch.context() as m:  # no new process can start: timed here, said so
        m.setattr(sys, "executable", str(tmp_path / "no-python"))
        with pytest.warns(UserWarning, match="could not time the pruned model in a new process"):
            assert len(loaded.time_pairs(TINY, smaller, at_least=2, seconds=0.0, timing=FAST)) == 2
    asked: list[int] = []  # a landing's one-thread anchor: threads given override the table's, here and apart
    with monkeypatch.context() as m:
        m.setattr(latency_table_module, "compare_latency", lambda *a, **k: asked.append(k["threads"]) or {
            "models": {n: {"latency": {1: {"median_ms": 1.0, "paired_ratio": 1.0}}} for n in ("dense", "pruned")}})
        loaded.measure_pair(TINY, smaller, FAST)
        loaded.measure_pair(TINY, smaller, FAST, threads=3)
    assert asked == [1, 3]

    class Child:  # what a new process is sent
        sent: list[dict] = []

        def __init__(self, *args, **kwargs) -> None:
            self.stdin, self.stdout, self.returncode = self, iter(()), 0

        def write(self, text: str) -> None:
            Child.sent.append(json.loads(text))

        def close(self) -> None: ...

        def wait(self) -> int:
            return 0

        def __enter__(self) -> "Child":
            return self

        def __exit__(self, *exc: object) -> None: ...

    with monkeypatch.context() as m:
        m.setattr(latency_pairs.subprocess, "Popen", Child)
        loaded.time_pairs(TINY, smaller, at_least=1, seconds=0.0, timing=FAST, threads=2)
        loaded.time_pairs(TINY, smaller, at_least=1, seconds=0.0, timing=FAST)
    assert [request["threads"] for request in Child.sent] == [2, None]
    assert latency.cache_path(table_settings(TINY, 2, input_size=(3, 8, 8), threads=1, memory_format="nchw",
                                             channel_step=4, points=2), tmp_path) != path
    monkeypatch.undo()
    path.write_text("{not json")  # a damaged entry is measured again, not trusted
    assert latency_table(TINY, 1, **kw).to_dict()["layers"].keys() == built.to_dict()["layers"].keys()
    assert json.loads(path.read_text())["format"] == latency.TABLE_FORMAT


@pytest.mark.parametrize("device_reads", [1.0, 1.05, 1.5, 0.7])
def test_a_cached_table_the_device_no_longer_matches_is_measured_again(tmp_path: Path, device_reads: float,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    kw = dict(input_size=(3, 8, 8), threads=1, memory_format="nchw", channel_step=4, points=2, progress=False,
              directory=tmp_path, timing=FAST)
    built = latency_table(TINY, 1, **kw)
    for f in built.info["fit"]:  # as if its fit models were read quietly (a noisy reading is not compared)
        f["warning"] = None
    built.save(built.path)
    dense = built.predict_ms(built.dense_spec)
    at_build = {f["keep"]: f["ratio"] for f in built.info["fit"] if not f["dense"]}

    def device_now(self, models, timing=None, on_each=None):  # each ratio device_reads x what it read at the build
        assert models == [f["spec"] for f in self.info["fit"] if f["keep"] in latency_build.STALE_PROBE_LEVELS]
        return {"dense_ms": dense, "models": [{"ratio": device_reads * at_build[k]}
                                              for k in latency_build.STALE_PROBE_LEVELS]}

    rebuilt = []

    def build(settings, timing, progress):
        rebuilt.append(settings)
        return built

    monkeypatch.setattr(LatencyTable, "measure_beside_dense", device_now)
    monkeypatch.setattr(latency_build, "build_table", build)
    assert latency.stale_error(built, FAST) == pytest.approx(abs(1 / device_reads - 1))
    misfit = LatencyTable.from_dict(built.to_dict())  # what the fit misses is not drift: a rebuild would not mend it
    misfit.constant_ms += 5 * dense
    assert latency.stale_error(misfit, FAST) == pytest.approx(abs(1 / device_reads - 1))
    unrecorded = LatencyTable.from_dict({**built.to_dict(), "info": {}})  # older files: against the predictions
    with monkeypatch.context() as m:
        m.setattr(LatencyTable, "measure_beside_dense", lambda self, models, timing=None, on_each=None: {
            "models": [{"ratio": device_reads * self.predict_ms(s) / self.predict_ms(self.dense_spec)}
                       for s in models]})
        assert latency.stale_error(unrecorded, FAST) == pytest.approx(abs(1 / device_reads - 1))
        noisy = LatencyTable.from_dict({**built.to_dict(), "info": {**built.info, "fit": [  # a noisy build reading
            {**f, "warning": "noisy"} if f["keep"] == 0.3 else f for f in built.info["fit"]]}})
        assert latency.stale_error(noisy, FAST) == pytest.approx(abs(1 / device_reads - 1))
    latency_table(TINY, 1, **kw)
    stale = abs(1 / device_reads - 1) > latency.STALE_ERROR
    assert len(rebuilt) == int(stale)
    latency_table(TINY, 1, **{**kw, "check": False})  # no check: the cache is trusted as it is
    assert len(rebuilt) == int(stale)
    capsys.readouterr()
    latency_table(TINY, 1, **{**kw, "progress": True})  # with progress, the check says what it is timing
    assert capsys.readouterr().out.startswith("checking the cached latency table ")


def test_the_parent_module_finds_the_table_built_for_its_registry_name() -> None:
    """A search hands the table lookup its parent module; `dnas-prune latency-table --model NAME` built the table
    under the registry name. Both must be one cache entry, or the search measures a second table."""
    kw = dict(threads=1, memory_format="nchw")
    by_name = table_settings("cifar_resnet20", 64, **kw)
    assert table_settings(create_model("cifar_resnet20"), 64, **kw) == by_name
    assert table_settings(spec_of(create_model("cifar_resnet20")), 64, **kw) == by_name
    assert latency.cache_path(by_name).name.startswith("cifar_resnet20-bs64-")
    assert table_settings(create_model("cifar_resnet20", num_classes=100), 64, **kw)["model"] == "CifarResNet"
    assert table_settings(TINY, 1, input_size=(3, 8, 8), **kw)["model"] == "spec"


def test_a_drifting_machine_does_not_enter_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake forwards cost their module's size times the machine's speed, which halves and recovers every 50
    forwards (no clock): every cell, timed beside the reference, keeps the same ms per unit of work, and the
    shrunk models are measured at one speed for the fit."""
    from dnas_prune.device import timing as timing_module
    calls = iter(range(10 ** 9))

    def work(runner) -> float:
        return 1e-6 * (1 + sum(p.numel() for p in runner.model.parameters()))

    monkeypatch.setattr(timing_module.Runner, "once",
                        lambda self: work(self) * (2.0 if (next(calls) // 50) % 2 else 1.0))
    steady = Timing(cell_warmup=1, cell_repeats=9, cell_seconds=10.0, model_warmup=1, model_repeats=9,
                    model_seconds=10.0)
    table = latency.build_table(table_settings(TINY, 1, input_size=(3, 8, 8), threads=1, memory_format="nchw",
                                               channel_step=4, points=2), steady, progress=False)
    per_work = []
    for key, layer in table.layers.items():
        for i, cin in enumerate(layer.in_axis.tolist()):
            for j, cout in enumerate(layer.out_axis.tolist()):
                module, _ = latency.cell_module(layer.unit, int(cin), int(cout), 1)
                size = 1e-6 * (1 + sum(p.numel() for p in module.parameters()))
                per_work.append(float(layer.ms[i, j]) / size)
    assert max(per_work) / min(per_work) == pytest.approx(1.0)
    assert not any(layer.ms.is_inference() for layer in table.layers.values())  # the search differentiates them
    fit = table.info["fit"]
    dense_work = 1e-6 * (1 + sum(p.numel() for p in build_model(TINY).parameters()))
    for point in fit[1:]:
        size = 1e-6 * (1 + sum(p.numel() for p in build_model(point["spec"]).parameters()))
        assert point["ratio"] == pytest.approx(size / dense_work)


def test_a_cell_timed_in_a_slow_spell_is_timed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """One cell's first timing runs 3x slow (a busy spell the reference did not feel): the table keeps its
    re-timing, so every cell keeps the same ms per unit of work."""
    from dnas_prune.device import timing as timing_module
    spiked: set[int] = set()

    def work(runner) -> float:
        return 1e-6 * (1 + sum(p.numel() for p in runner.model.parameters()))

    def once(self) -> float:
        conv = getattr(self.model, "conv", None)
        first = conv is not None and conv.in_channels == 4 and conv.out_channels == 8 and not spiked - {id(self)}
        if first:
            spiked.add(id(self))
        return work(self) * (3.0 if first else 1.0)

    monkeypatch.setattr(timing_module.Runner, "once", once)
    steady = Timing(cell_warmup=1, cell_repeats=9, cell_seconds=10.0, model_warmup=1, model_repeats=9,
                    model_seconds=10.0)
    table = latency.build_table(table_settings(TINY, 1, input_size=(3, 8, 8), threads=1, memory_format="nchw",
                                               channel_step=4, points=2), steady, progress=False)
    assert len(spiked) == 1 and table.info["cells"]["retimed"] >= 1
    per_work = [float(layer.ms[i, j]) / (1e-6 * (1 + sum(p.numel() for p in latency.cell_module(
        layer.unit, int(cin), int(cout), 1)[0].parameters())))
        for layer in table.layers.values() for i, cin in enumerate(layer.in_axis.tolist())
        for j, cout in enumerate(layer.out_axis.tolist())]
    assert max(per_work) / min(per_work) == pytest.approx(1.0)
    assert latency_build._outlier_cells([[1.0, 1.2], [1.3, 5.0]]) == [(1, 1)]
    assert latency_build._outlier_cells([[1.0, 2.0], [2.0, 2.6]]) == []  # grows with the widths: not an outlier


def test_predict_refuses_another_family() -> None:
    table = synthetic_table(TINY, (3, 8, 8))
    with pytest.raises(DnasPruneError, match="layer shapes"):
        table.predict_ms(spec_of(create_model("cifar_resnet20")))


def test_cli_prints_a_cached_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path))
    settings = table_settings("cifar_resnet20", 4, threads=1, memory_format="nchw")
    table = synthetic_table(settings["spec"], (3, 32, 32))
    table.settings = settings
    table.save(latency.cache_path(settings))
    args = ["latency-table", "--model", "cifar_resnet20", "--batch-size", "4", "--threads", "1",
            "--memory-format", "nchw", "--no-progress", "--no-check"]  # a synthetic table: the device disagrees
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "avgpool+fc/8x8" in out and "constant: +0.1000 ms" in out and str(tmp_path) in out


@pytest.mark.parametrize("name, canonical", [("auto", "auto"), ("nchw", "nchw"), ("channels_last", "channels_last"),
                                             ("contiguous", "nchw")])
def test_cli_takes_the_memory_format_names_of_every_command(name: str, canonical: str) -> None:
    from dnas_prune.cli import build_parser
    from dnas_prune.device.policy import MEMORY_FORMAT_CHOICES

    parser = build_parser()
    args = parser.parse_args(["latency-table", "--model", "cifar_resnet20", "--batch-size", "1",
                              "--memory-format", name])
    assert args.memory_format == canonical
    sub = next(a for a in parser._actions if a.dest == "command").choices["latency-table"]
    assert next(a for a in sub._actions if "--memory-format" in a.option_strings).choices == MEMORY_FORMAT_CHOICES


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope", "--batch-size", "1"], "unknown model 'nope'"),
    (["--model", "cifar_resnet20", "--batch-size", "0"], "batch size must be a positive integer, got 0"),
    (["--model", "cifar_resnet20", "--batch-size", "1", "--threads", "-1"], "threads"),
    (["--model", "cifar_resnet20", "--batch-size", "1", "--channel-step", "0"], "channel step"),
    (["--model", "cifar_resnet20", "--batch-size", "1", "--memory-format", "nhwc"], "--memory-format"),
])
def test_cli_bad_input_is_one_line(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    assert_one_line_error(cli(capsys, "latency-table", *args), needle)


# --------------------------------------------------------------------------------------------- latency budget
class FakeDevice:
    """A device whose whole-model latency is the table's prediction plus a cost the table does not see (a tenth of
    the dense model's, paid by every model): pruned models run relatively slower than predicted, as narrow layers
    do on real CPUs. Counts the measurements."""

    def __init__(self, table: LatencyTable) -> None:
        self.table, self.calls = table, 0
        self.hidden = table.predict_ms(table.dense_spec) / 10

    def __call__(self, model, timing=None) -> dict:
        self.calls += 1
        spec = model if isinstance(model, dict) else spec_of(model)
        return {"median_ms": self.table.predict_ms(spec) + self.hidden, "p90_ms": 0.0, "warning": None}

    def pair(self, dense, pruned, timing=None, threads=None) -> tuple[float, float, float]:
        dense_ms, pruned_ms = self(dense)["median_ms"], self(pruned)["median_ms"]
        return dense_ms, pruned_ms, pruned_ms / dense_ms

    def pairs(self, dense, pruned, *, at_least: int, seconds: float, timing=None, on_pair=None,
              threads=None) -> list[tuple[float, float, float]]:
        found, started = [], time.monotonic()
        while len(found) < at_least or time.monotonic() - started < seconds:
            found.append(self.pair(dense, pruned, threads=threads))
            if on_pair is not None:
                on_pair(found[-1])
        return found


def latency_search(target: dict, steps: int = 30, seed: int = 0, device: str = "cpu:test", threads: int = 1,
                   **config):
    """A Pruner on cifar_resnet20 (16x16 inputs) with a synthetic table and a fake device, trained on random data.
    ``device``, ``threads``: the table's (by default no known channel block, so widths are not rounded)."""
    from dnas_prune import Pruner

    torch.manual_seed(seed)
    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16), device=device, threads=threads)
    device = FakeDevice(table)
    table.measure, table.measure_pair, table.time_pairs = device, device.pair, device.pairs  # type: ignore[method-assign]
    config.setdefault("latency_landing_seconds", 0.0)  # a fake device's timings do not drift: the minimum count
    pruner = Pruner(model, (3, 16, 16), total_steps=steps, latency=table, **target, **config)
    optimizer = torch.optim.SGD(pruner.weight_parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        nn.functional.cross_entropy(pruner.net(x), y).backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad()
    return pruner, table, device


@pytest.mark.parametrize("thin_blocks, deviation", [({"close_thin_blocks": False}, 0.05), ({}, 0.25),
                                                     ({"close_thin_blocks_at": "projection"}, 0.05)])
def test_latency_budget_tracks_the_target_and_lands_on_the_measurement(thin_blocks, deviation) -> None:
    """The hard latency ratio follows the ramped target during the search (the table's), and the landing corrects
    the table's error with the device's measurement: the final model measures at most the target, within
    latency_tolerance under it (in the middle half of that window). Channel by channel the ratio tracks closely; with thin blocks closed by the
    search (the default) a block leaves with its second channel step, so the ratio can fall a block's latency
    under; closed by the projection, the search tracks as if it kept them."""
    pruner, table, device = latency_search({"target_latency": 0.5}, **thin_blocks)
    assert pruner.config.metric == "latency" and pruner.max_deviation <= deviation
    assert set(pruner.hard_ratios) == {"macs", "params", "latency"}
    said: list[str] = []
    model = pruner.finalize(log=said.append)
    tries = pruner.projection["measured"]
    # the landing speaks at each try and at each timing, so tens of seconds of timing do not go quiet
    assert sum(line.startswith("latency landing, try") for line in said) == len(tries)
    assert sum(" of dense" in line and "ms, pruned" in line for line in said) == LANDING_TIMINGS * len(tries)
    # the table alone misses the device by a tenth, so the landing took a second try
    assert len(tries) >= 2 and tries[0]["measured_ratio"] / tries[0]["predicted_ratio"] > 1.05
    measured = device(model)["median_ms"] / device(table.dense_spec)["median_ms"]
    assert 0.5 * (1 - pruner.config.latency_tolerance) <= measured <= 0.5
    assert settled(measured / 0.5 - 1, pruner.config.latency_tolerance)
    assert tries[-1]["own_ratio"] == pytest.approx(measured, rel=1e-9)  # its timings' own middle
    assert tries[-1]["measured_ratios"] == pytest.approx([measured] * LANDING_TIMINGS, rel=1e-9)  # each timing kept
    assert pruner.hard_ratio < 0.5  # the table's ratio was moved below the target to land there measured


class SpellDevice(FakeDevice):
    """A shared host at several threads: the side-by-side timings that ``busy_at`` picks (by their count) fall in a
    busy spell, where the pruned model runs ``busy`` times slower relative to the dense one (thread sync costs a
    narrow model more); at one thread the ratio holds."""

    def __init__(self, table: LatencyTable, busy: float, busy_at=lambda timed: timed % 2 == 0) -> None:
        super().__init__(table)
        self.busy, self.busy_at, self.timed, self.one_thread = busy, busy_at, 0, 0

    def pair(self, dense, pruned, timing=None, threads=None) -> tuple[float, float, float]:
        dense_ms, pruned_ms, ratio = super().pair(dense, pruned)
        if (threads or self.table.settings["threads"]) == 1:
            self.one_thread += 1
            return dense_ms, pruned_ms, ratio
        self.timed += 1
        slow = self.busy if self.busy_at(self.timed) else 1.0
        return dense_ms, pruned_ms * slow, ratio * slow


@pytest.mark.parametrize("seconds, busy_at", [(0.0, None), (0.05, None),
                                              (0.0, lambda timed: timed <= LANDING_TIMINGS)])
def test_the_landing_aims_a_shared_hosts_quiet_readings_at_the_target(seconds: float, busy_at) -> None:
    """A busy spell at several threads slows the pruned model relatively more; the landing puts the quiet
    readings in the middle of its window, even when most timings were busy, or every timing of a try (the last
    case: the first try's, read through the next try's quiet ones). A try keeps timing for
    ``latency_landing_seconds``, at least LANDING_TIMINGS times, and times the pair at one thread, steady, for
    each try's own reading."""
    from dnas_prune.search.landing import LANDING_ANCHOR_TIMINGS, landing_ratio

    assert landing_ratio([(10, 5.8, 0.58), (10, 5.0, 0.5), (10, 5.8, 0.58)]) == landing_ratio([(10, 5, 0.5)]) == 0.5
    # a dense timing caught by a spell is not the dense model's quickest: it does not pull the reading down
    assert landing_ratio([(30, 5.7, 0.19), (10, 5.8, 0.58), (10, 6.0, 0.6)]) == pytest.approx(0.57)
    pruner, table, _ = latency_search({"target_latency": 0.5}, steps=10, latency_landing_seconds=seconds, threads=2)
    device = SpellDevice(table, busy=1.3, **({"busy_at": busy_at} if busy_at else {}))
    clock = time.monotonic()
    table.measure_pair, table.time_pairs = device.pair, device.pairs  # type: ignore[method-assign]
    model = pruner.finalize()
    tries = pruner.projection["measured"]
    assert all(len(t["measured_ratios"]) >= LANDING_TIMINGS for t in tries)
    assert all(len(t["anchor_ratios"]) == LANDING_ANCHOR_TIMINGS for t in tries)
    assert device.one_thread == LANDING_ANCHOR_TIMINGS * len(tries)
    assert all(t["seconds"] >= seconds for t in tries) and time.monotonic() - clock >= seconds
    quiet = device(model)["median_ms"] / device(table.dense_spec)["median_ms"]
    tolerance = pruner.config.latency_tolerance
    pinned = next(t for t in tries if t.get("pinned"))
    assert pinned["measured_ratio"] == pytest.approx(quiet, rel=1e-6)  # the shape's own quiet reading
    # in the window on a quiet machine; aiming between the spells would put it a seventh under the target here
    assert 0.5 * (1 - tolerance) <= quiet <= 0.5


class DenseHiccup(SpellDevice):
    """A quiet device but for one dense timing at several threads, three times slower (a spell that caught it)."""

    def pair(self, dense, pruned, timing=None, threads=None) -> tuple[float, float, float]:
        dense_ms, pruned_ms, ratio = SpellDevice.pair(self, dense, pruned, timing, threads)
        if (threads or self.table.settings["threads"]) != 1 and self.timed == 1:
            return 3 * dense_ms, pruned_ms, ratio / 3
        return dense_ms, pruned_ms, ratio


def test_one_slow_dense_timing_does_not_send_the_landing_to_a_dense_model() -> None:
    """Seen on a shared machine: one dense timing of five read three times slower, the landing took the pair's
    ratio as the model's and re-aimed at a nearly dense model."""
    pruner, table, _ = latency_search({"target_latency": 0.5}, steps=10, latency_landing_seconds=0.0, threads=2)
    device = DenseHiccup(table, busy=1.0)
    table.measure_pair, table.time_pairs = device.pair, device.pairs  # type: ignore[method-assign]
    model = pruner.finalize()
    quiet = device(model)["median_ms"] / device(table.dense_spec)["median_ms"]
    assert 0.5 * (1 - pruner.config.latency_tolerance) <= quiet <= 0.5


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the kernel's CPU counters are Linux's")
def test_others_cpu_counts_the_cores_other_processes_keep_busy() -> None:
    """A process spinning beside a block shows as about a core of others' use; a child that finished within the
    block is this process's own work (whatever else the machine runs, e.g. another test worker); crowded() says
    when the others leave a timing fewer cores than its threads."""
    import subprocess

    from dnas_prune.device.load import OthersCpu, _own_seconds, crowded

    spin = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # started
        with OthersCpu() as others:
            time.sleep(0.8)
    finally:
        spinner.kill()
        spinner.wait()
    assert others.cores is not None and others.cores > 0.5
    burn = "import time\nwhile time.process_time() < 0.6: pass"  # 0.6 s of CPU, however crowded the machine
    before = _own_seconds()
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert _own_seconds() - before >= 0.55  # so OthersCpu subtracts it from the machine's busy time
    cores = os.cpu_count() or 1
    assert not crowded(None, 1) and not crowded(0.0, cores) and crowded(1.0, cores)
    assert crowded(cores, 1) and not crowded(cores - 1.0, 1)


def test_a_landing_says_when_other_processes_crowded_its_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each try records the cores other processes kept busy while it was timed, and a landing timed on a crowded
    machine says so (in its log and as a warning): its readings can be off by more than the window."""
    from dnas_prune.search import landing as landing_module

    class Crowd:
        cores = 64.0 + (os.cpu_count() or 1)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None: ...

    pruner, _, _ = latency_search({"target_latency": 0.5}, steps=10)
    monkeypatch.setattr(landing_module, "OthersCpu", Crowd)
    said: list[str] = []
    with pytest.warns(UserWarning, match="other processes used the cores the latency landing timed on"):
        pruner.finalize(log=said.append)
    tries = pruner.projection["measured"]
    assert [t["others_cores"] for t in tries] == [Crowd.cores] * len(tries)
    assert sum("other processes kept" in line for line in said) == len(tries)
    quiet, _, _ = latency_search({"target_latency": 0.5}, steps=10)  # an idle machine: nothing said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(landing_module, "OthersCpu", type("Idle", (Crowd,), {"cores": 0.0}))
        quiet.finalize()
    assert all(t["others_cores"] == 0.0 for t in quiet.projection["measured"])


def test_a_landing_that_never_fits_its_window_stops_after_four_tries() -> None:
    """When no try measures inside ``[target x (1 - tolerance), target]`` (here a window narrower than any step
    between shapes), the landing stops after four tries, or sooner when no untimed shape is left between them, and
    pins the one nearest the window."""
    from dnas_prune.search.landing import off_window, pinned_try, try_to_pin

    inside, outside = [{"error": -0.01}, {"error": -0.03}, {"error": 0.02}], [{"error": 0.03}, {"error": -0.09}]
    assert try_to_pin(inside, 0.05) is inside[1] and try_to_pin(outside, 0.05) is outside[0]

    marked, older = [{"error": 0.01}, {"error": -0.03, "pinned": True}], [{"error": 0.2}, {"error": -0.01}]
    assert pinned_try(marked) is marked[1] and pinned_try(older) is older[1]  # unmarked: nearest the target
    assert off_window(-0.03, 0.05) == 0.0 and off_window(0.0, 0.05) == 0.0 and off_window(-0.05, 0.05) == 0.0
    assert off_window(0.02, 0.05) == pytest.approx(0.02) and off_window(-0.08, 0.05) == pytest.approx(0.03)
    pruner, table, _ = latency_search({"target_latency": 0.5}, steps=10, latency_tolerance=1e-6)
    device = SpellDevice(table, busy=1.5)
    table.measure_pair, table.time_pairs = device.pair, device.pairs  # type: ignore[method-assign]
    with pytest.warns(UserWarning, match="landing pinned a model the device reads .* from the target, outside ±0.0001 %"):
        pruner.finalize()  # a miss is said, not only recorded
    tries = pruner.projection["measured"]
    assert 2 <= len(tries) <= 4 and all(off_window(t["error"], 1e-6) > 0 for t in tries)
    nearest = min(tries, key=lambda t: off_window(t["error"], 1e-6))
    assert pruner.hard_ratio == pytest.approx(nearest["predicted_ratio"], rel=1e-9)  # its state is the one pinned
    assert [t.get("pinned", False) for t in tries] == [t is nearest for t in tries]  # and the record says which
    assert pruner.projection["landing_window"] == [-1e-6, 0.0]


def test_latency_ms_target_is_the_measured_dense_fraction() -> None:
    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16))
    dense_ms = FakeDevice(table)(table.dense_spec)["median_ms"]
    pruner, table, device = latency_search({"target_latency_ms": 0.6 * dense_ms}, steps=10)
    assert pruner.config.target == pytest.approx(0.6) and pruner.config.target_ms == 0.6 * dense_ms
    model = pruner.finalize()
    assert 0.6 * dense_ms * (1 - pruner.config.latency_tolerance) <= device(model)["median_ms"] <= 0.6 * dense_ms
    with pytest.raises(DnasPruneError, match="already runs in"):
        latency_search({"target_latency_ms": 2 * dense_ms}, steps=2)


class Contended(FakeDevice):
    """A machine another process shares: most timings at several threads run ``slow`` times slower, the dense and
    the pruned model alike (their ratio holds), and so does the first whole-model timing."""

    def __init__(self, table: LatencyTable, slow: float) -> None:
        super().__init__(table)
        self.slow, self.timed = slow, 0

    def __call__(self, model, timing=None) -> dict:
        timed = super().__call__(model, timing)
        return {**timed, "median_ms": timed["median_ms"] * (self.slow if self.calls == 1 else 1.0)}

    def pair(self, dense, pruned, timing=None, threads=None) -> tuple[float, float, float]:
        dense_ms, pruned_ms, ratio = super().pair(dense, pruned)
        self.timed += 1
        slow = self.slow if (threads or self.table.settings["threads"]) != 1 and self.timed % 3 else 1.0
        return dense_ms * slow, pruned_ms * slow, ratio


def test_a_ms_target_lands_on_the_quiet_machines_ms_when_timings_are_contended() -> None:
    """Seen in a review: a ms target landed ~40 % under it on a quiet machine, read through a contended dense
    timing (the conversion's one, the landing's median). Both now read the dense model at its quickest."""
    from dnas_prune import Pruner

    torch.manual_seed(0)
    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16), threads=2)
    device = Contended(table, slow=1.6)
    table.measure, table.measure_pair, table.time_pairs = device, device.pair, device.pairs  # type: ignore[method-assign]
    quiet_dense = FakeDevice(table)(table.dense_spec)["median_ms"]
    pruner = Pruner(model, (3, 16, 16), total_steps=2, latency=table, target_latency_ms=0.6 * quiet_dense,
                    latency_landing_seconds=0.0)
    assert pruner.config.target_ms_dense == pytest.approx(quiet_dense)
    with pytest.warns(UserWarning, match="finalize after 0 of total_steps=2"):  # the landing is what is tested
        pruned = pruner.finalize()
    tolerance = pruner.config.latency_tolerance
    assert 0.6 * quiet_dense * (1 - tolerance) <= FakeDevice(table)(pruned)["median_ms"] <= 0.6 * quiet_dense


def test_with_several_processes_rank_0_times_the_dense_model_of_a_ms_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank timed the dense model at once, beside the others, and each resolved its own fraction: the ranks
    searched different budgets (and one could refuse a target the others took, leaving them waiting)."""
    from dnas_prune import Pruner
    from dnas_prune.search import pruner as pruner_module

    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16))
    timed = []
    table.measure = lambda spec, timing=None: timed.append(spec) or {"median_ms": 4.0}  # type: ignore[method-assign]
    sent = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: sent.append(float(tensor)) or
                        tensor.fill_(3.0))
    monkeypatch.setattr(pruner_module, "process_rank", lambda: (1, 2))
    follower = Pruner(model, (3, 16, 16), total_steps=4, latency=table, target_latency_ms=1.5)
    assert not timed and follower.config.target_ms_dense == 3.0 and follower.config.target == pytest.approx(0.5)
    monkeypatch.setattr(pruner_module, "process_rank", lambda: (0, 2))
    leader = Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=4, latency=table, target_latency_ms=1.5)
    assert len(timed) == 3 and sent[-1] == 4.0 and leader.config.target_ms_dense == 3.0  # what rank 0 sent


def test_resumed_ms_target_keeps_the_dense_timing_it_was_resolved_with() -> None:
    """Resuming a --target-latency-ms search must not time the dense model again: a new timing would move the
    target fraction and the resumed run would no longer continue the saved one exactly."""
    from dnas_prune import Pruner, stages
    from dnas_prune.search.pruner import SearchConfig

    config = SearchConfig(metric="latency", target=1.0, target_ms=1.5)
    resumed = stages._resumed_ms_target(config, {"search": {"target_ms": 1.5, "target_ms_dense": 3.0, "target": 0.5}})
    assert resumed.target_ms_dense == 3.0
    other = {"search": {"target_ms": 2.0, "target_ms_dense": 3.0}}
    assert stages._resumed_ms_target(config, other).target_ms_dense is None  # another target: time anew

    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16))

    def no_timing(*args, **kwargs):
        raise AssertionError("the dense model was timed again")

    table.measure = no_timing  # type: ignore[method-assign]
    pruner = Pruner(model, (3, 16, 16), total_steps=10, latency=table, config=resumed)
    assert pruner.config.target == pytest.approx(0.5) and pruner.config.target_ms_dense == 3.0


def test_a_resumed_latency_search_keeps_the_table_it_began_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume ran the staleness check of a new search, which could rebuild the table mid-search and move the
    budget's numbers; it now asks for the table of the settings the checkpoint recorded."""
    from dnas_prune import stages

    asked = []
    monkeypatch.setattr(stages, "table_for_settings", lambda settings: asked.append(settings) or "the table")
    settings = {"model": "cifar_resnet20", "batch_size": 64, "threads": 2}
    assert stages._resumed_latency_table({"supernet": {"budget": {"latency_table": settings}}}) == "the table"
    assert asked == [settings]
    assert stages._resumed_latency_table({"supernet": {"budget": {"metric": "macs"}}}) is None  # none recorded


@pytest.mark.parametrize("targets, needle", [
    ({"target_macs": 0.5, "target_latency": 0.5}, "not --target-macs and --target-latency"),
    ({"target_latency": 1.5}, "--target-latency must be a fraction"),
    ({"target_latency_ms": -1.0}, "--target-latency-ms must be a positive number"),
])
def test_budget_targets_are_checked(targets: dict, needle: str) -> None:
    from dnas_prune.search.pruner import budget_fields

    with pytest.raises(DnasPruneError, match=needle):
        budget_fields(*(targets.get(f"target_{k}") for k in ("macs", "params", "latency", "latency_ms")))


@pytest.mark.parametrize("device, threads, config, round_to", [
    ("cpu:AMD EPYC:AVX512", 2, {}, 16), ("cpu:Intel Xeon:AVX2", 4, {}, 8), ("cpu:AMD EPYC:AVX512", 1, {}, 16),
    ("cpu:test", 2, {}, None), ("cuda:A100", 2, {}, None), ("cpu:AMD EPYC:AVX512", 2, {"round_to": 1}, 1),
    ("cpu:AMD EPYC:AVX2", 2, {"channels_per_gate": 16}, 16)])
def test_a_latency_budget_keeps_widths_in_whole_channel_blocks_of_its_device(device, threads, config,
                                                                             round_to) -> None:
    """Unless told otherwise (round_to=1 turns it off), a latency budget at any thread count keeps every width a
    multiple of the channel block of the table's device's convolution kernels, and the landing times each shape
    once: nearby aims share a shape when widths move in coarse steps, and a shape timed again would be a try
    wasted."""
    from dnas_prune.search.latency import channel_block

    assert channel_block("cpu:AMD EPYC 9R14:AVX512") == 16 and channel_block("cpu:x:AVX2") == 8
    assert channel_block("cpu:x:DEFAULT") is None and channel_block("cuda:NVIDIA A100") is None
    pruner, table, _ = latency_search({"target_latency": 0.5}, steps=10, device=device, threads=threads,
                                      latency_tolerance=1e-6, **config)
    assert pruner.config.round_to == round_to
    model = pruner.finalize()
    widths = [w for s in spec_of(model)["stages"] for b in s["blocks"] for w in (b["inner"] or [])]
    assert all(w % (round_to or 1) == 0 for w in widths), widths
    predicted = [t["predicted_ratio"] for t in pruner.projection["measured"]]
    assert len(set(predicted)) == len(predicted)  # never the same shape twice (no window this narrow is reached)


def test_finalize_round_to_keeps_a_latency_budget_where_it_landed() -> None:
    from dnas_prune.finalize import finalize

    pruner, table, device = latency_search({"target_latency": 0.5}, steps=10)
    pruner.finalize()
    landed = pruner.hard_ratios["latency"]
    rounded = finalize(pruner.net, round_to=8)
    widths = [w for s in spec_of(rounded)["stages"] for b in s["blocks"] for w in (b["inner"] or [])]
    assert all(w % 8 == 0 for w in widths)
    assert table.predict_ms(spec_of(rounded)) / table.predict_ms(table.dense_spec) == pytest.approx(landed, abs=0.05)


def test_a_latency_budget_ranks_gates_per_macs_unless_told() -> None:
    """rank_cost "auto": a gate's gradient is divided by its marginal MACs under a latency budget (a table's
    marginal latencies span orders of magnitude and amplified noise), by the budget's own metric otherwise."""
    from dnas_prune import Pruner, SearchConfig
    from dnas_prune.errors import DnasPruneError

    def pruner(**target):
        model = create_model("cifar_resnet20")
        return Pruner(model, (3, 16, 16), total_steps=10, latency=synthetic_table(spec_of(model), (3, 16, 16)),
                      **target)

    auto = pruner(target_latency=0.5)
    assert auto._rank_metric() == "macs"
    assert pruner(target_latency=0.5, rank_cost="budget")._rank_metric() == "latency"
    assert pruner(target_params=0.5)._rank_metric() == "params"
    costs = auto.net.marginal_costs("macs")
    for name in costs:
        auto.net.gate(name).logits.grad = torch.ones_like(auto.net.gate(name).logits)
    auto.normalize_gate_gradients()
    scaled = {name: float(auto.net.gate(name).logits.grad.flatten()[0]) * costs[name] for name in costs
              if auto.net.groups[name].kind != "block"}  # block gates: test_a_latency_budget_ranks_block_gates_...
    assert max(scaled.values()) == pytest.approx(min(scaled.values()))  # grad x MACs cost: the same mean for all
    with pytest.raises(DnasPruneError, match="rank_cost"):
        SearchConfig(rank_cost="flops")


def test_a_latency_budget_ranks_block_gates_per_latency() -> None:
    """rank_cost "auto" with block gates: channel gates per MACs, block gates per unit of latency (a block's latency
    holds the fixed cost a few channels keep alive, which its MACs do not), each relative to its own mean."""
    from dnas_prune import Pruner

    model = create_model("cifar_resnet20")
    pruner = Pruner(model, (3, 16, 16), total_steps=10, latency=synthetic_table(spec_of(model), (3, 16, 16)),
                    target_latency=0.5, block_gates=True)
    assert pruner._rank_metric("channels") == "macs" and pruner._rank_metric("blocks") == "latency"
    relative = pruner.rank_costs()
    blocks = [n for n in relative if pruner.net.groups[n].kind == "block"]
    assert blocks and len(blocks) < len(relative)
    for metric, names in (("latency", blocks), ("macs", [n for n in relative if n not in blocks])):
        costs = pruner.net.marginal_costs(metric)
        sizes = {n: pruner.net.gate(n).size for n in costs}
        mean = sum(costs[n] * sizes[n] for n in costs) / sum(sizes.values())
        for name in names:
            assert relative[name] == pytest.approx(costs[name] / mean)
    for name in relative:
        pruner.net.gate(name).logits.grad = torch.ones_like(pruner.net.gate(name).logits)
    pruner.normalize_gate_gradients()
    for name in blocks:
        assert float(pruner.net.gate(name).logits.grad.flatten()[0]) == pytest.approx(1 / max(relative[name], 1e-2))


def test_with_close_thin_blocks_a_block_lives_only_while_two_channel_steps_of_its_inner_group_do() -> None:
    """A block whose inner group the budget has narrowed to one channel keeps most of a block's latency for a
    rank-one branch: with ``close_thin_blocks`` its gate is held under the group's second-strongest channel, so the
    block goes with that channel, in the search's hard decisions and in every projection onto the budget."""
    from dnas_prune import Pruner
    from dnas_prune.search.budget import budget_state

    model = create_model("cifar_resnet20")
    pruner = Pruner(model, (3, 16, 16), total_steps=10, latency=synthetic_table(spec_of(model), (3, 16, 16)),
                    target_latency=0.5, close_thin_blocks=True)
    net = pruner.net
    assert pruner.config.gates_blocks
    with torch.no_grad():
        inner = net.gate("layer1.0.conv1").logits
        inner.fill_(-4.0)
        inner.view(-1)[3] = 5.0  # one strong channel, the rest weak
        net.gate("layer1.0").logits.fill_(6.0)  # the block gate at the top, where it starts
    pruner._prepare()
    assert float(net.gate("layer1.0").logits.flatten()[0]) == pytest.approx(-4.0)
    kept = Pruner(net, (3, 16, 16), total_steps=10, latency=net.latency.table, target_latency=0.5,
                  close_thin_blocks=False)
    with torch.no_grad():
        net.gate("layer1.0").logits.fill_(6.0)
    kept._prepare()
    assert float(net.gate("layer1.0").logits.flatten()[0]) == 6.0  # keeping thin blocks, it leaves the gate
    pruner = Pruner(net, (3, 16, 16), total_steps=10, latency=net.latency.table, target_latency=0.5)  # the default
    decided = net.decisions()
    assert not decided.blocks["layer1.0"] or decided.widths["layer1.0.conv1"] >= 2
    # projections from random rankings, some blocks closed at the bottom: reopening one in a projection that
    # grows to its budget must not bring it back one channel wide
    rng = torch.Generator().manual_seed(0)
    blocks = [b.gate for b in net.blocks if b.gate is not None]
    for _ in range(6):
        with torch.no_grad():
            for name in net.gated_groups:
                net.gate(name).logits.copy_(3 * torch.randn(net.gate(name).logits.shape, generator=rng))
            for i in torch.randperm(len(blocks), generator=rng)[:4]:
                net.gate(blocks[i]).logits.fill_(-10.0)
        pruner._hold_blocks_under_their_channels()
        target = 0.3 + 0.65 * float(torch.rand(1, generator=rng))
        with net.pinned(budget_state(net, "latency", target, strict=False)):
            decided = net.decisions()
            for block in net.blocks:
                if block.gate is not None and decided.blocks[block.name]:
                    assert all(decided.widths[g] >= 2 for g in block.inner), (target, block.name)


def test_thin_blocks_closed_at_the_projection_give_their_latency_to_the_living_blocks_channels() -> None:
    """close_thin_blocks_at="projection": the search keeps blocks one channel step wide, and every projection closes
    them and spends what they cost on channels of the blocks left, best-scored first, down to channels that cost
    nothing on the table; a closed block reopens (two steps wide) only when channels cannot reach the budget."""
    from dnas_prune import Pruner, SearchConfig
    from dnas_prune.errors import DnasPruneError
    from dnas_prune.search.budget import budget_state, cost_ratios

    with pytest.raises(DnasPruneError, match="close_thin_blocks_at"):
        SearchConfig(close_thin_blocks_at="finetune")
    model = create_model("cifar_resnet20")
    pruner = Pruner(model, (3, 16, 16), total_steps=10, latency=synthetic_table(spec_of(model), (3, 16, 16)),
                    target_latency=0.5, close_thin_blocks_at="projection")
    net = pruner.net
    assert net.budget["close_thin_blocks"] == "projection"
    with torch.no_grad():
        inner = net.gate("layer1.0.conv1").logits
        inner.fill_(-4.0)
        inner.view(-1)[3] = 5.0  # one strong channel, the rest weak
        net.gate("layer1.0").logits.fill_(6.0)
    pruner._hold_blocks_under_their_channels()
    assert float(net.gate("layer1.0").logits.flatten()[0]) == 6.0  # the search leaves the block gate alone
    decided = net.decisions()
    assert decided.blocks["layer1.0"] and decided.widths["layer1.0.conv1"] == 1  # a thin block, kept while searching
    rng = torch.Generator().manual_seed(0)
    for _ in range(6):
        target = 0.3 + 0.65 * float(torch.rand(1, generator=rng))
        state = budget_state(net, "latency", target, strict=False)
        with net.pinned(state):
            decided = net.decisions()
            ratio = cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"]
            assert ratio <= target + 0.01 + 1e-9
            open_blocks = [b for b in net.blocks if b.gate is not None and decided.blocks[b.name]]
            for block in open_blocks:
                assert not all(decided.widths[g] <= 1 for g in block.inner), (target, block.name)
            # re-spent: no closed channel of a living block fits under the target any more
            for block in open_blocks:
                for g in block.inner:
                    mask = state[g]
                    if not mask.all():
                        grown = mask.clone()
                        grown[int((~mask).nonzero()[0])] = True
                        with net.pinned({g: grown}):
                            assert cost_ratios(net, *net.counts_and_blocks(hard=True))["latency"] > target + 1e-9
        assert not (state["layer1.0"] and int(state["layer1.0.conv1"].sum()) == 1)


def _experiment(name: str):
    """experiments/{name}.py as a module (experiments/ is not a package)."""
    import importlib

    experiments = str(Path(__file__).resolve().parents[1] / "experiments")
    sys.path.insert(0, experiments)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(experiments)


def test_a_results_page_renames_its_rows_at_once_when_a_default_changes() -> None:
    """latency_benchmark.py --rename: a swap (the old default becomes a variant, a variant the default) moves every
    row, curve and timing to its new name at once, keeps accuracies and measured latencies, and says so on the page."""
    bench = _experiment("latency_benchmark")
    dense = {"method": "dense", "latency_ratio": 1.0, "test_acc": 0.9}

    def point(method: str, ratio: float, acc: float) -> dict:
        return {"method": method, "target": 0.5, "latency_ratio": ratio, "test_acc": acc}

    page = {"rows": {"ours_latency_bs1@0.5": {"method": "ours_latency_bs1", "test_acc": 0.80},
                     "ours_latency_bs1_round16@0.5": {"method": "ours_latency_bs1_round16", "test_acc": 0.82}},
            "carried": None, "labels": {},
            "bench": {"models": {"dense": {}, "ours_latency_bs1@0.5": {"ms": 1}, "ours_latency_bs1_round16@0.5": {"ms": 2}},
                      "ratios": {"ours_latency_bs1@0.5": [0.5], "ours_latency_bs1_round16@0.5": [0.4]}},
            "curves": {"1": {"ours_latency_bs1": [dense, point("ours_latency_bs1", 0.5, 0.80)],
                             "ours_latency_bs1_round16": [dense, point("ours_latency_bs1_round16", 0.4, 0.82)]}},
            "matched": {"1": {}}}
    mapping = {"ours_latency_bs1": "ours_latency_bs1_free", "ours_latency_bs1_round16": "ours_latency_bs1"}
    out = bench.renamed_page(page, mapping, "2026-12-06")
    assert out["rows"]["ours_latency_bs1@0.5"] == {"method": "ours_latency_bs1", "test_acc": 0.82}
    assert out["rows"]["ours_latency_bs1_free@0.5"]["test_acc"] == 0.80
    assert out["bench"]["ratios"] == {"ours_latency_bs1_free@0.5": [0.5], "ours_latency_bs1@0.5": [0.4]}
    assert list(out["curves"]["1"]) == ["ours_latency_bs1", "ours_latency_bs1_free"]  # the default first
    assert [q["method"] for q in out["curves"]["1"]["ours_latency_bs1"]] == ["dense", "ours_latency_bs1"]
    assert out["matched"]["1"]["ours_latency_bs1"] == [pytest.approx(0.82 + 0.08 / 6), None]  # between 0.4 and dense
    assert out["matched"]["1"]["ours_latency_bs1_free"] == [pytest.approx(0.80), None]
    assert out["renamed"] == [{"date": "2026-12-06", "mapping": mapping}]
    assert page["rows"]["ours_latency_bs1@0.5"]["test_acc"] == 0.80  # the input is left as it was


def test_the_thin_step_section_reads_each_rows_epochs_and_skips_unfinished_pairs(tmp_path: Path) -> None:
    """latency.md's ``--thin-branch step`` section: a row's epochs are its own split (a method may search fewer epochs
    than the page's --search-epochs), and a target where either method has not finished and been timed is left out."""
    bench = _experiment("latency_benchmark")

    def row(acc: float, status: str = "done") -> dict:
        return {"status": status, "test_acc": acc, "epochs": {"before_finetune": 1, "finetune": 4}}

    def timed(ratio: float) -> dict:
        return {"latency": {"64": {"paired_ratio": ratio}}}

    page = {"machine": {"cpu_flags": ["avx2"]}, "model": "cifar_resnet56", "seed": 4, "threads": 1,
            "search_epochs": 2, "finetune_epochs": 3,
            "tables": {"0.5": {"rows": {"ours_latency_bs64": row(0.80), "ours_latency_bs64_thinstep": row(0.825)},
                               "latency": {"bench": {"models": {"ours_latency_bs64": timed(0.48),
                                                                "ours_latency_bs64_thinstep": timed(0.47)}}}},
                       "0.25": {"rows": {"ours_latency_bs64": row(0.7),
                                         "ours_latency_bs64_thinstep": row(0.0, status="running")},
                                "latency": {"bench": {"models": {"ours_latency_bs64": timed(0.24)}}}}}}
    (tmp_path / "thin_step_x.json").write_text(json.dumps(page))
    rows = [line for line in bench.thin_step_markdown(tmp_path) if line.startswith("| [thin_step_x]")]
    assert rows == ["| [thin_step_x](thin_step_x.md) | AVX2 | cifar_resnet56 | 4 | 1+4, 1 thread(s) | 0.5 | "
                    "80.00 (0.480) | 82.50 (0.470) | +2.50 |"]
    assert bench.thin_step_markdown(tmp_path / "empty") == []


def test_the_repeatability_rows_count_pairs_whose_own_readings_span_more_than_the_window() -> None:
    """latency.md: per CPU ISA, how far each landed pair's fresh-process readings spread at the table's threads and
    at one; a spread over 1.1/0.9 is counted, since then no aim keeps every reading within ±10 %."""
    bench = _experiment("latency_benchmark")

    def row(several: list[float], one: list[float], lands: bool) -> dict:
        return {"lands": lands, "fresh_processes": {"2": [{"ratio": r} for r in several],
                                                    "1": [{"ratio": r} for r in one]}}

    busy = {"machine": {"cpu_flags": ["avx2", "avx512f"]}, "threads": 2,
            "rows": [row([0.48, 0.60], [0.46, 0.465], False), row([0.49, 0.50], [0.47, 0.47], True), {"lands": True}]}
    quiet = {"machine": {"cpu_flags": ["avx2"]}, "threads": 2, "rows": [row([0.48, 0.50], [0.46, 0.46], True)]}
    xeon = {"machine": {"cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["amx_bf16", "avx2", "avx512f"]},
            "threads": 2, "rows": [row([0.47, 0.48], [0.46, 0.47], True)]}
    lines = bench.repeatability_markdown([busy, quiet, xeon])
    assert "| AVX-512 | 2 | 1 | 1.135 / 1.250 | 1.005 / 1.011 | 1 |" in lines
    assert "| Intel AVX-512 + AMX | 1 | 1 | 1.021 / 1.021 | 1.022 / 1.022 | 0 |" in lines
    assert "| AVX2 | 1 | 1 | 1.042 / 1.042 | 1.000 / 1.000 | 0 |" in lines
    assert bench.repeatability_markdown([{"machine": {}, "threads": 2, "rows": [{"lands": True}]}]) == []


def test_thin_branch_step_closes_blocks_one_rounding_step_wide() -> None:
    """thin_branch="step": under rounding, a branch one ``round_to`` step wide is thin too, so a living block keeps
    at least two steps of each inner group (or the whole group when two do not fit); the default ("gate") keeps such
    blocks one step wide."""
    from dnas_prune import Pruner, SearchConfig
    from dnas_prune.errors import DnasPruneError
    from dnas_prune.search.budget import budget_state

    with pytest.raises(DnasPruneError, match="thin_branch"):
        SearchConfig(thin_branch="channel")
    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16))
    narrowest = {}
    for rule in ("gate", "step"):
        pruner = Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=10, latency=table,
                        target_latency=0.5, round_to=8, thin_branch=rule)
        net = pruner.net
        assert net.budget["thin_branch"] == rule
        rng = torch.Generator().manual_seed(0)
        widths = []
        for _ in range(8):
            with torch.no_grad():
                for name in net.gated_groups:
                    net.gate(name).logits.copy_(3 * torch.randn(net.gate(name).logits.shape, generator=rng))
            pruner._hold_blocks_under_their_channels()
            target = 0.3 + 0.5 * float(torch.rand(1, generator=rng))
            with net.pinned(budget_state(net, "latency", target, 8, strict=False)):
                decided = net.decisions()
                for block in net.blocks:
                    if block.gate is not None and decided.blocks[block.name]:
                        widths += [decided.widths[g] for g in block.inner]
        narrowest[rule] = min(widths)
    assert narrowest["gate"] == 8  # one step wide blocks live by default
    assert narrowest["step"] >= 16  # with "step" a living block is two steps (16) wide or more


def test_busy_spells_tells_a_memory_hog_from_a_spinner_and_splits_its_windows() -> None:
    """busy_spells.py's known spell: each hog is a program that runs, the page says which hog ran, and each shape's
    ratio is split by the windows the hog ran in, apart from the sentinel's own busy split."""
    spells = _experiment("busy_spells")
    for code in spells.HOGS.values():
        compile(code, "<hog>", "exec")
    spec = spec_of(create_model("cifar_resnet20"))
    shapes = {"dense": spec, "depth_cut": spec, spells.SENTINEL: spec}
    windows = [{"at": "00:00:00", "spinner": on, "dense": 10.0, "depth_cut": 8.0, spells.SENTINEL: 6.0 + 3.0 * on}
               for on in (True, False) * 4]
    result = {"command": "c", "machine": {"cpu": "cpu", "cpu_flags": ["avx2"], "torch": "2"}, "model": "cifar_resnet20",
              "batch_size": 64, "threads": 1, "minutes": 1.0, "one_thread_minutes": 1.0, "rounds": 3,
              "min_gap": 0.05, "spin_seconds": 30.0, "hog": "memory", "shapes": shapes,
              "one_thread": {k: 0.5 for k in shapes},
              "summary": spells.summarize(windows, shapes, 0.05)}
    spin = result["summary"]["spinner"]
    assert spin[spells.SENTINEL] == {"ratio_on": 0.9, "ratio_off": 0.6}
    assert spin["depth_cut"] == {"ratio_on": 0.8, "ratio_off": 0.8}
    page = spells.render(result)
    assert "streamed through two 256 MB arrays on one core for 30 s" in page
    assert f"| {spells.SENTINEL} | 0.600 | 0.900 | 1.500 |" in page
    result["hog"] = "spin"
    assert "spun on one core for 30 s" in spells.render(result)


def test_a_ms_target_below_the_floor_is_refused_in_ms() -> None:
    """--target-latency-ms below what the model can reach: the refusal speaks in ms, the user's unit, with the dense
    timing the target was read against (a busy machine's high dense timing shows there)."""
    from dnas_prune import Pruner
    from dnas_prune.errors import BudgetError

    model = create_model("cifar_resnet20")
    table = synthetic_table(spec_of(model), (3, 16, 16))
    with pytest.raises(BudgetError, match=r"^--target-latency-ms 0\.5 is below what this model can reach: .* ms per "
                                          r"batch, its floor, with the dense model measured at 10 ms here"):
        Pruner(model, (3, 16, 16), total_steps=10, latency=table, target_latency_ms=0.5, target_ms_dense=10.0)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.0, 3.0, float("nan")])
def test_a_latency_tolerance_outside_zero_one_is_refused(bad: float) -> None:
    from dnas_prune.search.pruner import SearchConfig

    with pytest.raises(DnasPruneError, match="latency_tolerance must be a fraction of the target in \\(0, 1\\)"):
        SearchConfig(metric="latency", target=0.5, latency_tolerance=bad)


def test_cli_prints_the_table_a_search_of_another_class_count_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A search on 10 classes keys its table by its own head; latency-table could only build the 1000-class one."""
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path))
    searched = create_model("resnet18", num_classes=10)  # as the search's parent has it
    settings = table_settings(searched, 1, input_size=(3, 64, 64), threads=1, memory_format="nchw")
    table = synthetic_table(settings["spec"], (3, 64, 64))
    table.settings = settings
    table.save(latency.cache_path(settings))
    args = ["latency-table", "--model", "resnet18", "--batch-size", "1", "--image-size", "64", "--threads", "1",
            "--memory-format", "nchw", "--no-progress", "--no-check"]
    assert main([*args, "--num-classes", "10"]) == 0
    assert str(latency.cache_path(settings)) in capsys.readouterr().out  # read, not built


def test_latency_threads_set_the_threads_the_budget_is_measured_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model deployed at one thread is budgeted at one thread while the search trains on every core: the
    table is asked for those threads, the config records them (the report times at them), and a given table of
    other threads is refused rather than silently used."""
    from dnas_prune import Pruner
    from dnas_prune.search import pruner as pruner_module
    from dnas_prune.search.pruner import SearchConfig

    model = create_model("cifar_resnet20")
    asked = []

    def fake_latency_table(model, batch_size, *, input_size=None, threads=None, check=True):
        asked.append(threads)
        return synthetic_table(spec_of(model), input_size, threads=threads or 7, batch_size=batch_size)

    monkeypatch.setattr(pruner_module, "latency_table", fake_latency_table)
    pruner = Pruner(model, (3, 16, 16), total_steps=4, target_latency=0.5, latency_threads=1)
    assert asked == [1] and pruner.config.latency_threads == 1
    unset = Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=4, target_latency=0.5)
    assert asked == [1, None] and unset.config.latency_threads == 7  # torch's setting, as the table measured it
    table = synthetic_table(spec_of(model), (3, 16, 16), threads=2)
    with pytest.raises(DnasPruneError, match="latency_threads 1 but the latency table given was measured at 2"):
        Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=4, target_latency=0.5, latency=table,
               latency_threads=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DnasPruneError, match="latency_threads .* must be a positive integer"):
            SearchConfig(metric="latency", latency_threads=bad)
