"""The search: gates move under budget pressure, the result lands on the budget, and resume is exact."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from dnas_prune import SearchConfig, TrainConfig, count_cost, create_model, finalize, load_pruned, load_supernet, search
from dnas_prune.cli import main
from dnas_prune.errors import DnasPruneError
from dnas_prune.train.loop import TrainHooks

from conftest import make_synthetic, read_events

TRAIN = dict(batch_size=64, lr=0.05, schedule="cosine", warmup_epochs=0.0, progress=False, memory_format="contiguous")


def run_search(data, out: Path, epochs: int = 2, callbacks=(), resume: bool = False, model=None, **search_kw):
    config = SearchConfig(**{"target": 0.5, "gate_lr": 0.2, "recalibrate_batches": 2, **search_kw})
    torch.manual_seed(0)
    model = model or create_model("cifar_resnet20", num_classes=data.num_classes)
    return search(model, data, TrainConfig(epochs=epochs, **TRAIN), config, out, resume=resume, callbacks=callbacks)


def test_search_tracks_the_target_and_lands_on_the_budget(tmp_path: Path) -> None:
    net, summary = run_search(make_synthetic(n_train=512), tmp_path, epochs=3, gate_lr=0.3)
    history = summary["history"]
    assert [round(h["target_ratio"], 6) for h in history][-1] == 0.5
    assert abs(history[-1]["hard_macs_ratio"] / 0.5 - 1) <= 0.05  # the search itself got there, not the projection
    assert summary["steering"]["max_rel_deviation_after_warmup"] <= 0.15
    assert 0.49 <= summary["final"]["macs_ratio"] <= 0.51
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["final"] == summary["final"]
    projection = saved["projection"]  # how far the projection moved the cost
    assert projection["metric"] == "macs"
    assert projection["before"] == pytest.approx(summary["before_projection"]["macs_ratio"])
    assert projection["after"] == pytest.approx(summary["final"]["macs_ratio"])
    assert projection["moved"] == pytest.approx(projection["after"] - projection["before"])
    reloaded = load_supernet(tmp_path / "supernet.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), net.eval()(x))
        torch.testing.assert_close(finalize(reloaded)(x), net(x), rtol=1e-4, atol=1e-4)


class StopAfterFirstEpoch(TrainHooks):
    """Aborts when the second epoch starts, like a kill between epochs."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt


def test_resumed_search_equals_an_uninterrupted_one(synthetic_data, tmp_path: Path) -> None:
    straight, _ = run_search(synthetic_data, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_search(synthetic_data, tmp_path / "b", callbacks=[StopAfterFirstEpoch()])
    resumed, _ = run_search(synthetic_data, tmp_path / "b", resume=True)
    decided = straight.decisions(), resumed.decisions()
    assert decided[0].blocks == decided[1].blocks and decided[0].widths == decided[1].widths
    assert {k: v.tolist() for k, v in decided[0].masks.items()} == {k: v.tolist() for k, v in decided[1].masks.items()}
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.5, 0.2])
def test_cli_search_then_finalize_on_cifar_hits_the_target(small_cifar_root: Path, tmp_path: Path,
                                                            target: float) -> None:
    out = tmp_path / "run"
    assert main(["search", "--model", "cifar_resnet20", "--data", str(small_cifar_root), "--target-macs", str(target),
                 "--epochs", "1", "--limit-train", "1024", "--val-size", "256", "--out", str(out), "--no-progress",
                 "--memory-format", "contiguous"]) == 0
    events = read_events(out / "tb")
    kinds = events.Tags()
    assert kinds["scalars"] and kinds["histograms"] and kinds["images"] and kinds["tensors"]  # text lives in tensors
    assert main(["finalize", str(out / "supernet.pt"), "-o", str(tmp_path / "P.pt")]) == 0
    model = load_pruned(tmp_path / "P.pt")
    ratio = count_cost(model).macs / count_cost(create_model("cifar_resnet20")).macs
    assert target - 0.01 <= ratio <= target + 0.01


