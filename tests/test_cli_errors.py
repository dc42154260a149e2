"""Bad input never costs a traceback hunt: one line on stderr and a non-zero exit, from a real process."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnas_prune import create_model, save_pruned

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnas_prune", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "error" in lines[0]
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
    save_pruned(create_model("cifar_resnet20"), found["pruned"])
    data = found["pruned"].read_bytes()
    found["truncated"].write_bytes(data[: len(data) // 2])
    with open(found["payload"], "wb") as handle:
        pickle.dump(Payload(tmp_path / "marker"), handle)
    return found


def test_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    result = cli("search", "--model", "resnet9000", "--target-macs", "0.5", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "resnet9000", "cifar_resnet56")


@pytest.mark.parametrize("target", ["0", "1.5", "-0.2"])
def test_target_outside_the_unit_interval(tmp_path: Path, target: str) -> None:
    result = cli("search", "--model", "cifar_resnet20", "--target-macs", target, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "(0, 1]")


def test_target_ramp_outside_the_search_is_refused(tmp_path: Path) -> None:
    result = cli("search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--target-ramp", "1.5",
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "[0, 1)")


def test_negative_crop_padding_is_refused(tmp_path: Path) -> None:
    result = cli("train", "--model", "cifar_resnet20", "--crop-padding", "-1", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "crop_padding", ">= 0")


def test_infeasible_target_states_the_floor(tiny_cifar: Path, tmp_path: Path) -> None:
    result = cli("search", "--model", "cifar_resnet20", "--data", str(tiny_cifar), "--target-macs", "0.0001",
                 "--out", str(tmp_path / "r"), "--batch-size", "8", "--val-size", "6")
    assert_one_line_error(result, "floor")
    assert not (tmp_path / "r" / "supernet.pt").exists()


def test_conflicting_targets(tmp_path: Path) -> None:
    result = cli("search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--target-params", "0.5",
                 "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "not allowed with")


@pytest.mark.parametrize("layout", ["missing", "wrong"])
def test_missing_or_malformed_data_dir(tmp_path: Path, layout: str) -> None:
    data = tmp_path / "data"
    if layout == "wrong":
        (data / "images").mkdir(parents=True)
    result = cli("train", "--model", "cifar_resnet20", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, str(data.name))


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "foreign", "truncated", "payload", "pruned"])
def test_finalize_refuses_anything_but_a_search_checkpoint(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    result = cli("finalize", str(files[kind]), "-o", str(tmp_path / "out.pt"))
    assert_one_line_error(result, files[kind].name)
    assert not (tmp_path / "out.pt").exists()
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "payload", "foreign"])
def test_export_and_pretrained_refuse_bad_files(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    assert_one_line_error(cli("export", str(files[kind]), "--format", "onnx", "-o", str(tmp_path / "m.onnx")))
    result = cli("search", "--model", "cifar_resnet20", "--pretrained", str(files[kind]), "--target-macs", "0.5",
                 "--out", str(tmp_path / "r"), "--data", str(tmp_path / "no-data"))
    assert_one_line_error(result)
    assert not (tmp_path / "marker").exists()


def test_negative_weight_decay_is_refused(tmp_path: Path) -> None:
    result = cli("train", "--model", "cifar_resnet20", "--weight-decay", "-1", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "weight_decay", ">= 0")


def test_more_clean_epochs_than_epochs_is_refused(tmp_path: Path) -> None:
    result = cli("train", "--model", "cifar_resnet20", "--epochs", "2", "--clean-epochs", "3", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "clean_epochs", "[0, epochs=2]")
