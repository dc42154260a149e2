"""Shipped pretrained parents: they load like torchvision weights, are what their metadata says, and classify."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from dnas_prune import DnasPruneError, create_model
from dnas_prune.train.data import load_dataset
from dnas_prune.train.cifar import CIFAR10_MEAN, CIFAR10_STD, Split
from dnas_prune.models import available_weights, weights_info
from dnas_prune.models import pretrained
from dnas_prune.config import load_config
from dnas_prune.io.pruned import load_pretrained

SHIPPED = [key.split(".", 1) for key in pretrained._index()]


def test_parents_are_shipped_small_and_as_recorded() -> None:
    assert available_weights("cifar_resnet20") == ["cifar10"]
    assert available_weights("cifar_resnet56") == ["cifar10"]
    total = 0
    for name, tag in SHIPPED:
        info = weights_info(name, tag)
        data = (pretrained.WEIGHTS_DIR / info["file"]).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert info["normalization"] == {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
        assert info["recipe"]["epochs"] > 0 and "dnas-prune train --model " + name in info["command"]
        assert info["machine"]["cpu_flags"]  # the ISA is part of the record
    assert total <= 6_000_000


@pytest.mark.parametrize("name,tag", SHIPPED)
def test_shipped_parent_classifies_2000_test_images(cifar_root: Path, name: str, tag: str) -> None:
    """Every fifth test image (all ten classes), normalized as the training data was."""
    info = weights_info(name, tag)
    model = create_model(name, weights=tag).eval()
    data, _ = load_dataset("cifar", cifar_root, val_size=0, limit_train=64, seed=0)
    test = data.test
    subset = Split(test.images[::5].contiguous(), test.labels[::5].contiguous())
    correct = 0
    with torch.no_grad():
        for x, y in subset.batches(500, train=False):
            correct += int((model(x).argmax(1) == y).sum())
    accuracy = correct / len(subset)
    assert len(subset) == 2000
    assert accuracy >= info["test_acc"] - 0.02
    assert accuracy >= 0.85


def test_corrupt_or_unknown_weights_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DnasPruneError, match="shipped: cifar_resnet20") as info:
        create_model("cifar_resnet110", weights="cifar10")
    assert "\n" not in str(info.value)
    with pytest.raises(DnasPruneError, match="weights must be one of"):
        create_model("cifar_resnet20", weights=123)
    with pytest.raises(DnasPruneError, match="10 classes"):
        create_model("cifar_resnet20", num_classes=3, weights="cifar10")
    entry = dict(weights_info("cifar_resnet20", "cifar10"), sha256="0" * 64)
    monkeypatch.setattr(pretrained, "_index", lambda: {"cifar_resnet20.cifar10": entry})
    with pytest.raises(DnasPruneError, match="corrupt"):
        create_model("cifar_resnet20", weights="cifar10")


def test_pretrained_cifar10_names_the_shipped_parent_in_cli_and_toml(tmp_path: Path) -> None:
    """``--pretrained cifar10`` and ``pretrain.weights = "cifar10"`` both mean the shipped weights; a tag that is
    not shipped fails before any data is read."""
    shipped = create_model("cifar_resnet20", weights="cifar10")
    loaded = load_pretrained("cifar10", "cifar_resnet20", 10)
    for a, b in zip(shipped.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "cifar_resnet20"\n[pretrain]\nweights = "cifar10"\n[search]\ntarget_macs = 0.5\n')
    assert load_config(config)["pretrain"]["weights"] == "cifar10"
    config.write_text('[model]\nname = "cifar_resnet110"\n[pretrain]\nweights = "cifar10"\n[search]\ntarget_macs = 0.5\n')
    with pytest.raises(DnasPruneError, match="pretrain.weights"):
        load_config(config)


def test_weights_or_a_model_for_other_classes_are_refused_with_the_counts(tmp_path: Path) -> None:
    """An ImageNet state_dict for a 4-class tree, or a 4-class model on 3 classes: labels would be misread."""
    from dnas_prune.errors import CheckpointError, DnasPruneError
    from dnas_prune.train.loop import TrainConfig, Trainer

    path = tmp_path / "sd.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError, match="has a 1000-class head \\(fc\\) and the data 4 classes"):
        load_pretrained(path, "resnet18", 4)
    from conftest import make_synthetic

    data = make_synthetic(n_train=16, classes=3)
    with pytest.raises(DnasPruneError, match="the model predicts 10 classes and the data has 3"):
        Trainer(create_model("cifar_resnet20"), data, TrainConfig(epochs=1, batch_size=8), tmp_path)
    with pytest.raises(DnasPruneError, match="the teacher predicts 10 classes and the data has 3"):
        Trainer(create_model("cifar_resnet20", num_classes=3), data, TrainConfig(epochs=1, batch_size=8,
                distill_weight=0.5), tmp_path, teacher=create_model("cifar_resnet20"))


def test_train_pretrained_replaces_a_head_for_other_classes_and_keeps_the_rest(tmp_path: Path, tiny_imagenet: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    """Transfer learning: ImageNet weights (here a 1000-class resnet18 state_dict) train on a 3-class tree; every
    weight but the head is the file's, and a search refuses the 1000-class head by pointing here."""
    from dnas_prune.cli import main
    from dnas_prune.errors import CheckpointError
    from dnas_prune.io.pruned import load_pruned_with_metadata

    torch.manual_seed(0)
    source = create_model("resnet18").state_dict()
    torch.save(source, tmp_path / "imagenet.pth")
    with pytest.raises(CheckpointError, match="`dnas-prune train --pretrained .*imagenet.pth` replaces the head"):
        load_pretrained(tmp_path / "imagenet.pth", "resnet18", 3)
    with pytest.warns(UserWarning, match="1000-class head \\(fc\\) is replaced by a new 3-class one"):
        model = load_pretrained(tmp_path / "imagenet.pth", "resnet18", 3, new_head=True)
    assert model.fc.out_features == 3 and torch.equal(model.conv1.weight, source["conv1.weight"])
    args = ["train", "--model", "resnet18", "--pretrained", str(tmp_path / "imagenet.pth"), "--data-kind",
            "imagefolder", "--data", str(tiny_imagenet), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--val-size", "3", "--lr", "0.01", "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "t")]
    assert main([*args, "--zero-init-residual"]) == 2
    assert "does nothing to --pretrained weights" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="replaced by a new 3-class one"):
        assert main(args) == 0
    trained, metadata = load_pruned_with_metadata(tmp_path / "t" / "model.pt")
    assert trained.fc.out_features == 3 and metadata["config"]["epochs"] == 1