def test_cost_normalization_pushes_every_gate_equally_per_unit_of_cost() -> None:
    """A gradient proportional to each gate's marginal cost (what a budget penalty would give) becomes the same
    for every gate: what is left to rank gates is importance per unit of cost."""
    from dnas_prune import Pruner

    pruner = Pruner(create_model("cifar_resnet20"), total_steps=100, target_macs=0.3, block_gates=True,
                    prior_spread=0.0)  # equal logits: equal sigmoid slopes
    net = pruner.net
    net.train()
    net.expected_cost()["macs"].backward()
    raw = torch.cat([g.logits.grad.clone() for g in net.gates.values()])
    assert raw.max() / raw.min() > 10
    pruner.normalize_gate_gradients()
    normalized = torch.cat([g.logits.grad for g in net.gates.values()])
    assert bool((normalized > 0).all())
    torch.testing.assert_close(normalized, normalized[:1].expand_as(normalized), rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["cifar_resnet110", "resnet152"])
def test_without_block_gates_only_channels_are_gated(name: str) -> None:
    """By default (for a MACs or params budget) every block gate is left out (up to resnet152's 36 blocks a
    stage), every inner group stays gated, and the streams stay whole as by default; a latency budget gates the
    blocks unless told not to."""
    from dnas_prune import Supernet

    size = (3, 32, 32) if name.startswith("cifar") else (3, 64, 64)
    def gated(config: SearchConfig) -> dict[str, set[str]]:
        net = Supernet(create_model(name), size, exclude=config.excluded_groups())
        kinds: dict[str, set[str]] = {}
        for group, info in net.groups.items():
            if info.gated:
                kinds.setdefault(info.kind, set()).add(group)
        return kinds

    with_blocks, default = gated(SearchConfig(block_gates=True)), gated(SearchConfig())
    assert set(with_blocks) == {"block", "inner"} and len(with_blocks["block"]) > 9
    assert default == {"inner": with_blocks["inner"]}
    assert gated(SearchConfig(metric="latency")) == with_blocks
    assert gated(SearchConfig(metric="latency", block_gates=False)) == default


def test_search_with_block_gates_lands_on_the_budget(synthetic_data, tmp_path: Path) -> None:
    net, summary = run_search(synthetic_data, tmp_path, block_gates=True)
    assert any(info.gated for info in net.groups.values() if info.kind == "block")
    assert 0.49 <= summary["final"]["macs_ratio"] <= 0.51


class RecordEvalStatistics(TrainHooks):
    """At each epoch end (after the evaluation) keeps the BN statistics eval mode used and those the hard network
    has on the calibration batches."""

    def __init__(self, calibration_batches: int) -> None:
        self.calibration_batches, self.seen = calibration_batches, []

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        import copy

        if "val_acc" not in metrics:  # the last epoch: the search evaluates after projecting (test below)
            return

        from dnas_prune.search.hooks import recalibrate_bn

        def stats(net) -> dict[str, torch.Tensor]:
            return {k: v.clone() for k, v in net.model.state_dict().items() if k.endswith(("running_mean", "running_var"))}

        hard = copy.deepcopy(trainer.model)
        recalibrate_bn(hard, trainer.data, self.calibration_batches, trainer.config.batch_size,
                       trainer.config.seed, False, trainer.device, trainer.autocast)
        self.seen.append((stats(trainer.model), stats(hard)))


def test_mid_search_val_accuracy_is_that_of_the_hard_network(synthetic_data, tmp_path: Path) -> None:
    """Eval mode computes the hard network; its BN statistics must be its own, not the soft-gated ones training
    left behind, or TensorBoard shows chance accuracy during the search."""
    recorder = RecordEvalStatistics(calibration_batches=2)  # run_search's recalibrate_batches
    run_search(synthetic_data, tmp_path, epochs=3, callbacks=[recorder])
    assert len(recorder.seen) == 2
    for used, hard in recorder.seen:
        for name in used:
            torch.testing.assert_close(used[name], hard[name], msg=name)


