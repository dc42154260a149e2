"""The search: train weights and gates together under a cost budget, then land exactly on the budget.

Weights use the trainer's SGD groups; gates get their own optimizer (:mod:`~dnas_prune.gate_optimizer`: own LR,
no weight decay). The
schedule is a pure function of the global step, so a resumed search replays exactly:

- warm-up (``warmup`` fraction of all steps): no budget pressure;
- then the :class:`~dnas_prune.budget.BudgetController` pushes the expected cost to the target, while the
  sigmoid gate's temperature anneals from 1 to ``final_temperature``;
- the last ``hard_fraction`` of steps run a hard forward (straight-through), so training sees exactly the
  network that eval and finalization compute.

At the end :func:`~dnas_prune.budget.project_to_budget` pins a state within ±1 % of the target, the BN
statistics are re-estimated for it, and ``supernet.pt`` and ``search.json`` are written.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .budget import BudgetController, check_feasible, project_to_budget
from .data import TrainingData
from .errors import CheckpointError, DnasPruneError
from .gate_optimizer import make_gate_optimizer
from .models import build_model, create_model
from .supernet import Supernet
from .checkpoint import atomic_write_json, safe_load
from .training import Trainer, TrainConfig, TrainHooks

DEFAULT_GATE = "sigmoid"
DEFAULT_GATE_OPTIMIZER = "shared_adam"
STREAM_GROUPS = ("stem", "*.stream")  # patterns naming every residual-stream group
BLOCK_GROUPS = ("layer*.[0-9]", "layer*.[0-9][0-9]")  # patterns naming every block gate (layerS.B, B < 100)


@dataclass
class SearchConfig:
    metric: str = "macs"
    target: float = 0.5
    gate: str = DEFAULT_GATE
    gate_optimizer: str = DEFAULT_GATE_OPTIMIZER
    cost_normalized: bool = True  # divide each gate's gradient by its marginal cost (see SearchHooks)
    budget_penalty: str = "hinge"  # or "two_sided" (see BudgetController)
    gate_lr: float | None = None  # None: scaled to the search length (see SearchHooks)
    warmup: float = 0.1
    hard_fraction: float = 0.2
    final_temperature: float = 0.05
    init_logit: float = 3.0
    budget_lr: float | None = None  # None: scaled to the search length
    target_ramp: float = 0.0  # fraction of the search over which the budget descends from dense to the target
    round_to: int | None = None
    channels_per_gate: int = 1  # one gate per K channels: every searched width is a multiple of K
    exclude: list[str] = field(default_factory=list)
    gate_streams: bool = False  # also gate the residual streams (stem, projections and every branch's last BN)
    block_gates: bool = True  # False: blocks go only when all their inner channels close
    recalibrate_batches: int = 20

    def excluded_groups(self) -> list[str]:
        """The exclude patterns the supernet gets: the user's, plus the streams unless ``gate_streams``, plus the
        block gates unless ``block_gates``.

        Streams stay whole by default: on cifar_resnet20 at 20 % MACs every stream-gating variant let the search
        cut the first stage's stream to one channel, a bottleneck the network does not recover from within a short
        finetune (experiments/results/compare.md), while block + inner gating beat every peer.
        """
        streams = [] if self.gate_streams else list(STREAM_GROUPS)
        return list(self.exclude) + streams + ([] if self.block_gates else list(BLOCK_GROUPS))

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_ramp < 1.0:
            raise DnasPruneError(f"target_ramp (--target-ramp) must be a fraction of the search in [0, 1), got {self.target_ramp}")
        if isinstance(self.channels_per_gate, bool) or not isinstance(self.channels_per_gate, int) \
                or self.channels_per_gate < 1:
            raise DnasPruneError(f"channels_per_gate (--channels-per-gate) must be a positive integer, "
                                 f"got {self.channels_per_gate!r}")
        if self.round_to is not None and self.round_to % self.channels_per_gate:
            raise DnasPruneError(f"round_to (--round-to) {self.round_to} is not a multiple of channels_per_gate "
                                 f"(--channels-per-gate) {self.channels_per_gate}; widths move by whole gates")


def ramped_target(target: float, elapsed: float, ramp: float) -> float:
    """The budget ``elapsed`` (a fraction of the whole search, counted from the end of warm-up) into a ramp of
    length ``ramp``: a cubic descent from the dense cost to ``target``, steep first, flat on arrival.

    Demanding the final budget at once makes lambda grow while the cost is several times the target; by the time
    the cost gets there the gates have momentum and close far below it (cifar_resnet56 at 20 % MACs fell to 6 %
    with 3 of 27 blocks open after the first search epoch). Following a moving target keeps the overshoot small.
    """
    if ramp <= 0.0 or elapsed >= ramp:
        return target
    left = 1.0 - max(0.0, elapsed) / ramp
    return target + (1.0 - target) * left ** 3


class SearchHooks(TrainHooks):
    """Plugs gates, budget and schedule into the shared training loop.

    Readable state for monitoring: ``net``, ``controller``, ``temperature``, ``last_expected`` (expected
    cost ratios of the last step, floats) and ``progress`` (fraction of the search done).
    """

    def __init__(self, net: Supernet, config: SearchConfig, total_steps: int) -> None:
        self.net = net
        self.config = config
        self.total_steps = max(1, total_steps)
        # Defaults scale with the search length: a consistently pushed gate crosses from its initial logit to 0
        # within a quarter of the budgeted steps, and lambda can grow ~e^5 over them, for 40 steps or 4000.
        budgeted = max(1.0, self.total_steps * (1.0 - config.warmup))
        self.gate_lr = config.gate_lr or min(0.5, max(0.005, config.init_logit / (0.25 * budgeted)))
        self.budget_lr = config.budget_lr or min(0.5, max(0.002, 5.0 / budgeted))
        self.controller = BudgetController(config.metric, config.target, net.dense_cost, lr=self.budget_lr,
                                           penalty=config.budget_penalty)
        self.gate_optimizer = make_gate_optimizer(config.gate_optimizer, net.gate_parameters(), self.gate_lr)
        self.temperature = 1.0
        self.progress = 0.0
        self.last_expected: dict[str, float] = {}

    def excluded_parameters(self) -> list[nn.Parameter]:
        return list(self.net.gate_parameters())

    def schedule(self, step: int) -> None:
        """Set budget activity, temperature and hard forward for global step ``step``."""
        cfg = self.config
        self.progress = step / self.total_steps
        after_warmup = (self.progress - cfg.warmup) / max(1e-9, 1.0 - cfg.warmup)
        self.controller.active = self.progress >= cfg.warmup
        self.controller.target = ramped_target(cfg.target, self.progress - cfg.warmup, cfg.target_ramp)
        self.temperature = cfg.final_temperature ** min(1.0, max(0.0, after_warmup))
        hard = self.progress >= 1.0 - cfg.hard_fraction
        self.net.set_schedule(temperature=self.temperature, hard=hard)

    def loss(self, trainer: Trainer, ce: Tensor, logits: Tensor, step: int) -> Tensor:
        self.schedule(step)
        expected = self.net.expected_cost()
        dense = self.net.dense_cost
        self.last_expected = {"macs": float(expected["macs"].detach()) / dense.macs,
                              "params": float(expected["params"].detach()) / dense.params}
        return ce + self.controller.penalty(expected).to(ce.dtype)

    def before_optimizer_step(self, trainer: Trainer) -> None:
        if self.config.cost_normalized:
            self.divide_gradients_by_cost()
        self.gate_optimizer.step()
        self.gate_optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def divide_gradients_by_cost(self) -> None:
        """Scale each gate's gradient by (mean marginal cost) / (its marginal cost).

        The budget term then pushes every gate equally per unit of cost, and the task loss's gradient becomes
        importance per unit of cost: gates close in the order a knapsack would drop them (least loss per cost
        saved first). Without it the budget pushes expensive units (whole blocks, early-stage stream channels)
        hardest whatever their importance, and a short search strips the first stage to a single channel.
        """
        costs = self.net.marginal_costs(self.config.metric)
        sizes = {name: self.net.gate(name).size for name in costs}  # gates per group
        mean = sum(costs[n] * sizes[n] for n in costs) / max(1, sum(sizes.values()))
        floor = 1e-2 * mean  # a group whose every consumer is closed costs ~0; its gradient is ~0 too
        for name, cost in costs.items():
            grad = self.net.gate(name).logits.grad
            if grad is not None and mean > 0:
                grad.mul_(mean / max(cost, floor))

    def after_step(self, trainer: Trainer, step: int, metrics: dict) -> None:
        self.controller.update(self.last_expected[self.config.metric])

    def before_evaluate(self, trainer: Trainer, epoch: int) -> None:
        """Eval mode computes the hard network, whose BN inputs differ from the soft-gated ones the running
        statistics followed; without refitting them the per-epoch val accuracy sits near chance. Training
        normalizes by batch statistics, so this changes what is logged, not what is learned."""
        recalibrate_bn(self.net, trainer.data, self.config.recalibrate_batches, trainer.config.batch_size,
                       trainer.config.seed, bool(trainer.channels_last), trainer.device, trainer.autocast)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict) -> None:
        hard = self.net.hard_cost()
        metrics.update(
            hard_macs_ratio=hard.macs / self.net.dense_cost.macs,
            hard_params_ratio=hard.params / self.net.dense_cost.params,
            expected_ratio=self.last_expected.get(self.config.metric, 1.0),
            budget_lambda=self.controller.value,
            temperature=self.temperature,
            blocks_open=sum(self.net.block_open().values()),
        )

    def state_dict(self) -> dict:
        return {"gate_optimizer": self.gate_optimizer.state_dict(), "controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.controller.load_state_dict(state["controller"])


def load_pretrained(path: str | Path, model_name: str | None, num_classes: int) -> nn.Module:
    """A dense model from a ``dnas-prune train`` output (``model.pt`` or ``train.pt``) or a plain
    torchvision-style state_dict (then ``model_name`` says which architecture)."""
    state = safe_load(path, "a dnas_prune model or a state_dict")
    if isinstance(state, dict) and "spec" in state and "state_dict" in state:
        model, weights = build_model(state["spec"]), state["state_dict"]
    elif isinstance(state, dict) and state.get("kind") == "dnas_prune.trainer":
        spec = state.get("metadata", {}).get("spec")
        if spec is None:
            raise CheckpointError(f"{path} is a trainer checkpoint without a model spec; pass its model.pt instead")
        model, weights = build_model(spec), state["model"]
    elif isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        if model_name is None:
            raise CheckpointError(f"{path} is a plain state_dict; also pass --model to say which architecture it is")
        model, weights = create_model(model_name, num_classes=num_classes), state
    else:
        raise CheckpointError(f"{path} is neither a dnas_prune model file nor a state_dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{path} does not fit the model: {lines[min(1, len(lines) - 1)]}") from None
    return model


@torch.no_grad()
def recalibrate_bn(net: Supernet, data: TrainingData, batches: int, batch_size: int, seed: int,
                   channels_last: bool, device: torch.device, autocast) -> None:
    """Re-estimate BN running statistics for the pinned hard network (soft-gate statistics are stale)."""
    if batches <= 0:
        return
    bns = [m for m in net.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    net.train()
    for gate in net.gates.values():
        gate.train(False)
    stream = data.train.batches(batch_size, train=True, seed=seed, epoch=10_000, device=device,
                                channels_last=channels_last)
    for i, (x, _) in enumerate(stream):
        if i >= batches:
            break
        with autocast():
            net(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    net.eval()


def gate_summary(net: Supernet) -> dict[str, Any]:
    """Per-group open counts and block decisions: what search.json and the reports show."""
    state = net.gate_state()
    groups = {name: {"kind": net.groups[name].kind, "open": int(mask.sum()), "size": net.groups[name].size}
              for name, mask in state.items()}
    alive = net.block_open()
    return {"groups": groups, "blocks_open": sum(alive.values()), "blocks_total": len(alive)}


def search(
    model: nn.Module,
    data: TrainingData,
    train_config: TrainConfig,
    search_config: SearchConfig,
    out_dir: str | Path,
    resume: bool = False,
    input_size: tuple[int, int, int] | None = None,
    wrap_hooks: Callable[[TrainHooks], TrainHooks] | None = None,
) -> tuple[Supernet, dict]:
    """Run the whole search; returns the projected supernet and the summary written to ``search.json``.

    ``wrap_hooks`` lets the caller put an observer (e.g. TensorBoard monitoring) around the search hooks
    without this module knowing about it. With ``train_config.distill_weight > 0`` the supernet also learns from
    the dense model it starts from (a frozen copy), as the finetune does.
    """
    if train_config.ema_decay > 0:
        raise DnasPruneError(f"ema_decay {train_config.ema_decay} applies to dense training and finetuning, not the "
                             "search, whose gates and BN statistics are fitted on the live weights; set it to 0 here")
    out = Path(out_dir)
    input_size = input_size or data.train.input_size
    teacher = copy.deepcopy(model) if train_config.distill_weight > 0 else None
    net = Supernet(model, input_size, gate=search_config.gate, exclude=search_config.excluded_groups(),
                   init_logit=search_config.init_logit, channels_per_gate=search_config.channels_per_gate)
    check_feasible(net, search_config.metric, search_config.target, search_config.round_to)
    net.budget = {"metric": search_config.metric, "target": search_config.target}
    steps = train_config.epochs * (len(data.train) // train_config.batch_size)
    hooks = SearchHooks(net, search_config, steps)
    metadata = {"kind": "dnas_prune.search", "supernet": net.config(), "search": asdict(search_config)}
    trainer = Trainer(net, data, train_config, out, hooks=wrap_hooks(hooks) if wrap_hooks else hooks,
                      checkpoint_name="supernet.pt", metadata=metadata, teacher=teacher)
    trainer.fit(resume=resume and (out / "supernet.pt").is_file())
    before = net.hard_cost()
    final = project_to_budget(net, search_config.metric, search_config.target, search_config.round_to)
    recalibrate_bn(net, data, search_config.recalibrate_batches, train_config.batch_size, train_config.seed,
                   bool(trainer.channels_last), trainer.device, trainer.autocast)
    val = trainer.evaluate(data.val) if len(data.val) else {"acc": float("nan")}
    test = trainer.evaluate(data.test)
    dense = net.dense_cost
    summary = {
        "target": {"metric": search_config.metric, "ratio": search_config.target},
        "dense": {"macs": dense.macs, "params": dense.params},
        "before_projection": {"macs_ratio": before.macs / dense.macs, "params_ratio": before.params / dense.params},
        "final": {"macs": final.macs, "params": final.params, "macs_ratio": final.macs / dense.macs,
                  "params_ratio": final.params / dense.params},
        "accuracy": {"val": val["acc"], "test": test["acc"], "note": "hard supernet after projection, before finetune"},
        "gates": gate_summary(net),
        "config": {"train": asdict(train_config), "search": asdict(search_config)},
        "history": trainer.history,
    }
    if trainer.is_main:
        trainer.metadata["supernet"] = net.config()
        trainer.metadata["summary"] = {k: summary[k] for k in ("final", "accuracy")}
        trainer.save_checkpoint()
        atomic_write_json(summary, out / "search.json")
    return net, summary


def load_supernet(path: str | Path) -> Supernet:
    """Rebuild the supernet saved by :func:`search` (weights, gates and pinned state)."""
    state = safe_load(path, "a dnas_prune search checkpoint (RUN_DIR/supernet.pt)")
    meta = state.get("metadata", {}) if isinstance(state, dict) else {}
    if not isinstance(meta, dict) or meta.get("kind") != "dnas_prune.search" or "model" not in state:
        kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a search checkpoint (found {kind or 'an unknown file'}); "
                              "pass the supernet.pt written by `dnas-prune search`")
    try:
        return Supernet.from_config(meta["supernet"], state["model"]).eval()
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: supernet config and weights do not match ({str(exc).splitlines()[0]})") from None
