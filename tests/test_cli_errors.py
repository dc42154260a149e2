"""Bad input never costs a traceback hunt: one line on stderr and exit status 2.

The cases call ``dnas_prune.cli.main`` in this process and read the captured stderr (importing torch once, not once
per case); two smoke tests run ``python -m dnas_prune`` as a real process, to check that the entry point turns
the same contract into a process exit status.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dnas_prune import create_model, save_pruned
from dnas_prune.cli import main
from conftest import TINY_CLASSES

REPO = Path(__file__).resolve().parents[1]
# What a user would not see from a real process: Python's default filters hide these when raised in a library.
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``dnas-prune ARGS`` in-process: (exit status, stderr). argparse exits through SystemExit, main() returns."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
    shown = [str(w.message) for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    assert not shown, shown  # a warning would be a second stderr line in a real process
    return code, capsys.readouterr().err


def assert_one_line_error(outcome: tuple[int, str], *needles: str) -> None:
    code, stderr = outcome
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and lines[0].startswith("dnas-prune") and "error" in lines[0], stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Checkpoints a user might pass by mistake."""
    found = {"missing": tmp_path / "nope.pt", "empty": tmp_path / "empty.pt", "garbage": tmp_path / "garbage.pt",
             "foreign": tmp_path / "foreign.pt", "truncated": tmp_path / "truncated.pt",
             "payload": tmp_path / "payload.pt", "pruned": tmp_path / "pruned.pt"}
    found["empty"].write_bytes(b"")
    found["garbage"].write_bytes(b"\x00not a checkpoint" * 10)
    torch.save({"weights": [1, 2, 3]}, found["foreign"])
    save_pruned(create_model("cifar_resnet20", num_classes=len(TINY_CLASSES)), found["pruned"])  # tiny_cifar's
    data = found["pruned"].read_bytes()
    found["truncated"].write_bytes(data[: len(data) // 2])
    with open(found["payload"], "wb") as handle:
        pickle.dump(Payload(tmp_path / "marker"), handle)
    return found


def test_unknown_model_lists_the_known_ones(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "search", "--model", "resnet9000", "--target-macs", "0.5", "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "resnet9000", "cifar_resnet56")


@pytest.mark.parametrize("flag", ["--target-macs", "--target-latency"])
@pytest.mark.parametrize("target", ["0", "1.5", "-0.2"])
def test_target_outside_the_unit_interval(capsys, tmp_path: Path, flag: str, target: str) -> None:
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", flag, target, "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, flag, "(0, 1]")


def test_latency_targets_are_checked_before_any_timing(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--target-latency-ms", "0", "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "--target-latency-ms", "positive number of milliseconds")
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--target-latency", "0.5", "--latency-batch-size", "0",
                  "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "--latency-batch-size", "positive integer")


def test_target_ramp_outside_the_search_is_refused(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--target-ramp", "1.5",
                  "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "--target-ramp", "got 1.5")  # names the flag and the value refused


def test_negative_crop_padding_is_refused(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "train", "--model", "cifar_resnet20", "--crop-padding", "-1", "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "crop_padding", ">= 0")


def test_infeasible_target_states_the_floor(capsys, tiny_cifar: Path, tmp_path: Path) -> None:
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--data", str(tiny_cifar), "--target-macs", "0.0001",
                  "--out", str(tmp_path / "r"), "--batch-size", "8", "--val-size", "6")
    assert_one_line_error(outcome, "floor")
    assert not (tmp_path / "r" / "supernet.pt").exists()


def test_conflicting_targets(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--target-params", "0.5",
                  "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "not allowed with")


@pytest.mark.parametrize("layout", ["missing", "wrong"])
def test_missing_or_malformed_data_dir(capsys, tmp_path: Path, layout: str) -> None:
    data = tmp_path / "data"
    if layout == "wrong":
        (data / "images").mkdir(parents=True)
    outcome = cli(capsys, "train", "--model", "cifar_resnet20", "--data", str(data), "--epochs", "1",
                  "--out", str(tmp_path / "o"))
    assert_one_line_error(outcome, str(data.name))


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "foreign", "truncated", "payload", "pruned"])
def test_finalize_refuses_anything_but_a_search_checkpoint(capsys, files: dict[str, Path], tmp_path: Path,
                                                           kind: str) -> None:
    outcome = cli(capsys, "finalize", str(files[kind]), "-o", str(tmp_path / "out.pt"))
    assert_one_line_error(outcome, files[kind].name)
    assert not (tmp_path / "out.pt").exists()
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "payload", "foreign"])
def test_export_and_pretrained_refuse_bad_files(capsys, files: dict[str, Path], tiny_cifar: Path, tmp_path: Path,
                                                kind: str) -> None:
    assert_one_line_error(cli(capsys, "export", str(files[kind]), "--format", "onnx", "-o", str(tmp_path / "m.onnx")),
                          files[kind].name)
    assert not (tmp_path / "m.onnx").exists()
    # Valid data, so the error can only come from the --pretrained file.
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--pretrained", str(files[kind]), "--target-macs",
                  "0.5", "--out", str(tmp_path / "r"), "--data", str(tiny_cifar), "--batch-size", "8",
                  "--val-size", "6")
    assert_one_line_error(outcome, files[kind].name)
    assert not (tmp_path / "r" / "supernet.pt").exists()
    assert not (tmp_path / "marker").exists()