def test_the_search_evaluates_each_split_once_at_its_end_on_the_projected_network(synthetic_data, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """The last epoch's evaluation would measure the network before the projection, which the search measures
    again right after: time spent twice for a number nobody keeps."""
    from dnas_prune.train.loop import Trainer

    evaluated, evaluate = [], Trainer.evaluate

    def counting(trainer, split, *args, **kwargs):
        pinned = all(bool((gate.forced >= 0).all()) for gate in trainer.model.gates.values())
        evaluated.append((trainer.epoch, pinned, split is trainer.data.test))
        return evaluate(trainer, split, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counting)
    _, summary = run_search(synthetic_data, tmp_path, epochs=2)
    assert evaluated == [(0, False, False), (2, True, False), (2, True, True)]  # epoch 1's val; val and test at the end
    assert "val_acc" in summary["history"][0] and "val_acc" not in summary["history"][-1]


def _warm_up_taylor(pruner, steps: int, seed: int = 0) -> None:
    """``steps`` steps that move only the gates (the weights stay as they are)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        torch.nn.functional.cross_entropy(pruner.net(x), y).backward()
        pruner.step()
        pruner.net.zero_grad(set_to_none=True)


@pytest.mark.parametrize("extra", [{}, {"channels_per_gate": 8}, {"block_gates": True}, {"gate": "bernoulli"},
                                   {"channel_order": "l1"}, {"channel_order": "l1", "channels_per_gate": 8}])
def test_taylor_prior_ranks_all_channel_gates_at_once_by_saliency_per_cost(extra) -> None:
    from dnas_prune.search.pruner import Pruner

    torch.manual_seed(0)
    model = create_model("cifar_resnet20")
    with torch.no_grad():
        model.layer1[0].conv2.weight.zero_()  # layer1.0.conv1's channels now feed nothing: zero saliency
    extra = {"prior": "taylor", "channel_order": "learned", **extra}
    pruner = Pruner(model, (3, 32, 32), total_steps=8, target_macs=0.5, warmup=0.5, prior_spread=1.0,
                    gate_lr=1e-9, **extra)  # the logits stay put during warm-up: the costs below are the prior's
    net = pruner.net
    names = [n for n, info in net.groups.items() if info.gated and info.kind != "block"]
    blocks = {n: net.gate(n).logits.detach().clone() for n, info in net.groups.items() if info.kind == "block"}
    # The saliency measured independently: dL/d(gate value) read off each gate's output during warm-up.
    saliency = {n: torch.zeros(net.gate(n).size, dtype=torch.float64) for n in names}
    handles = []
    for n in names:
        def add(grad, n=n) -> None:
            saliency[n].add_(grad.double().square())

        def keep(module, inputs, output, add=add):
            output.register_hook(add)
        handles.append(net.gate(n).register_forward_hook(keep))
    _warm_up_taylor(pruner, 3)
    assert not pruner.prior_set
    costs = net.marginal_costs("macs")
    _warm_up_taylor(pruner, 1)  # the fourth step ends warm-up: the prior is set before the next forward
    for handle in handles:
        handle.remove()
    assert pruner.prior_set
    logits = torch.cat([net.gate(n).logits.detach() for n in names]).double()
    expected = net.init_logit + torch.linspace(-1.0, 1.0, len(logits), dtype=torch.float64)
    torch.testing.assert_close(logits.sort().values, expected, rtol=0, atol=1e-5)
    scores = torch.cat([saliency[n] / costs[n] for n in names])
    by_score = torch.empty_like(scores)
    by_score[torch.argsort(scores, stable=True)] = expected
    if extra["channel_order"] == "learned":
        torch.testing.assert_close(logits, by_score, rtol=0, atol=1e-5)
    else:  # each group keeps the rank positions its saliency won, handed out by its filters' L1 norm
        start = 0
        for n in names:
            gate = net.gate(n)
            mine, theirs = logits[start:start + gate.size], by_score[start:start + gate.size]
            start += gate.size
            torch.testing.assert_close(mine.sort().values, theirs.sort().values, rtol=0, atol=1e-5, msg=n)
            conv = net.model.get_submodule(n)
            norms = torch.zeros(gate.size, dtype=torch.float64).index_add_(
                0, net.channel_assignment(n), conv.weight.detach().abs().flatten(1).sum(1).double())
            assert torch.equal(torch.argsort(mine, stable=True), torch.argsort(norms, stable=True)), n
    dead = net.gate("layer1.0.conv1").logits.detach()
    assert dead.max() < logits.sort().values[dead.numel()]  # the useless channels are the weakest of all
    for n, before in blocks.items():
        torch.testing.assert_close(net.gate(n).logits.detach(), before, msg=n)


def test_taylor_prior_resumes_mid_warm_up_exactly() -> None:
    from dnas_prune.search.pruner import Pruner

    def fresh():
        torch.manual_seed(0)
        return Pruner(create_model("cifar_resnet20"), (3, 32, 32), total_steps=8, target_macs=0.5, prior="taylor",
                      warmup=0.5)

    straight = fresh()
    _warm_up_taylor(straight, 2, seed=0)
    state, weights = copy.deepcopy(straight.state_dict()), copy.deepcopy(straight.net.state_dict())
    _warm_up_taylor(straight, 3, seed=1)
    resumed = fresh()
    resumed.net.load_state_dict(weights)
    resumed.load_state_dict(state)
    _warm_up_taylor(resumed, 3, seed=1)
    for name in straight.net.groups:
        if straight.net.groups[name].gated:
            torch.testing.assert_close(resumed.net.gate(name).logits, straight.net.gate(name).logits, msg=name)


def test_a_warm_up_without_gate_gradients_warns_and_still_orders_channels_and_holds_streams() -> None:
    """pruner.step() called without a backward before it (or after zero_grad): no saliency reaches the gates, so the
    Taylor prior cannot rank them. The user is told how to call it; the gates keep the |BN gamma| prior, and the
    filter-norm channel order and the open streams are still set up at warm-up's end."""
    from dnas_prune.search.pruner import Pruner

    torch.manual_seed(0)
    pruner = Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=10, target_macs=0.5, warmup=0.2,
                    gate_streams=True)
    before = {n: pruner.net.gate(n).logits.detach().clone() for n in pruner.net.groups if pruner.net.groups[n].gated}
    pruner.step()
    assert not pruner.prior_set and not pruner.channel_order
    with pytest.warns(UserWarning, match="no gate gradient reached .*call pruner.step\\(\\) after loss.backward"):
        pruner.step()
    assert pruner.prior_set and len(pruner.channel_order) == 9 + 3  # the inner groups and the three streams
    for name, order in pruner.channel_order.items():
        held = pruner.net.gate(name).logits.detach().flatten()[order]
        assert torch.all(held[1:] >= held[:-1]), name
        assert torch.equal(held.sort().values, before[name].flatten().sort().values), name  # the gamma prior's logits
    stream = pruner.net.gate("layer3.stream")
    assert stream.forced.flatten()[pruner.channel_order["layer3.stream"][-1]] == 1  # its strongest filter held open


