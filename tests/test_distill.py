"""Distillation from the dense parent: the loss, the frozen teacher, and every way in (search, finetune, CLI, run)."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnas_prune import SearchConfig, TrainConfig, create_model, save_pruned, search
from dnas_prune.cli import main
from dnas_prune.train.distill import distillation_loss
from dnas_prune.errors import DnasPruneError
from dnas_prune.models import cifar_resnet
from dnas_prune.train.loop import Trainer

from conftest import make_synthetic

FAST = dict(batch_size=32, lr=0.05, warmup_epochs=0.0, memory_format="contiguous", progress=False, precision="fp32")


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cifar_resnet(8, num_classes=4, widths=(4, 8, 8))


def test_loss_is_the_weighted_sum_of_labels_and_softened_teacher() -> None:
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    task = torch.tensor(1.3)
    t = 3.0
    p_teacher = F.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, task, 0.25, t), 0.75 * task + 0.25 * t * t * kl)
    torch.testing.assert_close(distillation_loss(student, teacher, task, 0.0, t), task)
    torch.testing.assert_close(distillation_loss(teacher, teacher, task, 1.0, t), torch.tensor(0.0), atol=1e-6, rtol=0)


def _kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), 1), F.log_softmax(teacher.eval()(x), 1),
                              reduction="batchmean", log_target=True))


def test_distilled_student_moves_towards_a_frozen_teacher(tmp_path: Path) -> None:
    data = make_synthetic(n_train=128, n_eval=32)
    teacher = tiny_model(0)
    before = copy.deepcopy(teacher.state_dict())
    students = {}
    for weight in (0.0, 1.0):
        trainer = Trainer(tiny_model(1), data, TrainConfig(epochs=3, distill_weight=weight, **FAST), tmp_path / str(weight),
                          teacher=teacher)
        trainer.fit()
        students[weight] = trainer.model
        assert not any(p is q for g in trainer.optimizer.param_groups for p in g["params"] for q in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # frozen, BN statistics included
    x = (data.test.images.float() - 128) / 64
    assert _kl_to(teacher, students[1.0], x) < 0.5 * _kl_to(teacher, students[0.0], x)


def test_distillation_without_a_teacher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DnasPruneError, match="needs a teacher"):
        Trainer(tiny_model(0), make_synthetic(64, 8), TrainConfig(distill_weight=0.5, **FAST), tmp_path)
    with pytest.raises(DnasPruneError, match="distill_weight"):
        TrainConfig(distill_weight=1.5)


def test_search_distills_from_a_frozen_copy_of_the_dense_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class Spy(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["teacher"] = self.teacher

    monkeypatch.setattr(importlib.import_module("dnas_prune.stages"), "Trainer", Spy)
    data = make_synthetic(n_train=128, n_eval=32)
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=data.num_classes)
    start = copy.deepcopy(dense.state_dict())
    net, _ = search(dense, data, TrainConfig(epochs=1, distill_weight=0.5, **FAST),
                    SearchConfig(target=0.5, recalibrate_batches=2), tmp_path)
    teacher = seen["teacher"]
    assert teacher is not None and not teacher.training
    assert all(torch.equal(start[k], v) for k, v in teacher.state_dict().items())  # the parent, not the supernet
    assert not torch.equal(net.model.conv1.weight, teacher.conv1.weight)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=3)
    save_pruned(dense, tmp_path / "dense.pt", kind="dense", input_size=[3, 32, 32])
    save_pruned(dense, tmp_path / "pruned.pt", input_size=[3, 32, 32])
    return tmp_path / "dense.pt", tmp_path / "pruned.pt"


def test_finetune_command_distills_from_the_given_teacher(tiny_cifar: Path, tmp_path: Path) -> None:
    dense, pruned = _files(tmp_path)
    common = ["--data", str(tiny_cifar), "--epochs", "1", "--batch-size", "8", "--val-size", "6", "--precision", "fp32",
              "--memory-format", "contiguous", "--no-progress", "--no-tensorboard"]
    assert main(["finetune", str(pruned), "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["finetune", str(pruned), "--out", str(tmp_path / "kd"), "--teacher", str(dense),
                 "--distill-weight", "0.7", "--distill-temperature", "2", *common]) == 0
    config = json.loads((tmp_path / "kd" / "metrics.json").read_text())["config"]
    assert (config["distill_weight"], config["distill_temperature"]) == (0.7, 2.0)
    plain, kd = (torch.load(tmp_path / d / "pruned.pt", weights_only=True)["state_dict"] for d in ("plain", "kd"))
    assert not torch.equal(plain["fc.weight"], kd["fc.weight"])  # the teacher changed the updates


@pytest.mark.parametrize("args, needle", [
    (["train", "--model", "cifar_resnet20", "--distill-weight", "0.5"], "needs a teacher"),
    (["finetune", "PRUNED", "--teacher", "DENSE"], "--distill-weight > 0"),
])
def test_distillation_misuse_is_a_one_line_error(args, needle, tiny_cifar: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    dense, pruned = _files(tmp_path)
    args = [{"PRUNED": str(pruned), "DENSE": str(dense)}.get(a, a) for a in args]
    assert main([*args, "--data", str(tiny_cifar), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnas-prune: error:") and "\n" not in err and needle in err


def test_run_pipeline_finetune_distills_from_its_pretrained_model(tiny_cifar: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from test_pipeline import QUICKSTART, TINY

    from dnas_prune.config import load_config
    from dnas_prune.pipeline import Pipeline

    teachers = []
    original = Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        teachers.append(self.teacher)

    monkeypatch.setattr(Trainer, "__init__", spy)
    overrides = [f"data.root={tiny_cifar}", *TINY, "finetune.distill_weight=0.5", "export.formats=[]"]
    Pipeline(load_config(QUICKSTART, overrides, out=str(tmp_path / "run")), log=lambda _: None).run()
    used = [t for t in teachers if t is not None]
    assert len(used) == 1 and teachers[-1] is used[0]  # only the finetune, the last stage that trains, distills
    finetune = used[0]
    dense = torch.load(tmp_path / "run" / "pretrain" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(dense[k], v) for k, v in finetune.state_dict().items())
    with pytest.raises(DnasPruneError, match="needs a teacher"):
        Pipeline(load_config(QUICKSTART, [*overrides, "pretrain.distill_weight=0.5"], out=str(tmp_path / "bad")),
                 log=lambda _: None).run()
