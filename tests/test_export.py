import importlib
from pathlib import Path

import pytest
import torch

from dnas_prune.cli import main
from dnas_prune.errors import DnasPruneError
from dnas_prune.io.export import ExportError, export, verify_export
from dnas_prune.models import build_model
from dnas_prune.io.pruned import save_pruned

# the package re-exports the export() function under the module's name, so fetch the module itself
export_module = importlib.import_module("dnas_prune.io.export")

SPEC = {
    "format": 1, "family": "cifar", "block": "basic", "num_classes": 10, "stem": 8,
    "stages": [
        {"width": 8, "stride": 1, "blocks": [{"inner": [4], "downsample": False}]},
        {"width": 12, "stride": 2, "blocks": [{"inner": None, "downsample": True}, {"inner": [6], "downsample": False}]},
    ],
}


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


needs_ort = pytest.mark.skipif(not _has_onnxruntime(), reason="onnxruntime is not installed")


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC).eval()


def _check_roundtrip(path: Path, model: torch.nn.Module, fmt: str) -> None:
    for batch in (1, 5):
        result = verify_export(path, model, fmt, (3, 32, 32), batch)
        assert result["max_abs_diff"] <= result["tolerance"]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", pytest.param("onnx", marks=needs_ort)])
def test_formats_roundtrip(tmp_path: Path, model: torch.nn.Module, fmt: str) -> None:
    path = export(model, tmp_path / f"m.{fmt}", fmt, (3, 32, 32), batch_size=1)
    assert path.is_file()
    _check_roundtrip(path, model, fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m.{fmt}"]


@needs_ort
def test_onnx_legacy_exporter(tmp_path: Path, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "_onnxscript_available", lambda: False)
    path = export(model, tmp_path / "legacy.onnx", "onnx", (3, 32, 32))
    _check_roundtrip(path, model, "onnx")


def test_mismatch_is_reported(tmp_path: Path, model: torch.nn.Module) -> None:
    path = export(model, tmp_path / "m.pt2", "pt2", (3, 32, 32))
    with torch.no_grad():
        model.fc.bias += 1.0
    with pytest.raises(ExportError, match="differs"):
        verify_export(path, model, "pt2", (3, 32, 32))


def test_unknown_format(tmp_path: Path, model: torch.nn.Module) -> None:
    with pytest.raises(DnasPruneError) as info:
        export(model, tmp_path / "m.xyz", "tflite")
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in ("torchscript", "onnx", "pt2"))
    assert not any(tmp_path.iterdir())


def test_cli_export(tmp_path: Path, model: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    pruned = save_pruned(model, tmp_path / "pruned.pt")
    out = tmp_path / "model.pt2"
    assert main(["export", str(pruned), "--format", "pt2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "check: passed" in printed
    assert main(["export", str(tmp_path / "missing.pt"), "--format", "pt2"]) == 2


def test_the_check_runs_a_batch_the_export_was_not_traced_with(tmp_path: Path, model: torch.nn.Module,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 1 is traced at 2 (torch.export specializes size 1), so the check must run 3, not 2."""
    seen = []
    monkeypatch.setattr(export_module, "verify_export", lambda path, m, fmt, size, batch: seen.append(batch))
    for batch in (1, 2, 7):
        export(model, tmp_path / "m.pt2", "pt2", (3, 32, 32), batch_size=batch)
    export(model, tmp_path / "m.pt2", "pt2", (3, 32, 32), batch_size=4, dynamic_batch=False)
    assert seen == [3, 3, 8, 4]


@pytest.mark.parametrize("args, words", [
    ({"input_size": (3, 0, 0)}, "input_size must be \\(C, H, W\\) with C = 3, .*got \\(3, 0, 0\\)"),
    ({"input_size": (1, 32, 32)}, "with C = 3, the model.s input channels"),
    ({"batch_size": 0}, "batch size must be a positive whole number"),
])
def test_export_refuses_sizes_it_cannot_trace(tmp_path: Path, model: torch.nn.Module, args, words) -> None:
    with pytest.raises(ExportError, match=words):
        export(model, tmp_path / "m.pt2", "pt2", **args)
    assert not any(tmp_path.iterdir())


def test_export_refuses_a_bf16_model_and_a_directory_as_output(tmp_path: Path, model: torch.nn.Module,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="export takes a float32 model; this one has torch.bfloat16 weights"):
        export(model.bfloat16(), tmp_path / "m.onnx", "onnx", (3, 32, 32))
    assert not any(tmp_path.iterdir())
    pruned = save_pruned(model.float(), tmp_path / "pruned.pt")
    (tmp_path / "taken").mkdir()
    assert main(["export", str(pruned), "--format", "pt2", "-o", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a directory; give a file name")


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", pytest.param("onnx", marks=needs_ort)])
def test_an_export_carries_the_files_classes_and_preprocessing(tmp_path: Path, model: torch.nn.Module,
                                                               fmt: str) -> None:
    """A deployment reads the class names and the normalization from the export itself, not from a guess; an
    archive's inner folder is named after the file, not after the temp file it was written as."""
    import zipfile

    from dnas_prune.io.export import read_export_info

    preprocess = {"pixels": "RGB", "resize": None, "center_crop": None, "mean": [0.5] * 3, "std": [0.25] * 3}
    pruned = save_pruned(model, tmp_path / "pruned.pt", classes=list("abcdefghij"), preprocess=preprocess)
    suffix = {"torchscript": ".torchscript", "pt2": ".pt2", "onnx": ".onnx"}[fmt]
    assert main(["export", str(pruned), "-o", str(tmp_path / f"deploy{suffix}")]) == 0  # the suffix tells the format
    info = read_export_info(tmp_path / f"deploy{suffix}")
    assert info["classes"] == list("abcdefghij") and info["preprocess"] == preprocess
    assert info["input_size"] == [3, 32, 32] and (info["input"], info["output"]) == ("input", "logits")
    if fmt != "onnx":
        assert {name.split("/")[0] for name in zipfile.ZipFile(tmp_path / f"deploy{suffix}").namelist()} == {"deploy"}


def test_export_tells_the_format_by_the_suffix_and_refuses_a_mismatch(tmp_path: Path, model: torch.nn.Module,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pruned = save_pruned(model, tmp_path / "pruned.pt")
    assert main(["export", str(pruned), "--format", "onnx", "-o", str(tmp_path / "m.pt2")]) == 2
    assert "names a pt2 file but --format is onnx" in capsys.readouterr().err
    assert main(["export", str(pruned), "-o", str(tmp_path / "m.bin")]) == 2
    assert "pass --format" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))


def test_python_export_defaults_to_the_models_own_input_size(tmp_path: Path) -> None:
    from dnas_prune import create_model
    from dnas_prune.io.export import read_export_info

    path = export(create_model("resnet18", num_classes=10), tmp_path / "r18.torchscript", "torchscript", check=False)
    assert read_export_info(path)["input_size"] == [3, 224, 224]
    with pytest.raises(ExportError, match="give export\\(\\) its input_size"):
        export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)), tmp_path / "x.pt2", "pt2")