def test_negative_weight_decay_is_refused(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "train", "--model", "cifar_resnet20", "--weight-decay", "-1", "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "weight_decay", ">= 0")


def test_more_clean_epochs_than_epochs_is_refused(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "train", "--model", "cifar_resnet20", "--epochs", "2", "--clean-epochs", "3",
                  "--out", str(tmp_path / "r"))
    assert_one_line_error(outcome, "clean_epochs", "[0, epochs=2]")


def test_a_mistyped_or_shortened_flag_is_named(capsys, tmp_path: Path) -> None:
    """A mistyped budget flag is named (not "a budget is required"), a prefix is not taken for the flag it begins,
    and a subcommand's unknown flag points at that subcommand's help."""
    out = str(tmp_path / "r")
    for typo in ("--target-macss", "--target-mac"):
        assert_one_line_error(cli(capsys, "search", "--model", "cifar_resnet20", typo, "0.5", "--out", out),
                              f"unrecognized arguments: {typo}", "dnas-prune search --help")
    assert_one_line_error(cli(capsys, "search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--out", out,
                              "--limit-trian", "5"), "--limit-trian", "dnas-prune search --help")
    assert not (tmp_path / "r").exists()


def test_unshipped_weights_and_another_architectures_state_dict_are_named(capsys, tiny_cifar: Path,
                                                                          tmp_path: Path) -> None:
    common = ("--target-macs", "0.5", "--out", str(tmp_path / "r"), "--data", str(tiny_cifar), "--batch-size", "8",
              "--val-size", "6")
    assert_one_line_error(cli(capsys, "search", "--model", "cifar_resnet32", "--pretrained", "cifar10", *common),
                          "no 'cifar10' weights are shipped for cifar_resnet32", "cifar_resnet20 (weights='cifar10')")
    other = tmp_path / "resnet32.pt"
    torch.save(create_model("cifar_resnet32").state_dict(), other)
    outcome = cli(capsys, "search", "--model", "cifar_resnet20", "--pretrained", str(other), *common)
    assert_one_line_error(outcome, "another architecture than cifar_resnet20's", "unexpected", "check --model")
    assert len(outcome[1]) < 400, outcome[1]
    assert not (tmp_path / "r").exists()


def test_a_stage_never_writes_over_its_own_input(capsys, files: dict[str, Path]) -> None:
    pruned = files["pruned"]
    before = pruned.read_bytes()
    assert_one_line_error(cli(capsys, "export", str(pruned), "--format", "torchscript", "-o", str(pruned)),
                          "is also the input")
    assert_one_line_error(cli(capsys, "finetune", str(pruned), "--out", str(pruned.parent)), "is also the input")
    assert pruned.read_bytes() == before


def test_search_out_dirs_are_never_overwritten_and_resume_needs_a_search(capsys, tiny_cifar: Path,
                                                                         tmp_path: Path) -> None:
    """A finished search is read back on --resume, not re-run; other settings, a search over it without
    --resume, a --resume of nothing and finalize -o onto the checkpoint are refused, and the files stay."""
    run = tmp_path / "r"
    common = ["search", "--model", "cifar_resnet20", "--out", str(run), "--data", str(tiny_cifar), "--batch-size",
              "8", "--val-size", "6", "--epochs", "1", "--no-progress", "--no-tensorboard"]
    assert_one_line_error(cli(capsys, *common, "--target-macs", "0.5", "--resume"), "no such file",
                          "drop --resume")
    assert not run.exists()
    assert cli(capsys, *common, "--target-macs", "0.5")[0] == 0
    files = {name: (run / name).read_bytes() for name in ("supernet.pt", "search.json")}
    assert cli(capsys, *common, "--target-macs", "0.5", "--resume")[0] == 0  # read back: the files stay as they are
    assert_one_line_error(cli(capsys, *common, "--target-macs", "0.3", "--resume"), "finished search",
                          "target", "another --out")
    assert_one_line_error(cli(capsys, *common, "--target-macs", "0.3"), "already holds a search run", "--resume")
    assert_one_line_error(cli(capsys, "finalize", str(run / "supernet.pt"), "-o", str(run / "supernet.pt")),
                          "is also the input")
    assert {name: (run / name).read_bytes() for name in files} == files


def test_train_and_finetune_never_start_over_a_run_and_resume_needs_one(capsys, files: dict[str, Path],
                                                                          tiny_cifar: Path, tmp_path: Path) -> None:
    data = ("--data", str(tiny_cifar), "--batch-size", "8", "--val-size", "6", "--epochs", "1", "--warmup-epochs",
            "0.5", "--no-progress", "--no-tensorboard")
    dense, tuned = tmp_path / "dense", tmp_path / "tuned"
    train = ("train", "--model", "cifar_resnet20", "--out", str(dense), *data)
    finetune = ("finetune", str(files["pruned"]), "--out", str(tuned), *data)
    for command, run in ((train, dense), (finetune, tuned)):
        assert_one_line_error(cli(capsys, *command, "--resume"), "no such file", "drop --resume")
        assert not run.exists()
        assert cli(capsys, *command)[0] == 0
        written = {f.name: f.read_bytes() for f in run.glob("*.pt")}
        assert_one_line_error(cli(capsys, *command), "already holds a", "--resume")
        assert {f.name: f.read_bytes() for f in run.glob("*.pt")} == written


def run_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnas_prune", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.mark.subprocess
def test_entry_point_help_from_a_real_process() -> None:
    result = run_process("--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: dnas-prune") and "finalize" in result.stdout


@pytest.mark.subprocess
def test_entry_point_error_from_a_real_process(files: dict[str, Path], tmp_path: Path) -> None:
    """The in-process contract above, as a shell sees it: status 2, one stderr line, nothing written or run."""
    result = run_process("finalize", str(files["payload"]), "-o", str(tmp_path / "out.pt"))
    assert_one_line_error((result.returncode, result.stderr), files["payload"].name)
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "marker").exists()


