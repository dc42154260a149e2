import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from dnas_prune.cli import build_parser, main
from dnas_prune.cli.common import train_config_from
from dnas_prune.errors import DnasPruneError
from dnas_prune.config import load_config, parse_override, train_config_of
from dnas_prune.pipeline import Pipeline
from dnas_prune.io.pruned import load_pruned_with_metadata
from dnas_prune.io.export import read_export_info
from dnas_prune.train.cifar import CIFAR10_MEAN
from dnas_prune.train.loop import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
QUICKSTART = CONFIGS / "from_scratch.toml"  # the pretrain stage included
# Every training stage: one epoch of batch 8 on the tiny tree (30 train images after a val split of 6).
TINY = [
    "data.val_size=6", "data.limit_train=1024", "progress=false", "export.formats=['onnx']",
    "report.batch_sizes=[1, 2]", "report.max_seconds=0.05",
    *(f"{stage}.{key}" for stage in ("pretrain", "search", "finetune")
      for key in ("epochs=1", "batch_size=8", "memory_format='contiguous'")),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


MINIMAL = '[model]\nname = "cifar_resnet20"\n[search]\ntarget_macs = 0.5\n'


@pytest.mark.parametrize("text, expected", [
    ("search.epochs=1", ("search", "epochs", 1)),
    ("search.target_macs=0.3", ("search", "target_macs", 0.3)),
    ("export.formats=[]", ("export", "formats", [])),
    ("search.exclude=['layer1.*']", ("search", "exclude", ["layer1.*"])),
    ("data.root=../shared/data/cifar10-jpeg", ("data", "root", "../shared/data/cifar10-jpeg")),
    ("progress=false", ("", "progress", False)),
    ("device = cuda", ("", "device", "cuda")),
])
def test_parse_override(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


def test_overrides_and_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), ["search.epochs=2", "data.limit_train=1024", "seed=3"])
    assert config["search"]["epochs"] == 2 and config["data"]["limit_train"] == 1024 and config[""]["seed"] == 3
    assert config["search"]["lr"] == 0.05 and config["pretrain"]["epochs"] == 30  # the commands' own defaults
    assert config[""]["out"] == str(Path("runs") / "config")
    assert load_config(_write(tmp_path, MINIMAL), out="elsewhere")[""]["out"] == "elsewhere"


@pytest.mark.parametrize("epochs", [1, 30, 45])
def test_pretrain_trains_as_the_train_command_does(tmp_path: Path, epochs: int) -> None:
    """The dense stage of `dnas-prune run` and `dnas-prune train` share one recipe, clean tail included."""
    config = load_config(_write(tmp_path, MINIMAL), [f"pretrain.epochs={epochs}"])
    command = train_config_from(build_parser().parse_args(["train", "--model", "cifar_resnet20", "--epochs", str(epochs)]))
    assert asdict(train_config_of(config, "pretrain")) == asdict(command)
    assert train_config_of(load_config(_write(tmp_path, MINIMAL), ["pretrain.clean_epochs=0"]), "pretrain").clean_epochs == 0


def test_finetune_continues_the_search_lr_schedule_unless_told(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), ["search.epochs=2", "finetune.epochs=3", "search.lr=0.2"])
    search, finetune = train_config_of(config, "search"), train_config_of(config, "finetune")
    assert (search.schedule_epochs, search.schedule_start) == (5, 0)
    assert (finetune.schedule_epochs, finetune.schedule_start, finetune.epochs) == (5, 2, 3)
    assert finetune.lr == search.lr == 0.2 and finetune.warmup_epochs == search.warmup_epochs
    with pytest.raises(DnasPruneError, match=r"finetune.lr would be ignored.*continue_schedule = false"):
        train_config_of(load_config(_write(tmp_path, MINIMAL), ["finetune.lr=0.5"]), "finetune")
    apart = load_config(_write(tmp_path, MINIMAL), ["search.epochs=2", "finetune.epochs=3",
                                                    "finetune.continue_schedule=false", "finetune.lr=0.5"])
    finetune = train_config_of(apart, "finetune")
    assert (finetune.schedule_epochs, finetune.schedule_start, finetune.lr) == (0, 0, 0.5)


def test_a_run_dir_from_before_a_changed_default_keeps_its_old_behaviour(tmp_path: Path) -> None:
    """A config.toml without finetune.continue_schedule / search.prior / search.channel_order ran with separate
    schedules, the gamma prior and learned channel order: continuing it under the new defaults is refused, not
    silently switched."""
    out = tmp_path / "run"
    Pipeline(load_config(_write(tmp_path, MINIMAL), out=str(out)))._check_run_dir()
    (out / "pretrain").mkdir()  # a stage has started: the settings hold from here
    saved = out / "config.toml"
    saved.write_text(saved.read_text().replace("continue_schedule = true\n", "").replace('prior = "taylor"\n', "")
                     .replace('channel_order = "l1"\n', ""))
    with pytest.raises(DnasPruneError, match=r"different settings \(search.prior, search.channel_order, finetune.continue_schedule\)"):
        Pipeline(load_config(_write(tmp_path, MINIMAL), out=str(out)))._check_run_dir()
    old = ["finetune.continue_schedule=false", "search.prior='gamma'", "search.channel_order='learned'"]
    Pipeline(load_config(_write(tmp_path, MINIMAL), old, out=str(out)))._check_run_dir()


