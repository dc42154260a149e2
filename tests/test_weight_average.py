"""--ema-decay: the trainer evaluates, checkpoints and saves an exponential moving average of the weights."""

from __future__ import annotations

import json

import pytest
import torch

from dnas_prune import SearchConfig, create_model, save_pruned, search
from dnas_prune.cli import main
from dnas_prune.errors import CheckpointError, DnasPruneError
from dnas_prune.config import load_config
from dnas_prune.io.pruned import load_pruned_with_metadata
from dnas_prune.train.loop import Trainer, TrainHooks

from conftest import Interrupt, tiny_data, tiny_model, tiny_train_config


class Snapshots(TrainHooks):
    """The live weights and BN statistics after every step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def after_step(self, trainer, step, metrics):
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()
                            if v.is_floating_point()})


def test_average_is_the_ema_of_the_weights_after_every_step(tmp_path):
    decay = 0.6
    hooks = Snapshots()
    trainer = Trainer(tiny_model(), tiny_data(), tiny_train_config(ema_decay=decay), tmp_path, callbacks=[hooks])
    trainer.fit()
    expected = dict(hooks.states[0])  # the first update copies the weights
    for state in hooks.states[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * state[k] for k in expected}
    got = trainer.final_model.state_dict()
    assert len(hooks.states) == trainer.global_step == 4
    for k, v in expected.items():  # weights and BN running statistics alike
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got["fc.weight"], trainer.model.state_dict()["fc.weight"])


def test_metrics_report_the_average_and_the_raw_weights_side_by_side(tmp_path):
    trainer = Trainer(tiny_model(), tiny_data(), tiny_train_config(ema_decay=0.6), tmp_path)
    metrics = trainer.fit()
    assert metrics["test_acc"] == trainer.evaluate(trainer.data.test)["acc"] \
        == trainer.evaluate(trainer.data.test, trainer.final_model)["acc"]
    assert metrics["raw_test_acc"] == trainer.evaluate(trainer.data.test, trainer.model)["acc"]
    assert "raw_val_acc" in metrics
    plain = Trainer(tiny_model(), tiny_data(), tiny_train_config(), tmp_path / "plain")
    assert plain.final_model is plain.model and "raw_test_acc" not in plain.fit()


def test_resume_with_an_average_equals_an_uninterrupted_run(tmp_path):
    data = tiny_data()
    full = Trainer(tiny_model(), data, tiny_train_config(ema_decay=0.6), tmp_path / "full")
    full.fit()
    cut = Trainer(tiny_model(), data, tiny_train_config(ema_decay=0.6), tmp_path / "cut", callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = Trainer(tiny_model(seed=7), data, tiny_train_config(ema_decay=0.6), tmp_path / "cut")
    resumed.fit(resume=True)
    expected, got = full.final_model.state_dict(), resumed.final_model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    without = Trainer(tiny_model(), data, tiny_train_config(), tmp_path / "cut")
    with pytest.raises(CheckpointError, match="with a weight average"):
        without.load_checkpoint(without.checkpoint_path)


def test_decay_outside_zero_to_one_is_refused():
    for bad in (-0.1, 1.0):
        with pytest.raises(DnasPruneError, match="ema_decay"):
            tiny_train_config(ema_decay=bad)


def test_train_command_saves_the_average(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", "cifar_resnet20", "--data", str(tiny_cifar), "--epochs", "1", "--out", str(out),
                 "--batch-size", "8", "--precision", "fp32", "--memory-format", "contiguous", "--no-progress",
                 "--no-tensorboard", "--ema-decay", "0.5"]) == 0
    model, metadata = load_pruned_with_metadata(out / "model.pt")
    average = torch.load(out / "train.pt", weights_only=True)["ema"]
    saved = model.state_dict()
    assert all(torch.equal(saved[k], average[f"module.{k}"]) for k in saved)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert metadata["metrics"]["test_acc"] == history[-1]["test_acc"] and "raw_test_acc" in history[-1]


def test_finetune_command_saves_the_average(tiny_cifar, tmp_path):
    save_pruned(create_model("cifar_resnet20", num_classes=3), tmp_path / "pruned.pt", input_size=[3, 32, 32])
    out = tmp_path / "ft"
    assert main(["finetune", str(tmp_path / "pruned.pt"), "--out", str(out), "--data", str(tiny_cifar), "--epochs", "1",
                 "--batch-size", "8", "--val-size", "6", "--precision", "fp32", "--memory-format", "contiguous",
                 "--no-progress", "--no-tensorboard", "--ema-decay", "0.5"]) == 0
    saved = load_pruned_with_metadata(out / "pruned.pt")[0].state_dict()
    average = torch.load(out / "finetune.pt", weights_only=True)["ema"]
    assert all(torch.equal(saved[k], average[f"module.{k}"]) for k in saved)


def test_the_search_refuses_an_average(tmp_path):
    """The search's gates and BN refits act on the live supernet: an average of it would report another network."""
    with pytest.raises(DnasPruneError, match="ema_decay .* not the search"):
        search(tiny_model(), tiny_data(), tiny_train_config(ema_decay=0.9), SearchConfig(target=0.5), tmp_path)
    assert not any(tmp_path.iterdir())


def test_pipeline_takes_an_average_for_pretrain_and_finetune_only(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nname = "cifar_resnet20"\n[search]\ntarget_macs = 0.5\n')
    config = load_config(toml, ["pretrain.ema_decay=0.998", "finetune.ema_decay=0.99"])
    assert (config["pretrain"]["ema_decay"], config["finetune"]["ema_decay"]) == (0.998, 0.99)
    with pytest.raises(DnasPruneError, match="unknown key 'search.ema_decay'"):
        load_config(toml, ["search.ema_decay=0.9"])
