"""The shared Trainer: exact resume, atomic checkpoints, hooks, parameter groups, divergence, the train command."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from dnas_prune.cli import build_parser, main
from dnas_prune.cli.common import train_config_from
from dnas_prune.errors import CheckpointError, DnasPruneError, TrainingDiverged
from dnas_prune.models import cifar_resnet, create_model
from dnas_prune.io.checkpoint import atomic_torch_save, safe_load
from dnas_prune.device import policy
from dnas_prune.train.loop import Trainer, TrainConfig, TrainHooks, lr_factor
from dnas_prune.io.pruned import load_pruned_with_metadata

from conftest import Interrupt, tiny_data, tiny_model, tiny_train_config


class Recorder(TrainHooks):
    """Counts every hook call, zeroes the loss and owns an excluded 'gate' parameter."""

    def __init__(self, gate: nn.Parameter) -> None:
        self.gate = gate
        self.calls: dict[str, int] = {}
        self.restored: dict | None = None

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def excluded_parameters(self):
        return [self.gate]

    def on_epoch_start(self, trainer, epoch):
        self._count("on_epoch_start")

    def loss(self, trainer, ce, logits, step):
        self._count("loss")
        return ce * 0.0

    def before_optimizer_step(self, trainer):
        self._count("before_optimizer_step")

    def after_step(self, trainer, step, metrics):
        self._count("after_step")

    def on_epoch_end(self, trainer, epoch, metrics):
        self._count("on_epoch_end")
        assert {"train_acc", "val_acc", "img_per_s"} <= metrics.keys()
        assert ("test_acc" in metrics) == (epoch + 1 == trainer.config.epochs)  # test split: reporting only

    def state_dict(self):
        return {"calls": dict(self.calls)}

    def load_state_dict(self, state):
        self.restored = state


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_an_epoch_equals_an_uninterrupted_run(tmp_path, precision):
    data = tiny_data()
    full = Trainer(tiny_model(), data, tiny_train_config(precision=precision), tmp_path / "full")
    full.fit()
    interrupted = Trainer(tiny_model(), data, tiny_train_config(precision=precision), tmp_path / "cut",
                          callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    torch.manual_seed(99)  # a different process state before resuming must not matter
    resumed = Trainer(tiny_model(seed=7), data, tiny_train_config(precision=precision), tmp_path / "cut")
    resumed.fit(resume=True)
    expected, got = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert resumed.global_step == full.global_step == 4
    timing = {"img_per_s", "epoch_time"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in resumed.history] == \
        [{k: v for k, v in m.items() if k not in timing} for m in full.history]


def test_a_resume_with_other_settings_is_refused_and_more_epochs_are_not(tmp_path):
    """A resume under another seed, batch size or lr ran on silently as another run (a new seed even moves the val
    split); only the length, the device and the output may change."""
    data = tiny_data()
    interrupted = Trainer(tiny_model(), data, tiny_train_config(), tmp_path / "cut", callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    for change in ({"seed": 5}, {"batch_size": 8, "lr": 1.0}):
        other = Trainer(tiny_model(), data, tiny_train_config(**change), tmp_path / "cut")
        with pytest.raises(CheckpointError, match=f"was trained with {next(iter(change))} .*resume with its settings"):
            other.fit(resume=True)
    fewer = tiny_data(n=28)  # as another --limit-train would give
    with pytest.raises(CheckpointError, match="was trained with data of \[.*--limit-train"):
        Trainer(tiny_model(), fewer, tiny_train_config(), tmp_path / "cut").fit(resume=True)
    longer = Trainer(tiny_model(), data, tiny_train_config(epochs=3), tmp_path / "cut")
    longer.fit(resume=True)
    assert longer.epoch == 3


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path):
    trainer = Trainer(tiny_model(), tiny_data(), tiny_train_config(epochs=1), tmp_path, metadata={"note": "x"})
    metrics = trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "train.pt"]
    state = torch.load(tmp_path / "train.pt", weights_only=True)
    assert state["epoch"] == 1 and state["metadata"] == {"note": "x"} and state["config"]["epochs"] == 1
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert history[-1]["test_acc"] == metrics["test_acc"]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for path in (tmp_path / "bad.pt", tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match=path.name) as info:
            trainer.load_checkpoint(path)
        assert "\n" not in str(info.value)
    atomic_torch_save({"a": torch.ones(2)}, tmp_path / "sub" / "x.pt")
    assert torch.equal(safe_load(tmp_path / "sub" / "x.pt", "a test file")["a"], torch.ones(2))


def test_hooks_are_called_and_excluded_parameters_stay_out_of_sgd(tmp_path):
    model = tiny_model()
    model.gate = nn.Parameter(torch.ones(3))
    hooks = Recorder(model.gate)
    trainer = Trainer(model, tiny_data(), tiny_train_config(weight_decay=0.0), tmp_path, callbacks=[hooks])
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    trainer.fit()
    assert hooks.calls == {"on_epoch_start": 2, "loss": 4, "before_optimizer_step": 4, "after_step": 4, "on_epoch_end": 2}
    in_sgd = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(model.gate) not in in_sgd
    decayed = trainer.optimizer.param_groups[0]["params"]
    assert all(p.ndim > 1 for p in decayed) and trainer.optimizer.param_groups[1]["weight_decay"] == 0.0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a zero loss and no decay: nothing moves
    other = tiny_model(seed=1)
    other.gate = nn.Parameter(torch.zeros(3))
    fresh = Recorder(other.gate)
    Trainer(other, tiny_data(), tiny_train_config(weight_decay=0.0), tmp_path, callbacks=[fresh]).load_checkpoint(
        tmp_path / "train.pt")
    assert fresh.restored == {"calls": hooks.calls}


class Logged(TrainHooks):
    """Appends ``(name, hook)`` to a shared log; its loss adds ``name``'s offset to the loss it is given."""

    def __init__(self, name: str, log: list, offset: float = 0.0, state: dict | None = None) -> None:
        self.name, self.log, self.offset, self.state, self.loaded = name, log, offset, state or {}, None

    def on_epoch_start(self, trainer, epoch):
        self.log.append((self.name, "on_epoch_start"))

    def loss(self, trainer, ce, logits, step):
        self.log.append((self.name, "loss"))
        return ce + self.offset

    def after_step(self, trainer, step, metrics):
        self.log.append((self.name, "after_step"))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.log.append((self.name, "on_epoch_end"))
        metrics.setdefault("seen_by", []).append(self.name)

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.loaded = state