def test_schedule_flags_reach_the_train_config() -> None:
    args = build_parser().parse_args(["finetune", "pruned.pt", "--out", "x", "--epochs", "3", "--schedule-epochs", "5",
                                      "--schedule-start", "2"])
    config = train_config_from(args)
    assert (config.epochs, config.schedule_epochs, config.schedule_start) == (3, 5, 2)


@pytest.mark.parametrize("text, overrides, message", [
    (MINIMAL + "epoch = 1\n", [], "unknown key 'search.epoch'; known keys of [search]: epochs,"),
    (MINIMAL, ["search.epoch=1"], "unknown key 'search.epoch'"),
    (MINIMAL, ["serch.epochs=1"], "unknown section 'serch'"),
    (MINIMAL + "[prune]\nx = 1\n", [], "unknown section [prune]"),
    (MINIMAL, ["colour=1"], "unknown key 'colour'; known top-level keys: seed"),
    (MINIMAL, ["search.epochs=two"], "search.epochs must be int, got 'two'"),
    (MINIMAL, ["search.target_params=0.5"], "not search.target_macs and search.target_params"),
    ('[model]\nname = "cifar_resnet20"\n[search]\ntarget_latency_ms = -2.0\n', [],
     "search.target_latency_ms must be a positive number"),
    (MINIMAL, ["search.target_macs=1.5"], "(0, 1]"),
    (MINIMAL, ["export.formats=['zip']"], "unknown format 'zip'"),
    (MINIMAL, ["pretrain.schedule='linear'"], "schedule must be one of"),
    (MINIMAL, ["search.channels_per_gate=8", "search.round_to=12"], "not a multiple of channels_per_gate"),
    ('[search]\ntarget_macs = 0.5\n', [], "[model] name is required"),
    ("[model\n", [], "is not valid TOML"),
])
def test_invalid_configs(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    with pytest.raises(DnasPruneError) as info:
        load_config(_write(tmp_path, text), overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL + '[data]\nroot = "data/cifar"\n'))
    assert config["data"]["root"] == str(tmp_path.resolve() / "data" / "cifar")
    assert load_config(_write(tmp_path, MINIMAL), ["data.root=rel"])["data"]["root"] == "rel"  # --set: the CWD's


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config["data"]["root"] is None and "/work" not in path.read_text()  # data via $DNAS_PRUNE_DATA
    assert config[""]["out"].startswith("runs/")


def test_bad_config_path_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnas-prune: error: config file") and err.count("\n") == 1


def test_settings_added_later_are_read_as_their_defaults(tmp_path: Path) -> None:
    """A run dir whose config.toml predates a key (here data.image_size) continues; workers may change."""
    out = tmp_path / "run"
    config = load_config(_write(tmp_path, MINIMAL), ["data.workers=2"], out=str(out))
    Pipeline(config)._check_run_dir()
    (out / "pretrain").mkdir()  # a stage has started: the settings hold from here
    saved = out / "config.toml"
    saved.write_text(saved.read_text().replace("image_size = 224\n", ""))
    Pipeline(load_config(_write(tmp_path, MINIMAL), out=str(out)))._check_run_dir()
    with pytest.raises(DnasPruneError, match=r"different settings \(data.image_size\)"):
        Pipeline(load_config(_write(tmp_path, MINIMAL), ["data.image_size=64"], out=str(out)))._check_run_dir()


def test_a_run_that_wrote_nothing_but_its_config_may_change_settings(tmp_path: Path) -> None:
    """A run that stopped before any stage wrote a file (a wrong data.root) does not lock its directory."""
    out = tmp_path / "run"
    Pipeline(load_config(_write(tmp_path, MINIMAL), ["data.root='/nonexistent'"], out=str(out)))._check_run_dir()
    Pipeline(load_config(_write(tmp_path, MINIMAL), out=str(out)))._check_run_dir()
    assert "nonexistent" not in (out / "config.toml").read_text()