@pytest.mark.parametrize("prior", ["gamma", "taylor"])
def test_channel_order_l1_keeps_the_filter_norm_order_while_the_gates_set_widths(prior) -> None:
    """With channel_order "l1" the gates decide how many channels each group keeps and the filters' L1 norms,
    taken when the prior is set, which: through training of weights and gates, and across a resume."""
    from dnas_prune.search.pruner import Pruner

    def fresh():
        torch.manual_seed(0)
        model = create_model("cifar_resnet20")
        return Pruner(model, (3, 32, 32), total_steps=12, target_macs=0.4, prior=prior, warmup=0.25, target_ramp=0.5,
                      channel_order="l1", gate_lr=0.5)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(10)]

    def train(pruner, batches):
        optimizer = torch.optim.SGD(pruner.weight_parameters(), lr=0.5)  # big steps: the filter norms move
        for x, y in batches:
            torch.nn.functional.cross_entropy(pruner.net(x), y).backward()
            optimizer.step()
            pruner.step()
            pruner.net.zero_grad(set_to_none=True)
            yield pruner

    pruner = fresh()
    net = pruner.net
    norms_now = {n: net.model.get_submodule(n).weight.detach().abs().flatten(1).sum(1) for n in net.groups
                 if net.groups[n].kind == "inner"}
    if prior == "gamma":  # fixed at construction
        for n, order in pruner.channel_order.items():
            assert torch.equal(order, torch.argsort(norms_now[n].double(), stable=True)), n
    else:
        assert not pruner.channel_order  # fixed at the end of warm-up
    widths = set()
    for step, p in enumerate(train(pruner, batches), start=1):
        if step == 4:  # a resume from here replays steps 5-10 exactly
            state, weights = copy.deepcopy(p.state_dict()), copy.deepcopy(p.net.state_dict())
        if not p.prior_set:  # taylor: still in warm-up, the network is dense
            continue
        assert len(p.channel_order) == 9, step  # every inner group of ResNet-20
        for n, order in p.channel_order.items():
            gate = net.gate(n)
            held = gate.logits.detach().flatten()[order]
            assert torch.all(held[1:] >= held[:-1]), (step, n)  # larger filter norm, never a smaller logit
            open_ = gate.hard_open().flatten().bool()
            k = int(open_.sum())
            assert torch.equal(torch.nonzero(open_).flatten().sort().values, order[gate.size - k:].sort().values)
        widths.add(tuple(int(net.gate(n).hard_open().sum()) for n in p.channel_order))
    assert len(widths) > 2 and p.hard_ratio < 0.5  # the widths moved with the target
    now = {n: net.model.get_submodule(n).weight.detach().abs().flatten(1).sum(1) for n in p.channel_order}
    assert any(not torch.equal(o, torch.argsort(now[n].double(), stable=True)) for n, o in p.channel_order.items())
    resumed = fresh()
    resumed.net.load_state_dict(weights)
    resumed.load_state_dict(state)
    for _ in train(resumed, batches[4:]):
        pass
    for n, order in pruner.channel_order.items():
        assert torch.equal(resumed.channel_order[n], order), n
    for n in net.groups:
        if net.groups[n].gated:
            torch.testing.assert_close(resumed.net.gate(n).logits, net.gate(n).logits, msg=n)


