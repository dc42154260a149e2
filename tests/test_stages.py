"""Each stage is written once (dnas_prune.stages): the commands and the TOML pipeline call it and write the same files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import dnas_prune
from dnas_prune import SearchConfig, TrainConfig, create_model, stages
from dnas_prune.cli import main
from dnas_prune.io.pruned import load_pruned_with_metadata
from dnas_prune.config import load_config
from dnas_prune.pipeline import Pipeline
from dnas_prune.report.summary import layer_widths
from dnas_prune.search.hooks import load_supernet

from conftest import make_synthetic

PACKAGE = Path(dnas_prune.__file__).parent
# What a stage body is made of: whoever calls one of these writes a stage of its own.
STAGE_PARTS = {"Trainer", "MonitorHooks", "SearchHooks", "save_pruned", "write_report", "finalize", "export",
               "verify_export", "check_written", "log_text", "finetune_pruned", "load_supernet", "fold"}


def called_names(path: Path) -> set[str]:
    """The names a module calls as ``name(...)`` or ``module.name(...)``, except through ``stages.``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute) and not (isinstance(func.value, ast.Name) and func.value.id == "stages"):
                names.add(func.attr)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("cli/*.py")) + [PACKAGE / "pipeline.py"],
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_commands_and_the_pipeline_run_stages_without_writing_their_bodies(path: Path) -> None:
    assert not called_names(path) & STAGE_PARTS


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch search of cifar_resnet20 on toy data, in RUN/search as the pipeline lays it out."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    train = TrainConfig(epochs=1, batch_size=32, lr=0.05, progress=False, memory_format="contiguous")
    stages.search(create_model("cifar_resnet20", num_classes=4), make_synthetic(n_train=64, n_eval=16), train,
                  SearchConfig(target=0.5, recalibrate_batches=1), run / "search")
    return run


def test_finalize_command_and_pipeline_write_the_same_file(searched: Path, tmp_path: Path) -> None:
    checkpoint = searched / "search" / "supernet.pt"
    assert main(["finalize", str(checkpoint), "-o", str(tmp_path / "cli.pt"), "--no-tensorboard"]) == 0
    config_file = tmp_path / "config.toml"
    config_file.write_text('[model]\nname = "cifar_resnet20"\n[search]\ntarget_macs = 0.5\n')
    pipeline = Pipeline(load_config(config_file, ["tensorboard=false"], out=str(searched)), log=lambda line: None)
    pipeline.finalize()
    by_command, by_pipeline = (load_pruned_with_metadata(p) for p in (tmp_path / "cli.pt", pipeline.pruned_path))
    assert by_command[1] == by_pipeline[1]
    assert by_command[1]["layers"] == layer_widths(load_supernet(checkpoint))  # what the report reads
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(by_command[0](x), by_pipeline[0](x))


def test_export_stage_deletes_a_file_that_fails_its_check(searched: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pruned, _ = stages.finalize(searched / "search" / "supernet.pt", tmp_path / "pruned.pt")
    path, result = stages.export(tmp_path / "pruned.pt", tmp_path / "model.torchscript", "torchscript")
    assert path.is_file() and result["max_abs_diff"] <= result["tolerance"]

    def mismatch(*args, **kwargs):
        raise dnas_prune.io.export.ExportError("differs")

    monkeypatch.setattr(dnas_prune.io.export, "verify_export", mismatch)  # what check_written runs
    with pytest.raises(dnas_prune.io.export.ExportError):
        stages.export(tmp_path / "pruned.pt", tmp_path / "bad.torchscript", "torchscript")
    assert not (tmp_path / "bad.torchscript").exists()


def test_a_finetuned_file_counts_its_cost_at_the_size_it_was_finetuned_at(tmp_path) -> None:
    """A model pruned at 32x32 and finetuned on 16x16 images: profile and export read the size from the file."""
    from conftest import tiny_data, tiny_model, tiny_train_config
    from dnas_prune import save_pruned

    source = save_pruned(tiny_model(), tmp_path / "pruned.pt", input_size=(3, 32, 32))
    stages.finetune(source, tiny_data(), tiny_train_config(epochs=1), tmp_path / "tuned", data_root="tiny")
    _, metadata = load_pruned_with_metadata(tmp_path / "tuned" / "pruned.pt")
    assert metadata["input_size"] == [3, 16, 16]


def test_a_data_object_without_inference_records_nothing_rather_than_failing() -> None:
    from conftest import make_synthetic

    assert stages.inference_of(object()) == {}
    recorded = stages.inference_of(make_synthetic())
    assert recorded["classes"] == list(make_synthetic().classes) and "mean" in recorded["preprocess"]