def test_an_interrupt_says_how_to_continue(capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dnas_prune.cli.search as search_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_command, "run", interrupted)
    command = ["search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--out", str(tmp_path / "r")]
    assert main(command) == 130  # before the first checkpoint: --resume would find nothing
    assert capsys.readouterr().err == "dnas-prune: interrupted; nothing was saved yet; re-run the same command to start again\n"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "supernet.pt").write_bytes(b"")
    assert main(command) == 130
    assert capsys.readouterr().err == "dnas-prune: interrupted; pass --resume with the same --out to continue\n"


@pytest.mark.parametrize("command", ["search", "train", "run", "finetune", "export"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(capsys, files: dict[str, Path], tiny_cifar: Path,
                                                                  tmp_path: Path, command: str) -> None:
    """An --out under a file (or where the user may not write) failed with a traceback, some after an epoch."""
    blocker = tmp_path / "metrics.json"
    blocker.write_text("{}")
    out = str(blocker / "sub")
    data = ("--data", str(tiny_cifar), "--epochs", "1", "--no-progress")
    args = {"search": ("search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--out", out, *data),
            "train": ("train", "--model", "cifar_resnet20", "--out", out, *data),
            "run": ("run", str(REPO / "experiments" / "configs" / "quickstart.toml"), "--out", out),
            "finetune": ("finetune", str(files["pruned"]), "--out", out, *data),
            "export": ("export", str(files["pruned"]), "-o", str(blocker / "x.onnx"))}[command]
    assert_one_line_error(cli(capsys, *args), "cannot write", "metrics.json")
    assert blocker.read_text() == "{}"


def test_a_search_on_fewer_images_than_a_batch_says_so_and_a_random_parent_is_noted(capsys, tiny_cifar: Path,
                                                                                   tmp_path: Path) -> None:
    common = ("search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--data", str(tiny_cifar), "--val-size",
              "6", "--epochs", "1", "--no-progress", "--no-tensorboard")
    assert_one_line_error(cli(capsys, *common, "--out", str(tmp_path / "a"), "--batch-size", "100000"),
                          "training images do not fill one batch of 100000")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*common, "--out", str(tmp_path / "b"), "--batch-size", "8"]) == 0
    assert ("note: no --pretrained, so the parent is a randomly initialized cifar_resnet20: a search prunes a trained "
            "network (pass --pretrained 'cifar10', a model.pt") in capsys.readouterr().out


def test_finetune_teacher_may_be_the_shipped_weights_the_search_started_from() -> None:
    """The README's path searches from --pretrained cifar10, so there is no parent model.pt to pass."""
    from dnas_prune.cli.finetune import shipped_parent
    from dnas_prune.models.cost import count_cost
    from dnas_prune.errors import CheckpointError

    for name in ("cifar_resnet20", "cifar_resnet56"):
        dense = count_cost(create_model(name), (3, 32, 32))
        metadata = {"input_size": [3, 32, 32], "dense_macs": dense.macs, "dense_params": dense.params}
        teacher = shipped_parent("cifar10", metadata, 10)
        shipped = create_model(name, weights="cifar10")
        assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(CheckpointError, match="no 'imagenet' weights are shipped"):
        shipped_parent("imagenet", metadata, 10)


def test_profiling_an_onnx_export_says_what_it_is(capsys, files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    exported = tmp_path / "model.onnx"
    assert cli(capsys, "export", str(files["pruned"]), "-o", str(exported))[0] == 0
    assert_one_line_error(cli(capsys, "profile", str(exported)), "an ONNX export, not a PyTorch file",
                          "pass the .pt it was exported from")
