"""The run report's figures and files, from a real resnet20 and a pruned model finalized from a pinned gate state."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from dnas_prune.finalize import finalize
from dnas_prune.models import create_model
from dnas_prune.report.summary import layer_widths
from dnas_prune.report.report import (DENSE, PRUNED, SEARCHED, Point, accuracy_latency_figure, accuracy_macs_figure,
                                layer_bars, widths_figure, write_report)
from dnas_prune.search.supernet import Supernet

PEERS = [Point("tp_magnitude", 21e6, 0.80, {2: 0.9}), Point("uniform_l1", 20e6, 0.78)]


@pytest.fixture(scope="module")
def pruned_run():
    """A dense resnet20 and the model its supernet finalizes to with layer2.1 closed and layer3.0 at 20 channels."""
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=10).eval()
    net = Supernet(copy.deepcopy(dense))
    net.set_gate_state({"layer2.1": False, "layer3.0.conv1": torch.arange(64) < 20})
    layers = layer_widths(net)
    return dense, finalize(net).eval(), layers


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_widths_figure_groups_by_stage_and_marks_removed_blocks(pruned_run) -> None:
    _, _, layers = pruned_run
    bars = layer_bars(layers)
    assert [b.stage for b in bars] == [1] * 4 + [2] * 4 + [3] * 4
    assert [b.name for b in bars if b.stream] == ["layer1.stream", "layer2.stream", "layer3.stream"]
    assert [b.name for b in bars if b.removed] == ["layer2.1.conv1"]
    assert next(b for b in bars if b.name == "layer3.0.conv1").kept == 20
    fig = widths_figure(bars, "widths")
    (ax,) = fig.axes
    assert ax.get_title() == "widths" and ax.get_xlabel() and ax.get_ylabel() == "channels"
    assert [t.get_text() for t in ax.get_xticklabels()] == [layer["name"] for layer in layers]
    dense_bars, kept_bars = ax.containers[:2]
    assert [p.get_height() for p in dense_bars] == [layer["dense"] for layer in layers]
    assert [p.get_height() for p in kept_bars] == [layer["pruned"] for layer in layers]
    assert [p.get_hatch() for p in kept_bars] == ["///" if b.stream else None for b in bars]
    assert len({tuple(p.get_facecolor()) for p in kept_bars}) == 3  # one colour per stage
    assert legend_labels(fig) == ["dense width", "kept, layer1", "kept, layer2", "kept, layer3",
                                  "residual stream (hatched)", "block removed"]


def test_accuracy_figures_place_own_points_and_peers() -> None:
    points = [Point(DENSE, 40e6, 0.9, {1: 2.0, 2: 3.0}), Point(SEARCHED, 20e6, 0.6),
              Point(PRUNED, 20e6, 0.85, {1: 1.0, 2: 1.5})]
    macs = accuracy_macs_figure(points, PEERS, "accuracy vs MACs")
    (ax,) = macs.axes
    assert ax.get_title() == "accuracy vs MACs"
    assert ax.get_xlabel() == "MACs (millions)" and ax.get_ylabel() == "test accuracy (%)"
    assert [tuple(c.get_offsets()[0]) for c in ax.collections] == [(40, 90), (20, 60), (20, 85), (21, 80), (20, 78)]
    assert legend_labels(macs) == [DENSE, SEARCHED, PRUNED, "tp_magnitude", "uniform_l1"]
    assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] > 40

    latency = accuracy_latency_figure(points, [1, 2], PEERS, "accuracy vs latency")
    batch1, batch2 = latency.axes
    assert latency.get_suptitle() == "accuracy vs latency"
    assert (batch1.get_title(), batch2.get_title()) == ("batch 1", "batch 2")
    assert batch1.get_xlabel() == batch2.get_xlabel() == "median latency per batch (ms)"
    assert batch1.get_ylabel() == "test accuracy (%)"
    # the searched supernet is not timed; the peer has a latency at batch 2 only, uniform_l1 at none
    assert [tuple(c.get_offsets()[0]) for c in batch1.collections] == [(2, 90), (1, 85)]
    assert [tuple(c.get_offsets()[0]) for c in batch2.collections] == [(3, 90), (1.5, 85), (0.9, 80)]
    assert legend_labels(latency) == [DENSE, PRUNED, "tp_magnitude"]


@pytest.mark.parametrize("peers", [[], PEERS], ids=["alone", "with_peers"])
def test_write_report_draws_readable_pngs(pruned_run, tmp_path: Path, peers: list[Point]) -> None:
    dense, pruned, layers = pruned_run
    report = write_report(
        tmp_path, dense=dense, dense_metrics={"test_acc": 0.9, "val_acc": 0.91}, pruned=pruned,
        pruned_metadata={"input_size": [3, 32, 32], "test_acc": 0.85, "layers": layers},
        search_summary={"target": {"metric": "macs", "ratio": 0.5}, "accuracy": {"test": 0.6},
                        "final": {"macs": 20e6}},
        config={"": {"out": str(tmp_path)}, "model": {"name": "cifar_resnet20"}}, config_toml="", exports={},
        batch_sizes=(1, 2), max_seconds=0.05, threads=1, peers=peers,
    )
    assert report["figures"] == ["widths.png", "accuracy_macs.png", "accuracy_latency.png"]
    for name in report["figures"]:
        image = imread(tmp_path / name)
        assert 400 <= image.shape[0] <= 1000 and 800 <= image.shape[1] <= 1800, (name, image.shape)
        assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50, name  # drawn, not a blank canvas
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [peer["label"] for peer in saved["peers"]] == [peer.label for peer in peers]
    markdown = (tmp_path / "report.md").read_text()
    assert all(f"({name})" in markdown for name in report["figures"])
    assert ("beside other results: tp_magnitude, uniform_l1." in markdown) == bool(peers)


def test_a_latency_budget_is_timed_at_its_batch_size_and_reported_three_ways(pruned_run, tmp_path: Path) -> None:
    dense, pruned, layers = pruned_run
    tries = [{"measured_ratio": 0.62, "error": 0.24}, {"measured_ratio": 0.51, "error": 0.02}]

    def report_at(threads: int | None) -> dict:
        return write_report(
            tmp_path, dense=dense, dense_metrics={"test_acc": 0.9}, pruned=pruned,
            pruned_metadata={"input_size": [3, 32, 32], "test_acc": 0.85, "layers": layers},
            search_summary={"target": {"metric": "latency", "ratio": 0.5}, "accuracy": {"test": 0.6},
                            "projection": {"measured": tries}, "config": {"search": {"latency_threads": 1}},
                            "final": {"macs": 20e6, "latency_ratio": 0.43, "latency_batch_size": 3}},
            config={"": {"out": str(tmp_path)}, "model": {"name": "cifar_resnet20"}}, config_toml="", exports={},
            batch_sizes=(1,), max_seconds=0.05, threads=threads,
        )

    report = report_at(None)  # no threads: the budget's
    assert report["latency"]["batch_sizes"] == [1, 3] and report["latency"]["threads"] == 1
    budget = report["latency_budget"]
    assert (budget["batch_size"], budget["predicted_ratio"], budget["landing_measured_ratio"]) == (3, 0.43, 0.51)
    assert budget["report_measured_ratio"] == report["latency"]["models"]["pruned"]["latency"][3]["paired_ratio"] > 0
    markdown = (tmp_path / "report.md").read_text()
    assert "latency at batch 3: 0.430 predicted by the latency table, 0.510 measured when the search landed" in markdown
    assert "timed below." in markdown and "the budget was measured at" not in markdown
    other = report_at(2)  # report.threads set otherwise than the budget's: said
    assert (other["latency_budget"]["threads"], other["latency_budget"]["report_threads"]) == (1, 2)
    assert "timed below at 2 threads (the budget was measured at 1)." in (tmp_path / "report.md").read_text()


def summary_result(metric: str, dense_ms: dict[int, float], pruned_ms: dict[int, float],
                   warning: str | None = None) -> dict:
    timed = {name: {"latency": {bs: {"median_ms": ms} for bs, ms in each.items()}}
             for name, each in (("dense", dense_ms), ("pruned", pruned_ms))}
    ratios = {"pruned": {bs: {"speedup": dense_ms[bs] / ms} for bs, ms in pruned_ms.items()}}
    return {"dense": {"test_acc": 0.873, "macs": 40.8e6, "params": 272.5e3},
            "pruned": {"test_acc": 0.852, "macs": 20.3e6, "params": 202.7e3, "macs_ratio": 0.497,
                       "params_ratio": 0.744},
            "latency": {"models": timed, "ratios": ratios, **({"warning": warning} if warning else {})},
            "target": {"metric": metric, "ratio": 0.5}}


def test_run_summary_says_what_to_do_when_a_cost_budget_buys_little_speed() -> None:
    from dnas_prune.stages import run_summary

    slow_at_1 = summary_result("macs", {1: 2.91, 64: 34.17}, {1: 3.15, 64: 24.32})
    text = run_summary(slow_at_1, "out/pruned.pt", {"onnx": "out/pruned.onnx"}, "out")
    assert "0.92x at batch 1, 1.41x at batch 64" in text and "-2.10 points" in text
    assert "out/pruned.pt" in text and "out/pruned.onnx" in text and "out/report.md" in text
    note = text.splitlines()[-1]
    assert note.lstrip().startswith("note") and "batch 1:" in note and "a macs budget" in note
    assert "--target-latency R --latency-batch-size 1" in note
    # a latency budget was already priced on the device; a model faster everywhere needs no note
    assert "note" not in run_summary(summary_result("latency", {1: 2.9, 64: 34.0}, {1: 3.1, 64: 24.0}), "p", {}, "o")
    assert "note" not in run_summary(summary_result("macs", {1: 2.9, 64: 34.0}, {1: 2.0, 64: 17.0}), "p", {}, "o")
    # timings a load disturbed say nothing of the budget: the summary says so instead of blaming it
    busy = run_summary(summary_result("macs", {1: 2.91, 64: 34.17}, {1: 3.15, 64: 24.32}, "others kept 1.8 cores busy"),
                       "p", {}, "o")
    assert "note" not in busy and busy.splitlines()[-1].split() == ["warning", "latency", "timings", "not", "to", "be",
                                                                     "trusted:", "others", "kept", "1.8", "cores", "busy"]


def test_report_md_warns_beside_a_latency_it_knows_is_unreliable(pruned_run, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The timing's noise warning (a busy machine) reaches report.md next to the figures, not only report.json."""
    import dnas_prune.device.timing as timing_module

    import dnas_prune.report.report as report_module

    monkeypatch.setattr(timing_module, "noise_warning", lambda median, p90: "p90 is 9x the median: busy")
    monkeypatch.setattr(report_module, "crowded", lambda cores, threads: True)  # as under another process's load
    dense, pruned, layers = pruned_run
    write_report(tmp_path, dense=dense, dense_metrics={"test_acc": 0.9}, pruned=pruned,
                 pruned_metadata={"input_size": [3, 32, 32], "test_acc": 0.85, "layers": layers},
                 search_summary={"target": {"metric": "macs", "ratio": 0.5}, "accuracy": {"test": 0.6},
                                 "final": {"macs": 20e6}},
                 config={"": {"out": str(tmp_path)}, "model": {"name": "cifar_resnet20"}}, config_toml="", exports={},
                 batch_sizes=(1,), max_seconds=0.05, threads=1)
    markdown = (tmp_path / "report.md").read_text()
    assert "**Warning**, latency dense at batch 1: p90 is 9x the median: busy." in markdown
    assert "**Warning**, latency pruned at batch 1: p90 is 9x the median: busy." in markdown
    assert "**Warning**, latency timings: other processes kept" in markdown and "re-run the report on an idle" in markdown