def test_callbacks_compose_in_order(tmp_path):
    """Each hook runs on every callback in the order given; losses chain; epoch metrics one callback writes are
    there for the next (how a monitor logs what the search computed); states share one checkpoint dict."""
    log: list = []
    first, second = Logged("search", log, 1.0, {"pruner": 1}), Logged("monitor", log, 10.0)
    trainer = Trainer(tiny_model(), tiny_data(), tiny_train_config(epochs=1), tmp_path, callbacks=[first, second])
    metrics = trainer.fit()
    by_hook = [hook for _, hook in log]
    assert log[:2] == [("search", "on_epoch_start"), ("monitor", "on_epoch_start")]
    assert [name for name, hook in log if hook == "after_step"] == ["search", "monitor"] * 2
    assert by_hook.count("loss") == 4 and metrics["seen_by"] == ["search", "monitor"]
    assert trainer.callbacks.loss(trainer, torch.tensor(0.0), None, 0) == 11.0  # 0 + 1 + 10, in order
    resumed = [Logged("search", [], state={"pruner": 1}), Logged("monitor", [])]
    Trainer(tiny_model(), tiny_data(), tiny_train_config(epochs=1), tmp_path, callbacks=resumed).load_checkpoint(
        tmp_path / "train.pt")
    assert resumed[0].loaded == resumed[1].loaded == {"pruner": 1}
    clash = Trainer(tiny_model(), tiny_data(), tiny_train_config(epochs=1), tmp_path / "b",
                    callbacks=[Logged("a", [], state={"x": 1}), Logged("b", [], state={"x": 2})])
    with pytest.raises(DnasPruneError, match="'x'"):
        clash.save_checkpoint()


class NanAt(TrainHooks):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def loss(self, trainer, ce, logits, step):
        return ce * float("nan") if trainer.epoch == self.epoch else ce


