"""Issue 27, points 5 and 6: the papercuts a new user met, and progress output that can be trusted in a log.

CLI cases run ``dnas_prune.cli.main`` in-process: a user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import stat
from pathlib import Path

import pytest
import torch

from conftest import tiny_data, tiny_model, tiny_train_config
from dnas_prune import create_model
from dnas_prune.device import timing as timing_module
from dnas_prune.train import progress as progress_module
from dnas_prune.io.checkpoint import atomic_torch_save
from dnas_prune.cli import COMMANDS, build_parser, main
from dnas_prune.errors import DnasPruneError
from dnas_prune.io.export import export
from dnas_prune.config import load_config, to_toml, train_config_of
from dnas_prune.pipeline import Pipeline, RunClock
from dnas_prune.device.timing import compare_latency, measure_latency
from dnas_prune.device.policy import MEMORY_FORMAT_CHOICES
from dnas_prune.train.progress import Progress
from dnas_prune.train.loop import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
MINIMAL = '[model]\nname = "cifar_resnet20"\n[search]\ntarget_macs = 0.5\n'


def _config_file(tmp_path: Path, text: str = MINIMAL) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("dnas-prune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------ --epochs -1

@pytest.mark.parametrize("epochs", ["-1", "0"])
def test_non_positive_epochs_say_epochs_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           epochs: str) -> None:
    assert main(["train", "--model", "cifar_resnet20", "--epochs", epochs, "--out", str(tmp_path / "r")]) == 2
    message = one_line_error(capsys)
    assert f"epochs must be positive, got {epochs}" in message and "clean_epochs" not in message


def test_each_basic_setting_is_named_on_its_own() -> None:
    with pytest.raises(DnasPruneError, match=r"^batch size must be positive, got 0$"):
        TrainConfig(batch_size=0)
    with pytest.raises(DnasPruneError, match=r"^lr must be positive, got -0.1$"):
        TrainConfig(lr=-0.1)


# ------------------------------------------------------------------ profile --batch-sizes 0

@pytest.mark.parametrize("flags", [["--batch-sizes", "0"], ["--batch-sizes", "1", "-4"], ["--repeats", "0"],
                                   ["--threads", "0"]])
def test_profile_refuses_non_positive_sizes(capsys: pytest.CaptureFixture, flags: list[str]) -> None:
    assert main(["profile", "cifar_resnet20", *flags]) == 2
    assert "must be positive" in one_line_error(capsys)


def test_compare_latency_refuses_a_zero_batch() -> None:
    with pytest.raises(DnasPruneError, match="batch sizes must be positive"):
        compare_latency({"m": torch.nn.Identity()}, (3, 4, 4), (0,))


# ------------------------------------------------------------------ top-level --help

def test_top_level_help_describes_the_tool_and_its_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Prune a ResNet" in out and "dnas-prune run experiments/configs/quickstart.toml" in out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), command  # listed with its one-line help
    for developer_words in ("``", "add_parser", "one module per subcommand"):
        assert developer_words not in out


def test_the_help_examples_parse() -> None:
    """Every example command in the top-level help is accepted by the parser as written."""
    epilog = build_parser().epilog
    examples = [line.strip() for line in epilog.splitlines() if line.strip().startswith("dnas-prune ")]
    assert len(examples) >= 6
    for example in examples:
        build_parser().parse_args(shlex.split(example)[1:])


# ------------------------------------------------------------------ memory-format names

def _memory_format_choices() -> dict[str, tuple]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    found = {}
    for name, sub in subparsers.items():
        for action in sub._actions:
            if "--memory-format" in action.option_strings:
                found[name] = tuple(action.choices)
    return found


COMMAND_ARGS = {
    "train": ["train", "--model", "cifar_resnet20"],
    "search": ["search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--out", "r"],
    "finetune": ["finetune", "pruned.pt", "--out", "r"],
    "profile": ["profile", "cifar_resnet20"],
    "latency-table": ["latency-table", "--model", "cifar_resnet20", "--batch-size", "1"],
}


def test_every_command_offers_the_same_memory_format_names() -> None:
    found = _memory_format_choices()
    assert set(found) == set(COMMAND_ARGS)  # the commands that take --memory-format
    assert all(choices == MEMORY_FORMAT_CHOICES for choices in found.values()), found
    assert MEMORY_FORMAT_CHOICES == ("auto", "nchw", "channels_last")


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
@pytest.mark.parametrize("name, canonical", [("auto", "auto"), ("nchw", "nchw"), ("channels_last", "channels_last"),
                                             ("contiguous", "nchw")])
def test_every_command_takes_the_same_memory_format_names(command: str, name: str, canonical: str) -> None:
    args = build_parser().parse_args([*COMMAND_ARGS[command], "--memory-format", name])
    assert args.memory_format == canonical


@pytest.mark.parametrize("name, canonical", [("nchw", "nchw"), ("contiguous", "nchw"), ("channels_last", "channels_last")])
def test_config_and_library_take_the_same_names(tmp_path: Path, name: str, canonical: str) -> None:
    assert TrainConfig(memory_format=name).memory_format == canonical
    config = load_config(_config_file(tmp_path), [f"search.memory_format='{name}'"])
    assert train_config_of(config, "search").memory_format == canonical
    latency = measure_latency(torch.nn.Conv2d(3, 4, 3), (3, 8, 8), 1, warmup=1, repeats=3, memory_format=name,
                              max_seconds=0.01)
    assert latency["memory_format"] == canonical


def test_an_unknown_memory_format_lists_the_names(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DnasPruneError, match="memory_format must be one of auto, nchw, channels_last"):
        TrainConfig(memory_format="nhwc")
    with pytest.raises(SystemExit):
        main(["profile", "cifar_resnet20", "--memory-format", "nhwc"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'auto', 'nchw', 'channels_last'" in err


# ------------------------------------------------------------------ unknown --set key

def test_unknown_set_key_suggests_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(_config_file(tmp_path)), "--set", "search.epoch=1"]) == 2
    assert one_line_error(capsys).endswith("did you mean 'search.epochs'?")
    assert main(["run", str(_config_file(tmp_path)), "--set", "finetun.epochs=1"]) == 2
    assert one_line_error(capsys).endswith("did you mean 'finetune'?")


def test_unknown_key_in_the_file_suggests_too_and_nothing_far_is_suggested(tmp_path: Path) -> None:
    with pytest.raises(DnasPruneError, match=r"did you mean 'data.val_size'\?$"):
        load_config(_config_file(tmp_path, MINIMAL + "[data]\nvalsize = 10\n"))
    with pytest.raises(DnasPruneError) as info:
        load_config(_config_file(tmp_path), ["colour=1"])
    assert "did you mean" not in str(info.value)


# ------------------------------------------------------------------ finetune supernet.pt

def _fake_search_checkpoint(path: Path) -> Path:
    """What `dnas-prune search` writes as RUN_DIR/supernet.pt: a trainer checkpoint of kind search."""
    torch.save({"format": 1, "kind": "dnas_prune.trainer", "model": {}, "optimizer": {}, "epoch": 1,
                "metadata": {"kind": "dnas_prune.search", "supernet": {}}}, path)
    return path


def test_finetune_of_a_search_checkpoint_points_to_finalize(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    supernet = _fake_search_checkpoint(tmp_path / "supernet.pt")
    # No data anywhere: the wrong file must be reported before any data is looked for.
    assert main(["finetune", str(supernet), "--out", str(tmp_path / "ft"), "--data", str(tmp_path / "none")]) == 2
    message = one_line_error(capsys)
    suggested = re.search(r"`(dnas-prune finalize [^`]+)`", message)
    assert suggested, message
    args = build_parser().parse_args(shlex.split(suggested.group(1))[1:])  # the advice is a valid command line
    assert args.command == "finalize" and Path(args.checkpoint) == supernet and args.output.endswith("pruned.pt")


@pytest.mark.parametrize("kind, written", [({}, "model.pt"), ({"kind": "dnas_prune.finetune"}, "pruned.pt")])
def test_export_of_a_training_checkpoint_names_the_model_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              kind: dict, written: str) -> None:
    path = tmp_path / "train.pt"
    torch.save({"format": 1, "kind": "dnas_prune.trainer", "model": {}, "metadata": kind}, path)
    assert main(["export", str(path), "--no-check"]) == 2
    assert f"pass the {written} written next to it" in one_line_error(capsys)


# ------------------------------------------------------------------ report: data.root, image_size, latency warning

def test_report_records_the_resolved_data_root_and_no_cifar_image_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "cifar"
    data_dir.mkdir()
    monkeypatch.setenv("DNAS_PRUNE_DATA", str(data_dir))
    config = load_config(_config_file(tmp_path), out=str(tmp_path / "run"))
    assert config["data"]["root"] is None  # the file says nothing: the environment supplies the data
    lines: list[str] = []
    pipeline = Pipeline(config, log=lines.append)
    pipeline.search_dir.mkdir(parents=True)
    (pipeline.search_dir / "search.json").write_text("{}")
    for module in ("pipeline", "stages"):
        monkeypatch.setattr(f"dnas_prune.{module}.load_pruned_with_metadata",
                            lambda path: (torch.nn.Identity(), {"metrics": {}, "input_size": [3, 32, 32]}))
    captured = {}
    noisy = "p90 is 50.0x the median: the machine was busy while timing, so this latency is unreliable"

    def fake_report(out, **kwargs):
        captured.update(kwargs)
        return {"latency": {"models": {"dense": {"latency": {1: {"warning": None, "median_ms": 3.0}}},
                                       "pruned": {"latency": {1: {"warning": noisy, "median_ms": 2.0}}}},
                            "ratios": {"pruned": {1: {"speedup": 1.5}}}},
                "target": {"metric": "macs", "ratio": 0.5},
                "dense": {"test_acc": 0.9, "macs": 4e7, "params": 2e5},
                "pruned": {"test_acc": 0.88, "macs": 2e7, "macs_ratio": 0.5, "params": 1e5, "params_ratio": 0.5}}

    monkeypatch.setattr("dnas_prune.stages.write_report", fake_report)
    pipeline.report()
    assert captured["config"]["data"]["root"] == str(data_dir)
    assert captured["config"]["data"]["image_size"] is None and "image_size" not in captured["config_toml"]
    assert f'root = "{data_dir}"' in captured["config_toml"]
    assert f"warning: pruned latency at batch 1: {noisy}" in lines
    assert not any("warning: dense" in line for line in lines)
    summary = lines[-1]  # the run ends with what a user wants to know, and where the files are
    assert "dense 90.00% -> pruned 88.00% (-2.00 points)" in summary and "1.50x at batch 1" in summary
    assert "params" in summary and "report.md" in summary


def test_finetuned_file_names_the_data_when_none_was_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DNAS_PRUNE_DATA", raising=False)
    pipeline = Pipeline(load_config(_config_file(tmp_path), out=str(tmp_path / "run")))
    assert pipeline._data_root({"dataset": "/data/cifar10"}) == "/data/cifar10"


def test_image_size_is_kept_for_imagefolder_data_only(tmp_path: Path) -> None:
    assert "image_size" not in to_toml(load_config(_config_file(tmp_path)))
    imagefolder = load_config(_config_file(tmp_path), ["data.kind='imagefolder'"])
    assert "image_size = 224" in to_toml(imagefolder)


def test_noisy_latency_carries_a_warning() -> None:
    runner = timing_module.Runner(torch.nn.Identity(), (3, 4, 4), 1, "nchw", torch.float32)
    runner.times = [0.001] * 8 + [0.05] * 2  # p90 = 50 ms, median = 1 ms
    summary = runner.summary()
    assert summary["p90_ms"] / summary["median_ms"] > 40
    assert "busy" in summary["warning"] and "unreliable" in summary["warning"]
    runner.times = [0.001, 0.0011, 0.00105, 0.00102] * 3
    assert runner.summary()["warning"] is None


def test_profile_prints_the_warning(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timings are replaced by a fixed sequence (one forward in five takes 50x as long): no clock involved."""
    durations = itertools.cycle([0.001, 0.001, 0.001, 0.001, 0.05])
    monkeypatch.setattr(timing_module.Runner, "once", lambda self: next(durations))
    assert main(["profile", "cifar_resnet20", "--batch-sizes", "1", "--repeats", "20", "--memory-format", "nchw"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^warning: batch 1: p90 is [\d.]+x the median: the machine was busy", out, re.MULTILINE), out


# ------------------------------------------------------------------ file modes

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_and_exported_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        saved = atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "state.pt")
        exported = export(create_model("cifar_resnet20"), tmp_path / "model.torchscript", "torchscript", check=False)
    finally:
        os.umask(previous)
    for path in (saved, exported):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.torchscript", "state.pt"]  # no temp files left


# ------------------------------------------------------------------ README / CI

def test_readme_test_command_matches_ci_and_documents_the_cache() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "DNAS_PRUNE_CACHE" in ci
    test_lines = [line for line in readme.splitlines() if line.rstrip().endswith("pytest") and "pip install" in line]
    assert test_lines and all("DNAS_PRUNE_CACHE=" in line and "DNAS_PRUNE_DATA=" in line for line in test_lines)
    cache_lines = [line for line in readme.splitlines() if "~/.cache/dnas_prune" in line]
    assert cache_lines and "DNAS_PRUNE_CACHE" in " ".join(cache_lines + [readme.split(cache_lines[0])[1][:200]])


# ------------------------------------------------------------------ progress without a terminal

def test_training_without_a_terminal_prints_plain_periodic_lines(capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(progress_module, "PLAIN_SECONDS", float("inf"))  # only the quarter marks: deterministic
    trainer = Trainer(tiny_model(), tiny_data(64), tiny_train_config(epochs=2, progress=True), tmp_path)
    trainer.fit()
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    for epoch in (1, 2):  # 4 steps per epoch: a line at each quarter, then the epoch's summary
        lines = [line for line in captured.out.splitlines() if line.startswith(f"epoch {epoch}/2: ")]
        assert [re.match(r"epoch \d/2: (\d+)% \((\d)/4 steps\)", line).groups() for line in lines[:4]] == \
            [("25", "1"), ("50", "2"), ("75", "3"), ("100", "4")]
        assert all(re.search(r" img/s \d+", line) for line in lines[:4])
        assert lines[4].startswith(f"epoch {epoch}/2: loss") and "img/s" in lines[4]


def test_no_progress_prints_only_epoch_lines(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    Trainer(tiny_model(), tiny_data(64), tiny_train_config(epochs=1, progress=False), tmp_path).fit()
    out = capsys.readouterr().out
    assert "%" not in out and "epoch 1/1: loss" in out


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def test_plain_progress_speaks_at_least_every_ten_seconds(capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without fraction marks (as for evaluation), a line whenever PLAIN_SECONDS have passed: here a fake clock
    advances 6 s per reading, so every second update is more than 8 s after the last line. A bar that starts
    after a quiet phase counts it: the next bar, started 6 s after the last line and updated 6 s later, speaks at
    once."""
    monkeypatch.setattr(progress_module, "time", FakeClock(step=6.0))
    monkeypatch.setattr(Progress, "last_plain_line", None)  # no line yet in this (fake-clock) process
    with Progress(6, "evaluating val", unit="batches", terminal=False) as progress:
        for _ in range(6):
            progress.update()
    lines = capsys.readouterr().out.splitlines()
    assert [re.match(r"evaluating val: \d+% \((\d)/6 batches\)", line).group(1) for line in lines] == ["2", "4", "6"]
    assert "left" in lines[0]
    with Progress(6, "evaluating test", unit="batches", terminal=False) as progress:
        progress.update()
    assert capsys.readouterr().out.startswith("evaluating test: 17% (1/6 batches)")


def test_terminal_progress_is_a_bar_and_disabled_progress_is_silent(capsys: pytest.CaptureFixture) -> None:
    with Progress(3, "bar", terminal=True) as progress:
        progress.set_postfix(**{"img/s": "100"})
        progress.update(3)
        assert progress.bar is not None and "img/s=100" in str(progress.bar)  # what the bar shows
    assert "bar:" in capsys.readouterr().err
    with Progress(3, "quiet", enabled=False, every=0.25) as progress:
        progress.update(3)
    assert capsys.readouterr() == ("", "")


# ------------------------------------------------------------------ the pipeline's stage lines and run ETA

def test_each_stage_prints_its_place_and_the_run_eta(tmp_path: Path) -> None:
    lines: list[str] = []
    pipeline = Pipeline(load_config(_config_file(tmp_path), out=str(tmp_path / "run")), log=lines.append)
    for stage in pipeline.outputs():  # stages that do nothing: only the lines around them are under test
        setattr(pipeline, stage, lambda: None)
    pipeline.run()
    starts = [line for line in lines if " running (" in line]
    assert [re.match(r"\[(\w+)\] running \((\d)/6\)", line).groups() for line in starts] == \
        [("pretrain", "1"), ("search", "2"), ("finalize", "3"), ("finetune", "4"), ("export", "5"), ("report", "6")]
    assert "run ETA after the first epoch" in starts[0]  # nothing measured yet: no invented figure
    assert all(re.search(rf"\[{stage}\] done in [\d.]+s \({i}/6\)", "\n".join(lines))
               for i, stage in enumerate(pipeline.outputs(), 1))


class _FakeTrainer:
    def __init__(self, images: int, epoch: int) -> None:
        self.data = tiny_data(images)
        self.epoch = epoch
        self.last_eval_time = 2.0


def test_run_eta_adds_the_remaining_epochs_at_the_measured_speed(tmp_path: Path) -> None:
    config = load_config(_config_file(tmp_path), ["pretrain.epochs=3", "search.epochs=2", "finetune.epochs=2",
                                                  "report.max_seconds=3.0", "report.batch_sizes=[1, 64]"])
    pipeline = Pipeline(config)
    pipeline._data = (tiny_data(100), "root")
    clock = RunClock(pipeline, list(pipeline.outputs()))
    clock.start("pretrain", "1/6")
    # 100 images in 8 s of training + 2 s of evaluation: 0.1 s per image. Left: pretrain 2 x 10 s, search and
    # finetune 2 x 10 s each, finalize 2 s, export 10 s, report 2 models x 2 layouts x 3 s x 2 batch sizes + 5 s
    # = 29 s: 101 s.
    note = clock.note(_FakeTrainer(100, epoch=1), {"epoch_time": 8.0})
    assert note == " | run 1/6 pretrain, ~1 min 41 s left"
    assert clock.eta().startswith("~1 min 41 s left in the run (at 10 img/s")
    clock.finish("pretrain")
    clock.start("search", "2/6")  # search's own speed replaces the estimate for its epochs
    # 0.3 s per image now: search 1 x 30 s, finetune 2 x 30 s (the latest speed), then the same 41 s: 131 s.
    assert clock.note(_FakeTrainer(100, epoch=1), {"epoch_time": 28.0}) == " | run 2/6 search, ~2 min 11 s left"


def test_a_sigterm_stops_like_ctrl_c_and_run_refuses_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """torchrun and batch schedulers stop a job with SIGTERM: it says how to continue, as Ctrl-C does. ``run`` under
    torchrun ran the whole pipeline once per process, each writing the same files."""
    import signal

    from dnas_prune.cli import profile as profile_command

    from conftest import REPO

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(profile_command, "run", lambda args: os.kill(os.getpid(), signal.SIGTERM))
    assert main(["profile", "cifar_resnet20"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the CLI's only while it runs
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(REPO / "experiments" / "configs" / "quickstart.toml")]) == 2
    assert "dnas-prune run is one process" in capsys.readouterr().err
