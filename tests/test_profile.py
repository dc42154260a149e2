import statistics
from pathlib import Path

import pytest
import torch

from dnas_prune.cli import main
from dnas_prune.models import build_model
from dnas_prune.device.timing import compare_latency, measure_latency
from dnas_prune.report.profile import profile_model
from dnas_prune.io.pruned import save_pruned

SPEC = {
    "format": 1, "family": "cifar", "block": "basic", "num_classes": 10, "stem": 4,
    "stages": [{"width": 4, "stride": 1, "blocks": [{"inner": [2], "downsample": False}]},
               {"width": 8, "stride": 2, "blocks": [{"inner": None, "downsample": True}]}],
}
FAST = {"warmup": 1, "repeats": 3, "max_seconds": 0.2}


def _sane(latency: dict, batch_size: int) -> None:
    assert 0 < latency["p10_ms"] <= latency["median_ms"] <= latency["p90_ms"]
    assert latency["batch_size"] == batch_size and latency["repeats"] >= 3
    assert latency["threads"] >= 1 and latency["memory_format"] in ("nchw", "channels_last")


@pytest.mark.parametrize("memory_format", ["auto", "nchw", "channels_last"])
def test_measure_latency(memory_format: str) -> None:
    model = build_model(SPEC).train()
    before = torch.get_num_threads()
    latency = measure_latency(model, (3, 16, 16), 2, threads=1, memory_format=memory_format, **FAST)
    _sane(latency, 2)
    assert latency["threads"] == 1 and torch.get_num_threads() == before
    if memory_format != "auto":
        assert latency["memory_format"] == memory_format
    assert model.conv1.weight.is_contiguous()  # the caller's model is not converted


def test_profile_and_compare() -> None:
    dense = build_model({**SPEC, "stem": 8, "stages": [{**SPEC["stages"][0], "width": 8}, SPEC["stages"][1]]})
    pruned = build_model(SPEC)
    profile = profile_model(pruned, (3, 16, 16), (1, 3), **FAST)
    assert profile["macs"] > 0 and profile["params"] > 0
    for bs in (1, 3):
        _sane(profile["latency"][bs], bs)
    result = compare_latency({"dense": dense, "pruned": pruned}, (3, 16, 16), (1, 2), **FAST)
    assert set(result["ratios"]) == {"dense", "pruned"}
    assert result["ratios"]["dense"][1] == {"speedup": 1.0, "macs_reduction": 1.0, "efficiency": 1.0}
    ratio = result["ratios"]["pruned"][2]
    assert ratio["macs_reduction"] == result["models"]["dense"]["macs"] / result["models"]["pruned"]["macs"] > 1
    assert ratio["efficiency"] == pytest.approx(ratio["speedup"] / ratio["macs_reduction"])
    timed = result["models"]
    assert timed["dense"]["latency"][2]["paired_ratio"] == 1.0  # each round's time over the first model's
    assert timed["pruned"]["latency"][2]["paired_ratio"] > 0


def test_cli_profile_registry_name(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["profile", "cifar_resnet20", "--batch-sizes", "1", "--repeats", "3", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "MACs: 40.81 M" in out and "memory format" in out


def test_cli_profile_pruned_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_pruned(build_model(SPEC), tmp_path / "p.pt")
    assert main(["profile", str(path), "--batch-sizes", "1", "2", "--repeats", "3"]) == 0
    assert "MACs:" in capsys.readouterr().out


def test_cli_profile_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "resnet9000"]) == 2
    assert "neither" in capsys.readouterr().err