def test_nan_loss_raises_naming_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="no checkpoint"):
        Trainer(tiny_model(), tiny_data(), tiny_train_config(), tmp_path / "a", callbacks=[NanAt(0)]).fit()
    with pytest.raises(TrainingDiverged, match=str(tmp_path / "b" / "train.pt")):
        Trainer(tiny_model(), tiny_data(), tiny_train_config(), tmp_path / "b", callbacks=[NanAt(1)]).fit()


def test_train_command_writes_checkpoint_model_and_metrics(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "cifar_resnet20", "--data", str(tiny_cifar), "--epochs", "1", "--out", str(out),
            "--limit-train", "16", "--val-size", "6", "--batch-size", "8", "--precision", "fp32",
            "--memory-format", "contiguous", "--no-progress"]
    assert main(args) == 0
    assert {"train.pt", "model.pt", "metrics.json"} <= {p.name for p in out.iterdir()}
    model, metadata = load_pruned_with_metadata(out / "model.pt")
    assert metadata["kind"] == "dense" and model.fc.out_features == 3 and "test_acc" in metadata["metrics"]
    assert main(args[:-1] + ["--resume", "--epochs", "2", "--no-progress"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_train_command_trains_on_every_training_image_by_default(tiny_cifar, tmp_path):
    """Dense training decides nothing on a validation split, so `train` holds none out unless asked."""
    out = tmp_path / "run"
    assert main(["train", "--model", "cifar_resnet20", "--data", str(tiny_cifar), "--epochs", "1", "--out", str(out),
                 "--batch-size", "36", "--precision", "fp32", "--memory-format", "contiguous", "--no-progress",
                 "--no-tensorboard", "--weight-decay", "1e-3", "--label-smoothing", "0.2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metadata"]["val_size"] == 0 and "val_acc" not in metrics["history"][0]
    assert (metrics["config"]["weight_decay"], metrics["config"]["label_smoothing"]) == (1e-3, 0.2)
    state = torch.load(out / "train.pt", weights_only=True)
    assert state["global_step"] == 1  # one full batch of 36: every image of the tiny tree (3 classes x 12)


def test_bad_data_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--model", "cifar_resnet20", "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnas-prune: error:") and "\n" not in err
    assert main(["train", "--model", "resnet9000", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2


def test_evaluate_before_fit_chooses_a_memory_format(tmp_path):
    trainer = Trainer(tiny_model(), tiny_data(), tiny_train_config(memory_format="auto"), tmp_path)
    assert 0.0 <= trainer.evaluate(trainer.data.val)["acc"] <= 1.0


def test_clean_epochs_train_the_last_epochs_on_unaugmented_images(tmp_path):
    data = tiny_data()
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)

    def unaugmented(epoch: int) -> bool:
        stream = trainer._batches(data.train, train=True, epoch=epoch)
        order = stream.order[: len(data.train) // 16 * 16]
        x = torch.cat([x for x, _ in stream])
        return torch.allclose(x, (data.train.images[order].float() / 255 - mean) / std, atol=1e-5)

    trainer = Trainer(tiny_model(), data, tiny_train_config(epochs=3, clean_epochs=2), tmp_path)
    assert [unaugmented(e) for e in range(3)] == [False, True, True]
    trainer.fit()
    assert trainer.epoch == 3
    with pytest.raises(DnasPruneError, match="clean_epochs"):
        tiny_train_config(epochs=3, clean_epochs=4)


def test_train_command_trains_the_last_epoch_in_15_on_clean_images_unless_told():
    """The clean tail scales with the run: 2 of 30 epochs, none in a 1-epoch smoke run, and a flag wins."""
    parser = build_parser()

    def clean_epochs(*argv: str) -> int:
        return train_config_from(parser.parse_args(["train", "--model", "cifar_resnet20", *argv])).clean_epochs

    assert [clean_epochs("--epochs", str(n)) for n in (1, 14, 15, 30, 60)] == [0, 0, 1, 2, 4]
    assert clean_epochs("--epochs", "30", "--clean-epochs", "0") == 0
    assert clean_epochs("--epochs", "3", "--clean-epochs", "3") == 3
    search = ["search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--out", "r", "--epochs", "30"]
    finetune = ["finetune", "pruned.pt", "--out", "r", "--epochs", "30"]
    assert [train_config_from(parser.parse_args(argv)).clean_epochs for argv in (search, finetune)] == [0, 0]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(tmp_path, monkeypatch, native_bf16):
    monkeypatch.setattr(policy, "cpu_runs_bf16", lambda: native_bf16)
    trainer = Trainer(tiny_model(), tiny_data(), tiny_train_config(precision="auto", epochs=1), tmp_path)
    assert trainer.precision == ("bf16" if native_bf16 else "fp32")
    assert trainer.autocast().fast_dtype == torch.bfloat16 and trainer.autocast()._enabled == native_bf16
    assert Trainer(tiny_model(), tiny_data(), tiny_train_config(precision="fp32"), tmp_path / "f").precision == "fp32"
    trainer.fit()
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == trainer.precision
    monkeypatch.setattr(policy, "cpu_runs_bf16", lambda: not native_bf16)  # resumed elsewhere: the run's own
    resumed = Trainer(tiny_model(), tiny_data(), tiny_train_config(precision="auto", epochs=1), tmp_path)
    resumed.load_checkpoint(trainer.checkpoint_path)
    assert resumed.precision == trainer.precision


def test_cpu_training_keeps_narrow_strided_1x1_convs_out_of_channels_last(tmp_path):
    narrow = cifar_resnet(8, num_classes=3, widths=(4, 8, 8))  # layer2's projection: 1x1, stride 2, 4 inputs
    assert policy.channels_last_unsafe_convs(narrow) == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert policy.channels_last_unsafe_convs(cifar_resnet(8, num_classes=3, widths=(16, 32, 64))) == []
    trainer = Trainer(narrow, tiny_data(), tiny_train_config(memory_format="auto", epochs=1), tmp_path)
    trainer.fit()
    assert trainer.channels_last is False
    with pytest.raises(DnasPruneError, match="layer2.0.downsample.0.*--memory-format auto or nchw"):
        Trainer(tiny_model(), tiny_data(), tiny_train_config(memory_format="channels_last"), tmp_path / "cl").fit()


def test_a_run_split_in_two_follows_one_schedule(tmp_path):
    """schedule_epochs/schedule_start: a search of 2 epochs and a finetune of 3 see the lr of one 5-epoch run."""
    data = tiny_data()
    base = dict(batch_size=8, lr=0.1, schedule="cosine", warmup_epochs=0.5, progress=False)

    def lrs(config: TrainConfig) -> list[float]:
        trainer = Trainer(tiny_model(), data, config, tmp_path)
        seen = []
        for _ in range(config.epochs * trainer.steps_per_epoch):
            seen.append(trainer.scheduler.get_last_lr()[0])
            trainer.optimizer.step()
            trainer.scheduler.step()
        return seen

    whole = lrs(TrainConfig(epochs=5, **base))
    first = lrs(TrainConfig(epochs=2, schedule_epochs=5, **base))
    second = lrs(TrainConfig(epochs=3, schedule_epochs=5, schedule_start=2, **base))
    assert first + second == pytest.approx(whole)
    assert second[0] < 0.1 and second[-1] < second[0]  # no restart at the peak
    assert lr_factor(0, total=10, warmup=0, schedule="cosine", start=10) == pytest.approx(0.0)
    with pytest.raises(DnasPruneError, match="inside its lr schedule"):
        TrainConfig(epochs=4, schedule_epochs=5, schedule_start=2, **base)


def test_a_warm_up_as_long_as_the_run_is_warned(tmp_path) -> None:
    """--epochs 1 with the recipe's warm-up would end the run at the peak lr, without a word."""
    from conftest import make_synthetic

    data = make_synthetic(n_train=32, classes=10)
    with pytest.warns(UserWarning, match="the lr warm-up \\(3 epochs\\) spans the whole schedule"):
        Trainer(create_model("cifar_resnet20"), data, TrainConfig(epochs=1, batch_size=8, warmup_epochs=3), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(create_model("cifar_resnet20"), data, TrainConfig(epochs=4, batch_size=8, warmup_epochs=3), tmp_path)
