"""TensorBoard monitoring: a tiny logged search read back from its event files, hook delegation, the CLI."""

from __future__ import annotations

import json
import io
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread
from tensorboard.backend.event_processing import event_accumulator

from dnas_prune.cli import main
from dnas_prune.train.cifar import CifarData, Split
from dnas_prune.models import create_model
from dnas_prune.report.monitor import MonitorHooks, gate_heatmap, width_bars, width_chart
from dnas_prune.search.pruner import SearchConfig
from dnas_prune.stages import search
from dnas_prune.search.supernet import Supernet
from dnas_prune.train.loop import Callbacks, TrainConfig

from conftest import read_events


def scalar_values(events: event_accumulator.EventAccumulator, tag: str) -> list[float]:
    return [e.value for e in events.Scalars(tag)]


def pixel_size(fig: Figure) -> tuple[int, int]:
    """(height, width) in pixels a figure renders to."""
    return round(fig.get_figheight() * fig.dpi), round(fig.get_figwidth() * fig.dpi)


def decode(png: bytes) -> np.ndarray:
    """(height, width, channels) of a PNG."""
    return imread(io.BytesIO(png), format="png")


def rendered(fig: Figure) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return decode(buffer.getvalue())


def synthetic_data(seed: int = 0) -> CifarData:
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                     torch.randint(0, 10, (n,), generator=generator))

    return CifarData(split(512), split(128), split(128), classes=[str(c) for c in range(10)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread, because OpenMP spinning on a shared, busy CPU is >10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def logged_search(tmp_path_factory: pytest.TempPathFactory):
    """2 epochs x 8 steps of a resnet20 search, scalars every 2 steps and histograms every 4."""
    out = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    monitor = MonitorHooks(out / "tb", scalar_every=2, histogram_every=4)  # finds the search's Pruner
    train = TrainConfig(epochs=2, batch_size=64, progress=False, memory_format="contiguous")
    # Strong gate pressure (lr, lower initial logits) so 16 steps visibly move the cost toward the target; streams
    # gated too, so every kind of group is logged.
    config = SearchConfig(target=0.5, gate_lr=0.3, init_logit=2.0, recalibrate_batches=2, block_gates=True,
                          gate_streams=True)
    net, summary = search(create_model("cifar_resnet20", num_classes=10), synthetic_data(), train, config, out,
                          callbacks=[monitor])
    monitor.log_search_summary(summary)
    monitor.close()
    return net, read_events(out / "tb"), out


def test_search_logs_every_kind(logged_search) -> None:
    net, events, out = logged_search
    tags = events.Tags()
    scalars = {"loss/ce", "budget/expected_ratio", "budget/hard_macs_ratio", "budget/hard_params_ratio",
               "budget/offset", "budget/target", "gates/temperature", "lr/weights", "lr/gates", "acc/train", "acc/val",
               "blocks/open", "channels/layer1.stream", "channels/layer2.stream", "channels/layer2.inner",
               "throughput/img_per_s"}
    assert scalars <= set(tags["scalars"])
    assert {"gate_prob/layer1.0.conv1", "gate_prob/layer3.stream", "gate_prob/blocks"} <= set(tags["histograms"])
    assert {"gates/heatmap", "architecture/widths"} <= set(tags["images"])
    assert "architecture/search/text_summary" in tags["tensors"]
    assert "custom_scalars__config__" in tags["tensors"]
    assert list((out / "tb" / "hparams").glob("events.out.tfevents.*"))
    # scalars every 2 steps over 16 steps, histograms at 4, 8 (epoch end), 12, 16 and after projection
    assert [e.step for e in events.Scalars("loss/ce")] == list(range(2, 17, 2))
    assert [e.step for e in events.Histograms("gate_prob/layer1.0.conv1")] == [4, 8, 12, 16, 17]
    table = events.Tensors("architecture/search/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| layer1 |" in table and "MACs" in table


def test_logged_state_tracks_the_search(logged_search) -> None:
    net, events, _ = logged_search
    expected = scalar_values(events, "budget/expected_ratio")  # one per epoch
    assert len(expected) == 2 and expected[-1] < 1.0
    targets, hard = scalar_values(events, "budget/target"), scalar_values(events, "budget/hard_macs_ratio")
    assert all(a >= b for a, b in zip(targets, targets[1:])) and targets[-1] == pytest.approx(0.5)
    assert all(0.85 * t <= h <= t + 1e-6 for t, h in zip(targets, hard[:len(targets)]))
    decided = net.decisions()
    assert scalar_values(events, "blocks/open")[-1] == decided.blocks_kept
    assert scalar_values(events, "channels/layer2.stream")[-1] == int(decided.masks["layer2.stream"].sum())
    inner = sum(decided.widths[g] for info in net.blocks if info.stage == 3 for g in info.inner)
    assert scalar_values(events, "channels/layer3.inner")[-1] == inner
    assert scalar_values(events, "budget/hard_macs_ratio")[-1] == pytest.approx(
        net.hard_cost().macs / net.dense_cost.macs)
    for tag, draw in (("gates/heatmap", gate_heatmap), ("architecture/widths", width_chart)):
        event = events.Images(tag)[-1]
        image = decode(event.encoded_image_string)
        assert (event.height, event.width) == image.shape[:2] == pixel_size(draw(net))
        assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50  # a drawn figure, not a blank canvas
    assert plt.get_fignums() == []  # add_figure leaves no figure open in pyplot's registry


def test_figures_show_gates_and_widths() -> None:
    net = Supernet(create_model("cifar_resnet20", num_classes=10))
    net.set_gate_state({"layer2.1": False, "layer3.stream": torch.arange(64) < 16})
    rows = net.channel_groups  # every channel group of a resnet20 supernet is gated

    heatmap = gate_heatmap(net)
    block_ax, ax, colorbar = heatmap.axes
    assert ax.get_title() and ax.get_xlabel() == "channel index" and block_ax.get_ylabel() == "channel group"
    assert [t.get_text() for t in block_ax.get_yticklabels()] == rows
    assert colorbar.get_ylabel() == "P(open)"
    grid = ax.images[0].get_array()
    assert grid.shape == (len(rows), 64)
    assert grid[rows.index("layer3.stream"), :16].min() == 1.0 and grid[rows.index("layer3.stream"), 16:].max() == 0.0
    assert grid.mask[rows.index("layer1.0.conv1"), 16:].all() and not grid.mask[rows.index("layer1.0.conv1"), :16].any()
    blocks = block_ax.images[0].get_array()
    assert blocks[rows.index("layer2.1.conv1"), 0] == 0.0 and blocks[rows.index("layer2.2.conv1"), 0] > 0.5
    assert blocks.mask[rows.index("layer2.stream"), 0]  # a stream belongs to no block

    chart = width_chart(net)
    (ax,) = chart.axes
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() == "channels"
    assert [t.get_text() for t in ax.get_xticklabels()] == rows
    bars = width_bars(net)
    dense_bars, kept_bars = ax.containers[:2]
    assert [p.get_height() for p in dense_bars] == [net.groups[name].size for name in rows]
    assert [p.get_height() for p in kept_bars] == [bar.kept for bar in bars]
    assert [bar.name for bar in bars if bar.removed] == ["layer2.1.conv1"]
    legend = [t.get_text() for t in chart.legends[0].get_texts()]
    assert legend == ["dense width", "kept, layer1", "kept, layer2", "kept, layer3", "residual stream (hatched)",
                      "block removed"]
    decided = net.decisions()
    assert not decided.blocks["layer2.1"] and decided.widths["layer2.1.conv1"] == 0
    assert decided.widths["layer3.stream"] == 16

    for fig in (heatmap, chart):
        assert rendered(fig).shape[:2] == pixel_size(fig)
    assert 800 <= pixel_size(chart)[1] <= 1800 and 350 <= pixel_size(heatmap)[0] <= 1400

    open_net = Supernet(create_model("cifar_resnet20", num_classes=10))
    assert "block removed" not in [t.get_text() for t in width_chart(open_net).legends[0].get_texts()]
    empty = gate_heatmap(Supernet(create_model("cifar_resnet20", num_classes=10), exclude=["*"]))
    assert [t.get_text() for t in empty.axes[0].texts] == ["no gated channel groups"]


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    monitor = MonitorHooks(tmp_path / "tb")
    trainer = SimpleNamespace(is_main=False, global_step=0, steps_per_epoch=4, callbacks=Callbacks())
    monitor.on_epoch_start(trainer, 0)
    monitor.after_step(trainer, 1, {"loss": torch.tensor(1.0), "lr": 0.1})
    monitor.on_epoch_end(trainer, 0, {"train_acc": 0.5})
    monitor.log_hparams({"lr": 0.1}, {"acc": 0.5})
    monitor.close()
    assert not (tmp_path / "tb").exists()


def test_the_monitor_logs_the_budget_the_search_computed(logged_search) -> None:
    """Per step the Pruner's own numbers (its trace: target and hard ratio at each step), per epoch the expected
    ratio the search's callback put into the epoch's metrics."""
    net, events, out = logged_search
    summary = json.loads((out / "search.json").read_text())
    trace = {t["step"]: t for t in summary["steering"]["trace"]}
    for tag, key in (("budget/target", "target"), ("budget/hard_macs_ratio", "hard_ratio")):
        logged = {e.step: e.value for e in events.Scalars(tag) if e.step in trace}
        assert len(logged) >= 8 and all(v == pytest.approx(trace[step][key], rel=1e-6) for step, v in logged.items())
    history = summary["history"]
    assert scalar_values(events, "budget/expected_ratio") == pytest.approx([h["expected_ratio"] for h in history])


def test_cli_search_and_finalize_write_tensorboard(tiny_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--data", str(tiny_cifar), "--val-size", "6", "--batch-size", "4", "--epochs", "2", "--no-progress",
              "--memory-format", "contiguous", "--precision", "fp32"]
    # 14 steps with a fast gate lr: projecting a barely searched, all-open state can miss the ±1 % window
    assert main(["search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--gate-lr", "0.3",
                 "--gate-streams", "--out", str(out), *common]) == 0
    assert main(["finalize", str(out / "supernet.pt"), "-o", str(tmp_path / "pruned.pt")]) == 0
    tags = read_events(out / "tb").Tags()
    assert {"loss/ce", "budget/expected_ratio", "blocks/open", "acc/val"} <= set(tags["scalars"])
    assert "gate_prob/layer2.stream" in tags["histograms"]
    assert {"gates/heatmap", "architecture/widths"} <= set(tags["images"])
    assert {"architecture/search/text_summary", "architecture/finalized/text_summary"} <= set(tags["tensors"])
    assert list((out / "tb" / "hparams").glob("events.out.tfevents.*"))



def test_cli_train_logs_unless_disabled(tiny_cifar: Path, tmp_path: Path) -> None:
    common = ["--model", "cifar_resnet20", "--data", str(tiny_cifar), "--val-size", "6", "--batch-size", "8",
              "--epochs", "1", "--no-progress", "--memory-format", "contiguous", "--precision", "fp32"]
    assert main(["train", "--out", str(tmp_path / "logged"), *common]) == 0
    tags = read_events(tmp_path / "logged" / "tb").Tags()
    assert {"loss/ce", "lr/weights", "throughput/img_per_s", "acc/train", "acc/val", "acc/test"} <= set(tags["scalars"])
    assert "budget/offset" not in tags["scalars"] and not tags["images"]
    assert list((tmp_path / "logged" / "tb" / "hparams").glob("events.out.tfevents.*"))
    assert main(["train", "--out", str(tmp_path / "quiet"), "--no-tensorboard", *common]) == 0
    assert (tmp_path / "quiet" / "model.pt").is_file() and not (tmp_path / "quiet" / "tb").exists()