class _Drift:
    """A clock for fake forwards: each forward costs its model's fixed work times the machine's speed of the
    moment, which halves and recovers every ``period`` forwards (a shared CPU's drift, without a clock)."""

    def __init__(self, period: int) -> None:
        self.calls, self.period = 0, period

    def __call__(self, work: float) -> float:
        self.calls += 1
        return work * (2.0 if (self.calls // self.period) % 2 else 1.0)


def test_interleaved_rounds_cancel_a_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    from dnas_prune.device import timing
    drift = _Drift(period=20)
    monkeypatch.setattr(timing.Runner, "once", lambda self: drift(self.work))
    runners = [timing.Runner(torch.nn.Identity(), (1,), 1, "nchw", torch.float32) for _ in range(2)]
    runners[0].work, runners[1].work = 1e-3, 3e-4
    timing.time_interleaved(runners, warmup=1, repeats=60, max_seconds=10.0)
    assert len(runners[0].times) == len(runners[1].times) == 60
    assert timing.paired_ratio(runners[1], runners[0]) == pytest.approx(0.3)
    # the same two timed one after the other, the first in a fast spell and the second in a slow one
    drift.calls = 0
    first = [drift(runners[0].work) for _ in range(15)]
    drift.calls = drift.period
    second = [drift(runners[1].work) for _ in range(15)]
    assert statistics.median(second) / statistics.median(first) == pytest.approx(0.6)


def test_interleaved_timing_speaks_when_it_has_been_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long timing reports rounds done whenever QUIET_SECONDS pass without a line (here: after every round)."""
    from dnas_prune.device import timing
    monkeypatch.setattr(timing.Runner, "once", lambda self: 1e-4)
    monkeypatch.setattr(timing, "QUIET_SECONDS", 0.0)
    runners = [timing.Runner(torch.nn.Identity(), (1,), 1, "nchw", torch.float32) for _ in range(2)]
    lines: list[str] = []
    timing.time_interleaved(runners, warmup=1, repeats=5, max_seconds=10.0, log=lines.append)
    assert lines == [f"  {i}/5 rounds timed" for i in range(1, 6)]
    monkeypatch.setattr(timing, "QUIET_SECONDS", 3600.0)
    lines.clear()
    timing.time_interleaved(runners, warmup=1, repeats=5, max_seconds=10.0, log=lines.append)
    assert lines == []


def test_compare_latency_picks_each_models_layout_from_the_same_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    from dnas_prune.device import timing
    drift = _Drift(period=7)
    work = {("wide", "nchw"): 2e-3, ("wide", "channels_last"): 1e-3,  # wide: faster in channels_last,
            ("narrow", "nchw"): 2e-4, ("narrow", "channels_last"): 5e-4}  # narrow: faster in NCHW
    monkeypatch.setattr(timing.Runner, "once", lambda self: drift(work[(self.model.tag, self.memory_format)]))
    models = {}
    for tag in ("wide", "narrow"):
        models[tag] = torch.nn.Identity()
        models[tag].tag = tag
    result = compare_latency(models, (3, 4, 4), (1,), warmup=1, repeats=40, max_seconds=10.0, with_cost=False)
    timed = {name: result["models"][name]["latency"][1] for name in models}
    assert timed["wide"]["memory_format"] == "channels_last" and timed["narrow"]["memory_format"] == "nchw"
    assert timed["narrow"]["paired_ratio"] == pytest.approx(0.2)


def test_profile_says_when_few_repeats_fit_or_others_crowded_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy machine can make every forward slow: the p90/median check then sees nothing, three repeats fit in the
    time allowed, and a latency many times too high was printed without a word."""
    from dnas_prune.report import profile as profile_module

    steady = {"median_ms": 900.0, "p10_ms": 890.0, "p90_ms": 910.0, "repeats": 3, "threads": 2, "warning": None}
    monkeypatch.setattr(profile_module, "measure_latency", lambda *args, **kw: dict(steady))
    monkeypatch.setattr(profile_module, "crowded", lambda cores, threads: True)
    warning = profile_model(build_model(SPEC), (3, 32, 32), (1,), repeats=50)["latency"][1]["warning"]
    assert "only 3 repeats fit" in warning and "cores busy while timing" in warning and "re-run" in warning
    monkeypatch.setattr(profile_module, "crowded", lambda cores, threads: False)
    assert profile_model(build_model(SPEC), (3, 32, 32), (1,), repeats=3)["latency"][1]["warning"] is None