def test_changed_report_and_export_settings_are_redone_not_ignored(tmp_path: Path) -> None:
    """A finished run re-run with other report or export settings makes its report again (it shows them), and
    tells so; other changes are still refused."""
    out = tmp_path / "run"
    assert Pipeline(load_config(_write(tmp_path, MINIMAL), out=str(out)))._check_run_dir() == []
    (out / "report.json").write_text("{}")  # the run has finished
    changed = load_config(_write(tmp_path, MINIMAL), ["report.batch_sizes=[1]", "export.formats=['onnx', 'pt2']"],
                          out=str(out))
    assert Pipeline(changed)._check_run_dir() == ["export.formats", "report.batch_sizes"]
    assert Pipeline(changed)._check_run_dir() == []  # now saved


@pytest.mark.slow
def test_tiny_run_end_to_end_and_resume(tiny_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["run", str(QUICKSTART), "--out", str(out), "--set", f"data.root={tiny_cifar}"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert all(f"[{stage}] done" in first for stage in ("pretrain", "search", "finalize", "finetune", "export", "report"))
    for name in ("pretrain/model.pt", "search/search.json", "search/finalized.pt", "finetune/pruned.pt", "export/model.onnx",
                 "report.md", "report.json", "widths.png", "accuracy_macs.png", "accuracy_latency.png", "config.toml"):
        assert (out / name).is_file(), name
    for stage in ("pretrain", "search", "finetune"):  # TensorBoard logs, as the single-stage commands write
        assert any((out / stage / "tb").iterdir()), stage
    classes = sorted(d.name for d in (tiny_cifar / "train").iterdir())  # every file says what its labels and inputs are
    for name in ("pretrain/model.pt", "search/finalized.pt", "finetune/pruned.pt"):
        metadata = load_pruned_with_metadata(out / name)[1]
        assert metadata["classes"] == classes and metadata["preprocess"]["mean"] == list(CIFAR10_MEAN), name
    assert read_export_info(out / "export" / "model.onnx")["classes"] == classes
    report = json.loads((out / "report.json").read_text())
    assert report["figures"] == ["widths.png", "accuracy_macs.png", "accuracy_latency.png"] and report["peers"] == []
    for name in report["figures"]:  # matplotlib PNGs of a readable size, with more than a few flat colours
        image = imread(out / name)
        assert 400 <= image.shape[0] <= 1000 and 800 <= image.shape[1] <= 1800, (name, image.shape)
        assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50, name
    for model in ("dense", "pruned"):
        assert 0 <= report[model]["test_acc"] <= 1 and report[model]["macs"] > 0 and report[model]["params"] > 0
        assert set(report["latency"]["models"][model]["latency"]) == {"1", "2"}
    assert report["pruned"]["macs"] < report["dense"]["macs"]
    assert [row["stage"] for row in report["stages"]] == ["layer1", "layer2", "layer3"]
    assert report["config"]["model"]["name"] == "cifar_resnet20"
    markdown = (out / "report.md").read_text()
    assert "| test accuracy |" in markdown and "latency, batch 1" in markdown and "![per-layer widths](widths.png)" in markdown

    # A finished run does no work again: no data decoded, nothing trained, no output rewritten.
    def outputs() -> dict[Path, tuple[int, bytes]]:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name != "config.toml"}

    before = outputs()
    with monkeypatch.context() as patch:
        def refuse(*_args, **_kwargs):
            raise AssertionError("a finished run did work again")
        patch.setattr(Pipeline, "data", refuse)
        patch.setattr(Trainer, "fit", refuse)
        assert main(args) == 0
    assert outputs() == before
    assert "6 of 6 stages skipped" in capsys.readouterr().out

    # An interrupted finetune (checkpoint written, output not yet) resumes from its checkpoint.
    (out / "finetune" / "pruned.pt").unlink()
    (out / "report.json").unlink()
    status = Pipeline(load_config(QUICKSTART, [f"data.root={tiny_cifar}", *TINY], out=str(out)), log=lambda _: None).run()
    assert status == {"pretrain": "skipped", "search": "skipped", "finalize": "skipped", "finetune": "ran",
                      "export": "skipped", "report": "ran"}
    assert "epoch 1/1" not in capsys.readouterr().out  # no epoch was trained again

    # pretrain.checkpoint: the dense model is loaded and evaluated instead of trained.
    reuse = Pipeline(load_config(QUICKSTART, [f"data.root={tiny_cifar}", *TINY, f"pretrain.checkpoint={out / 'pretrain' / 'model.pt'}"],
                                 out=str(tmp_path / "reuse")), log=lambda _: None)
    reuse.pretrain()
    metrics = load_pruned_with_metadata(reuse.dense_path)[1]["metrics"]
    assert metrics["source"] == str(out / "pretrain" / "model.pt") and metrics["test_acc"] == report["dense"]["test_acc"]
    assert not (tmp_path / "reuse" / "pretrain" / "train.pt").exists()

    with pytest.raises(DnasPruneError, match=r"different settings \(search.epochs\)"):
        Pipeline(load_config(QUICKSTART, [f"data.root={tiny_cifar}", *TINY, "search.epochs=2"], out=str(out))).run()