def test_taylor_prior_needs_a_warm_up() -> None:
    with pytest.raises(DnasPruneError, match="warmup"):
        SearchConfig(prior="taylor", warmup=0.0)
    with pytest.raises(DnasPruneError, match="prior must be one of"):
        SearchConfig(prior="l2")
    with pytest.raises(DnasPruneError, match="channel_order .--channel-order. must be one of l1, learned"):
        SearchConfig(channel_order="gamma")
    with pytest.raises(DnasPruneError, match="--prior gamma with --gate hard_concrete"):
        SearchConfig(gate="hard_concrete")


@pytest.mark.parametrize("prior", ["gamma", "taylor"])
def test_a_gated_stream_never_closes_whole_during_the_search(prior) -> None:
    """The offset may close every gate of a group; a stream closed whole would leave the network at chance, so
    its strongest gate is pinned open once the prior is set."""
    import torch.nn.functional as F
    from dnas_prune.search.pruner import Pruner

    torch.manual_seed(0)
    pruner = Pruner(create_model("cifar_resnet20"), (3, 32, 32), total_steps=6, target_macs=0.1, gate_streams=True,
                    prior=prior, warmup=0.2, target_ramp=0.3, gate_lr=1e-9)
    net = pruner.net
    streams = [n for n, info in net.groups.items() if info.gated and info.kind == "stream"]
    assert streams
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def train_step() -> None:
        F.cross_entropy(net(x), y).backward()
        pruner.step()
        net.zero_grad(set_to_none=True)

    for _ in range(5):
        train_step()
    assert pruner.prior_set
    with torch.no_grad():
        for n in streams:  # every stream gate now ranks below every other gate
            net.gate(n).logits.fill_(-50.0)
    train_step()
    for n in streams:
        open_now = int(net.gate(n).hard_open().sum())
        assert open_now == 1, (n, open_now)


def test_the_pruner_names_an_unknown_setting_and_wants_a_budget() -> None:
    from dnas_prune.search.pruner import Pruner

    with pytest.raises(DnasPruneError, match="unknown setting 'warmpu'; did you mean 'warmup'"):
        Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=10, target_macs=0.5, warmpu=0.1)
    with pytest.raises(DnasPruneError, match="pass a budget"):  # no silent default budget
        Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=10)
    with pytest.raises(DnasPruneError, match="^target_macs must be a fraction"):  # its own name, not the CLI flag
        Pruner(create_model("cifar_resnet20"), (3, 16, 16), total_steps=10, target_macs=1.5)


def test_the_search_line_of_a_latency_budget_says_what_the_landing_timed() -> None:
    """The last line of `dnas-prune search` under a latency budget: the pinned try's timed ratio first, the table's
    beside it (a busy host can set them far apart); a MACs budget's line has no latency."""
    from dnas_prune.stages import search_line

    summary = {"final": {"macs_ratio": 0.55, "params_ratio": 0.5, "latency_ratio": 0.883, "latency_batch_size": 8},
               "projection": {"measured": [{"measured_ratio": 0.61}, {"measured_ratio": 0.497, "pinned": True}]},
               "target": {"metric": "latency", "ratio": 0.5}, "gates": {"blocks_open": 9, "blocks_total": 9},
               "accuracy": {"test": 0.5}}
    line = search_line(summary)
    assert line.startswith("latency 0.497 of dense as timed here at batch 8 (target 0.5; the table says 0.883), "
                           "0.5500 of dense MACs"), line
    ms = {**summary, "config": {"search": {"target_ms": 2.5}}}  # a ms target is read in ms
    ms["projection"] = {"measured": [{"measured_ratio": 0.497, "measured_ms": 2.38, "pinned": True}]}
    assert search_line(ms).startswith("latency 2.38 ms, 0.497 of dense as timed here at batch 8 (target 2.5 ms; ")
    summary["projection"] = {"metric": "macs"}
    assert search_line(summary).startswith("0.5500 of dense MACs")
