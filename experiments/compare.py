"""Peers side by side: dnas_prune and its ablations vs Torch-Pruning and uniform L1-norm filter pruning.

Every method starts from the same pretrained dense model and gets the same number of epochs with the same
recipe and data: ours = S search epochs + F finetune epochs; Torch-Pruning magnitude and uniform L1 prune at
once, then finetune S + F epochs; Torch-Pruning slimming trains S epochs with its L1 penalty on BN scales,
prunes, then finetunes F epochs. Each (method, target) row, finished or failed, is saved to ``OUT_DIR/rows/``
and skipped on a rerun (delete its file to redo it; an interrupted row resumes from its checkpoints); the
table (with missing rows marked "not run") is rewritten after every row.

An "ours" method is a set of :class:`~dnas_prune.SearchConfig` overrides (the same knobs as the
``dnas-prune search`` flags) run through :func:`dnas_prune.search`, with an optional search length and lr schedule
shared with the finetune. ``ours_1sched_taylor_1search_l1order`` is what ``dnas-prune run`` does by default;
``ours`` is the search before the Taylor prior (|BN gamma| prior, separate schedules), kept to read older rows.

    python experiments/compare.py --parent cifar10 --model cifar_resnet20 --targets 0.5 0.2 \
        --search-epochs 2 --finetune-epochs 3 --methods ours_1sched_taylor_1search_l1order tp_magnitude uniform_l1
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnas_prune.train.recipes import seed_everything
from dnas_prune.models.cost import count_cost
from dnas_prune.train.cifar import CifarData, load_cifar10, resolve_data_root
from dnas_prune.finalize import finalize
from dnas_prune.stages import finetune
from dnas_prune.models import create_model, spec_of
from dnas_prune.device.policy import resolve_precision
from dnas_prune.device.timing import compare_latency
from dnas_prune.io.pruned import load_pruned_with_metadata, save_pruned
from dnas_prune.search.landing import pinned_try
from dnas_prune.search.pruner import SearchConfig
from dnas_prune.search.hooks import load_supernet
from dnas_prune.io.pruned import load_pretrained
from dnas_prune.stages import search
from dnas_prune.train.loop import Trainer, TrainConfig, TrainHooks
from peers import cpu_line, as_plain, bisect_ratio, machine, make_tp_pruner, tp_prune_to_macs, uniform_l1

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    kind: str  # "ours" | "tp_magnitude" | "tp_slimming" | "uniform"
    search: dict[str, Any] = field(default_factory=dict)  # ours: SearchConfig overrides (target comes per row)
    search_epochs: int | None = None  # ours: overrides --search-epochs (the finetune gets the rest of the epochs)
    one_schedule: bool = False  # ours: the finetune continues the search's lr schedule instead of restarting one

    @property
    def metric(self) -> str:
        """What the row's target is a fraction of: "macs", or "latency" (measured on this machine, at the
        method's latency batch size)."""
        return self.search.get("metric", "macs")

    @property
    def target_label(self) -> str:
        if self.metric == "latency":
            return f"latency at batch {self.search.get('latency_batch_size', 1)}"
        return {"macs": "MACs", "params": "params"}[self.metric]

    def search_config(self, target: float) -> SearchConfig:
        # Every method named before --channel-order existed ran with each channel's own gate deciding; a method
        # that wants the filter-norm order says so.
        return SearchConfig(**{"target": target, "channel_order": "learned", **self.search})


def _methods(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


def latency_method(name: str, label: str, batch_size: int, **overrides: Any) -> Method:
    """A latency-budget row: the defaults of its time (Taylor prior, filter-norm channel order, one search epoch,
    one lr schedule) at ``batch_size``, with ``overrides`` on top."""
    return Method(name, label, "ours", {"prior": "taylor", "channel_order": "l1", "metric": "latency",
                                        "latency_batch_size": batch_size, **overrides},
                  search_epochs=1, one_schedule=True)


def latency_pair(variant: str, label: str, **overrides: Any) -> tuple[Method, Method]:
    """``ours_latency_bs1_{variant}`` (``label``) and the same at batch 64."""
    name = f"ours_latency_bs1_{variant}"
    return (latency_method(name, label, 1, **overrides),
            latency_method(f"ours_latency_bs64_{variant}", f"as {name}, at batch 64", 64, **overrides))


# Rows named in results from before the Pruner (e5a8561) ran the Lagrangian search: compare_summary.py keeps them
# apart by the report's "search" field, and a name reused here (ours, ours_g8, ...) means the search of today.
METHODS = _methods(
    Method("ours", "dnas_prune before the Taylor prior: |BN gamma| prior within groups, search and finetune under "
           "separate lr schedules", "ours", {"prior": "gamma"}),
    Method("ours_block_gates", "dnas_prune, a gate per residual block too (--block-gates)", "ours",
           {"block_gates": True}),
    Method("ours_g8", "dnas_prune, one gate per 8 channels (--channels-per-gate 8)", "ours", {"channels_per_gate": 8}),
    Method("ours_g8_1search", "dnas_prune, one gate per 8 channels, one search epoch (the finetune gets the rest)",
           "ours", {"channels_per_gate": 8}, search_epochs=1),
    Method("ours_1search", "as ours (|BN gamma| prior, separate lr schedules), one search epoch", "ours",
           {"prior": "gamma"}, search_epochs=1),
    Method("ours_1sched", "|BN gamma| prior, search and finetune under one lr schedule", "ours", {"prior": "gamma"},
           one_schedule=True),
    Method("ours_1sched_taylor", "dnas_prune, one lr schedule, gates re-ranked across groups by Taylor saliency per "
           "cost at warm-up's end (--prior taylor)", "ours", {"prior": "taylor"}, one_schedule=True),
    Method("ours_1sched_taylor_1search", "the defaults before --channel-order l1: Taylor prior, one search epoch, "
           "search and finetune under one lr schedule, each channel's own gate deciding", "ours", {"prior": "taylor"},
           search_epochs=1, one_schedule=True),
    Method("ours_1sched_taylor_1search_l1order", "dnas_prune defaults: Taylor prior, one search epoch, one lr schedule, "
           "and within each group the channels of largest filter L1 norm stay (--channel-order l1: the gates set how "
           "many); as `dnas-prune run` does", "ours", {"prior": "taylor", "channel_order": "l1"}, search_epochs=1,
           one_schedule=True),
    latency_method("ours_latency_bs1", "dnas_prune defaults with a latency budget (--target-latency T "
                   "--latency-batch-size 1): T is a fraction of the dense model's latency at batch 1, measured on this "
                   "machine with the threads the run has; a gate per residual block, ranked per unit of latency, "
                   "channel gates per MACs (--rank-cost auto); a block goes once its inner width would fall to one "
                   "gate's channels (--close-thin-blocks); on a CPU whose convolution kernels work in channel blocks "
                   "(16 on AVX-512, 8 on AVX2) every width is a whole number of them", 1),
    latency_method("ours_latency_bs64", "as ours_latency_bs1, at batch 64 (--latency-batch-size 64)", 64),
    # The variants below were run before widths came in channel blocks: --round-to 1 reproduces their rows (under
    # rounding no block is one gate wide, so --no-close-thin-blocks would search exactly as the default).
    *latency_pair("keepthin", "as ours_latency_bs1_free keeping blocks one channel wide (--no-close-thin-blocks), "
                  "the latency defaults before --close-thin-blocks, widths free (--round-to 1)",
                  close_thin_blocks=False, round_to=1),
    *latency_pair("respend", "as ours_latency_bs1 with thin blocks closed by the projection (--close-thin-blocks-at "
                  "projection): the search keeps them, the projection closes them and spends their latency on the "
                  "other blocks' channels", close_thin_blocks_at="projection"),
    *latency_pair("noblockgates", "as ours_latency_bs1_free without block gates (--no-block-gates: a block goes when "
                  "all its inner channels close), the latency defaults before block gates, widths free (--round-to 1)",
                  block_gates=False, round_to=1),
    latency_method("ours_latency_bs1_rankmacs", "as ours_latency_bs1_free with block gates ranked per MACs too "
                   "(--rank-cost macs)", 1, rank_cost="macs", round_to=1),
    latency_method("ours_latency_bs1_rankbudget", "as ours_latency_bs1_noblockgates with gates ranked per unit of "
                   "latency (--rank-cost budget), the first latency search", 1, rank_cost="budget", block_gates=False,
                   round_to=1),
    latency_method("ours_latency_bs64_rankbudget", "as ours_latency_bs64_noblockgates with gates ranked per unit of "
                   "latency (--rank-cost budget)", 64, rank_cost="budget", block_gates=False, round_to=1),
    latency_method("ours_latency_bs1_streams", "as ours_latency_bs1_noblockgates with the residual streams gated too "
                   "(--gate-streams): the stem, projection and every branch's last BN lose channels, as "
                   "Torch-Pruning's do", 1, gate_streams=True, block_gates=False, round_to=1),
    latency_method("ours_latency_bs64_streams", "as ours_latency_bs64_noblockgates with the residual streams gated "
                   "too (--gate-streams)", 64, gate_streams=True, block_gates=False, round_to=1),
    latency_method("ours_latency_bs64_stream1", "as ours_latency_bs64_noblockgates with the first stage's residual "
                   "stream gated too (the stem and layer1's block outputs, the widest activations; the later streams "
                   "stay whole)", 64, gate_streams=True, exclude=["layer[2-9].stream"], block_gates=False,
                   round_to=1),
    *latency_pair("free", "as ours_latency_bs1 with widths free of the CPU's channel blocks (--round-to 1): the "
                  "latency default for a table timed at one thread before whole blocks held at every thread count",
                  round_to=1),
    *latency_pair("round16", "as ours_latency_bs1 with every kept width a multiple of 16 channels (--round-to 16), "
                  "the channel block of AVX-512 convolution kernels: what the default does on AVX-512 since whole "
                  "blocks hold at every thread count", round_to=16),
    latency_method("ours_latency_bs64_round32", "as ours_latency_bs64 with every kept width a multiple of 32 "
                   "channels (--round-to 32), two AVX-512 channel blocks: fewer narrow branches, which a shared "
                   "host's busy spells slow most at several threads (busy_spells_round32.md)", 64, round_to=32),
    latency_method("ours_latency_bs64_thinstep", "as ours_latency_bs64 with a branch one channel block (--round-to "
                   "step) wide counted thin, so its block goes (--thin-branch step): no narrow branch on a wider "
                   "stream, the shapes a shared host's busy spells slow most at several threads (busy_spells.md)",
                   64, thin_branch="step"),
    Method("ours_1sched_taylor_l1order", "as the defaults (Taylor prior, one lr schedule, filter-norm channel order) "
           "with --search-epochs of search instead of one", "ours", {"prior": "taylor", "channel_order": "l1"},
           one_schedule=True),
    Method("ours_1sched_taylor_1search_streams", "as ours_1sched_taylor_1search (Taylor prior, one search epoch, one "
           "lr schedule) with the residual streams gated too (--gate-streams)", "ours", {"prior": "taylor", "gate_streams": True},
           search_epochs=1, one_schedule=True),
    Method("ours_1sched_taylor_fixed", "ablation: one lr schedule, Taylor prior, gates frozen after it (gate lr "
           "1e-6): a gradual global Taylor pruning without the learned gates", "ours",
           {"prior": "taylor", "gate_lr": 1e-6}, one_schedule=True),
    Method("ours_1sched_1search", "|BN gamma| prior, one search epoch, search and finetune under one lr schedule",
           "ours", {"prior": "gamma"}, search_epochs=1, one_schedule=True),
    Method("ours_round8", "dnas_prune, kept widths rounded to multiples of 8 (--round-to 8)", "ours", {"round_to": 8}),
    Method("ours_unnormalized", "dnas_prune, gate gradients not divided by cost (--no-cost-normalization)", "ours",
           {"cost_normalized": False}),
    Method("ours_streams", "dnas_prune, residual streams gated too (--gate-streams)", "ours", {"gate_streams": True}),
    Method("ours_adam", "dnas_prune, per-parameter Adam on the gates (--gate-optimizer adam)", "ours",
           {"gate_optimizer": "adam"}),
    Method("ours_bernoulli", "dnas_prune, bernoulli gates (--gate bernoulli)", "ours", {"gate": "bernoulli"}),
    Method("ours_hard_concrete", "dnas_prune, hard-concrete gates (--gate hard_concrete --prior gamma)", "ours",
           {"gate": "hard_concrete", "prior": "gamma"}),
    Method("tp_magnitude", "Torch-Pruning, group L2 magnitude", "tp_magnitude"),
    Method("tp_slimming", "Torch-Pruning, BN-scale slimming + sparse training", "tp_slimming"),
    Method("uniform_l1", "uniform L1-norm filter pruning", "uniform"),
)


class SlimmingHooks(TrainHooks):
    """Network Slimming's sparse training: L1 on BN scales, added to the gradients by Torch-Pruning."""

    def __init__(self, pruner: Any, reg: float) -> None:
        self.pruner, self.reg = pruner, reg

    def before_optimizer_step(self, trainer: Trainer) -> None:
        self.pruner.regularize(trainer.model, reg=self.reg)


def recipe(epochs: int, seed: int, distill_weight: float = 0.0, span: int = 0, start: int = 0) -> TrainConfig:
    """The one training recipe every method's search, sparse training and finetuning use (``distill_weight > 0``:
    each of them also distills from the dense parent; ``span``/``start``: this run is ``epochs`` of an lr schedule
    over ``span`` epochs, starting ``start`` epochs into it)."""
    return TrainConfig(epochs=epochs, lr=0.05, schedule="cosine", warmup_epochs=0.5, batch_size=256,
                       memory_format="auto", seed=seed, progress=False, distill_weight=distill_weight,
                       schedule_epochs=span, schedule_start=start)


def teacher_of(dense: nn.Module, args: argparse.Namespace) -> nn.Module | None:
    """A private copy of the parent to distill from (Trainer freezes and moves it), or None without distillation."""
    return copy.deepcopy(dense) if args.distill_weight > 0 else None


SHIPPED = "cifar10"  # --parent cifar10: the pretrained weights shipped with dnas_prune


def load_parent(parent: str, model_name: str, num_classes: int) -> tuple[nn.Module, str]:
    """The dense parent (a model file, or the shipped weights for ``--parent cifar10``) and the id the report keeps
    it by: the sha256 of its file, or of the shipped weights' tensors."""
    if parent == SHIPPED:
        model = create_model(model_name, num_classes=num_classes, weights=SHIPPED)
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return model, f"{SHIPPED} weights {digest.hexdigest()[:12]}"
    return load_pretrained(parent, model_name, num_classes), hashlib.sha256(Path(parent).read_bytes()).hexdigest()[:12]


def evaluate(model: nn.Module, data: CifarData, seed: int, work: Path) -> dict[str, float]:
    """Test (and val) accuracy of ``model`` under the recipe's precision (NCHW: Trainer.evaluate cannot
    choose the memory format itself, its timing probe needs autograd)."""
    trainer = Trainer(copy.deepcopy(model), data, replace(recipe(1, seed), memory_format="contiguous"), work)
    result = {"test_acc": trainer.evaluate(data.test)["acc"]}
    if len(data.val):
        result["val_acc"] = trainer.evaluate(data.val)["acc"]
    return result


def prune(name: str, dense: nn.Module, data: CifarData, target: float, args: argparse.Namespace,
          row_dir: Path, input_size: tuple[int, ...]) -> tuple[nn.Module, dict[str, Any], int]:
    """The pruned, not yet finetuned model, what to record about it, and the epochs it trained before pruning."""
    method = METHODS[name]
    dense_macs = count_cost(dense, input_size).macs
    target_macs = int(target * dense_macs)
    if method.kind != "ours" and method.metric != "macs":
        raise ValueError(f"{name}: peers prune to a MACs target only")
    if method.kind == "ours":
        search_epochs = method.search_epochs or args.search_epochs
        config = method.search_config(target)
        if (row_dir / "search" / "search.json").is_file():
            net = load_supernet(row_dir / "search" / "supernet.pt")
            summary = json.loads((row_dir / "search" / "search.json").read_text())
        else:
            span = args.search_epochs + args.finetune_epochs if method.one_schedule else 0
            net, summary = search(copy.deepcopy(dense), data,
                                  recipe(search_epochs, args.seed, args.distill_weight, span=span),
                                  config, row_dir / "search", resume=True, input_size=input_size)
        model = finalize(net.eval())
        info = {"overrides": dict(method.search), "search": asdict(config),
                "blocks_open": summary["gates"]["blocks_open"], "blocks_total": summary["gates"]["blocks_total"],
                "max_rel_deviation_after_warmup": summary["steering"]["max_rel_deviation_after_warmup"],
                "projection_moved": summary["projection"]["moved"],
                "pre_finetune_test_acc": summary["accuracy"]["test"]}
        if summary["projection"].get("measured"):  # a latency budget: each landing try's predicted and measured ratio
            info["latency_landing"] = summary["projection"]["measured"]
        return model, info, search_epochs
    if method.kind == "uniform":
        model, _, info = bisect_ratio(lambda r: uniform_l1(dense, r), target_macs, input_size)
        return model, {**info, **_pre(model, data, args.seed, row_dir)}, 0
    tp_method = method.kind.removeprefix("tp_")
    model = copy.deepcopy(dense)
    pruner = make_tp_pruner(model, input_size, tp_method)
    before = 0
    extra: dict[str, Any] = {}
    if tp_method == "slimming":
        trainer = Trainer(model, data, recipe(args.search_epochs, args.seed, args.distill_weight), row_dir / "sparse",
                          callbacks=[SlimmingHooks(pruner, args.slimming_reg)], checkpoint_name="sparse.pt",
                          teacher=teacher_of(dense, args))
        trainer.fit(resume=trainer.checkpoint_path.is_file())
        model.to(memory_format=torch.contiguous_format)
        before, extra = args.search_epochs, {"reg": args.slimming_reg}
    info = tp_prune_to_macs(model, pruner, target_macs, input_size, tp_method)
    model = as_plain(model)
    return model, {**info, **extra, **_pre(model, data, args.seed, row_dir)}, before


def _pre(model: nn.Module, data: CifarData, seed: int, row_dir: Path) -> dict[str, float]:
    return {"pre_finetune_test_acc": evaluate(model, data, seed, row_dir)["test_acc"]}


def run_row(name: str, target: float, dense: nn.Module, data: CifarData, args: argparse.Namespace,
            input_size: tuple[int, ...]) -> dict[str, Any]:
    """Prune (or reload the pruned model), finetune (resuming), evaluate; returns the row."""
    row_dir = args.out_dir / f"{name}@{target:g}"
    start = time.perf_counter()
    seed_everything(args.seed)
    pruned_path = row_dir / "pruned.pt"
    if pruned_path.is_file():
        model, meta = load_pruned_with_metadata(pruned_path)
        info, before = meta["info"], meta["epochs_before_finetune"]
    else:
        model, info, before = prune(name, dense, data, target, args, row_dir, input_size)
        save_pruned(model, pruned_path, input_size=list(input_size), info=info, epochs_before_finetune=before)
    finetune_epochs = args.search_epochs + args.finetune_epochs - before
    seed_everything(args.seed)
    total = args.search_epochs + args.finetune_epochs
    schedule = {"span": total, "start": before} if METHODS[name].one_schedule else {}
    trainer, metrics = finetune(pruned_path, data, recipe(finetune_epochs, args.seed, args.distill_weight, **schedule),
                                row_dir / "finetune", data_root=args.data, resume=True, teacher=teacher_of(dense, args))
    cost, dense_cost = count_cost(trainer.model.eval(), input_size), count_cost(dense, input_size)
    return {
        "method": name, "label": METHODS[name].label, "target": target, "target_metric": METHODS[name].metric,
        **({"target_macs": target} if METHODS[name].metric == "macs" else {}), "status": "done",
        "test_acc": metrics["test_acc"], "val_acc": metrics.get("val_acc"),
        "pre_finetune_test_acc": info.get("pre_finetune_test_acc"),
        "macs": cost.macs, "params": cost.params,
        "macs_ratio": cost.macs / dense_cost.macs, "params_ratio": cost.params / dense_cost.params,
        "epochs": {"before_finetune": before, "finetune": finetune_epochs},
        "seed": args.seed, "info": info, "wall_seconds": round(time.perf_counter() - start, 1),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model_file": str(row_dir / "finetune" / "pruned.pt"),
    }


def latency_table(target: float, rows: dict[str, dict], dense: nn.Module, args: argparse.Namespace,
                  input_size: tuple[int, ...]) -> dict[str, Any]:
    """Dense and every finished row of ``target`` timed in one interleaved call (cached while the set is unchanged)."""
    done = [n for n in args.methods if rows.get(f"{n}@{target:g}", {}).get("status") == "done"]
    cache = args.out_dir / f"latency@{target:g}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["methods"] == done and cached["bench"]["threads"] == args.latency_threads:
            return cached
    models = {"dense": dense}
    for n in done:
        models[n] = load_pruned_with_metadata(rows[f"{n}@{target:g}"]["model_file"])[0]
    bench = compare_latency(models, input_size, (1, 64), threads=args.latency_threads, max_seconds=args.latency_seconds)
    result = {"methods": done, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "bench": bench}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return json.loads(cache.read_text())  # batch-size keys as strings, like a reloaded cache


def markdown(report: dict[str, Any]) -> str:
    m, dense = report["machine"], report["dense"]
    lines = [
        "# Peers side by side: same dense model, same epochs, same recipe", "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; machine: {cpu_line(m)}, {m['logical_cpus']} logical CPUs, load average "
        f"{m['load_average'][0]:.1f} when the report was written, "
        f"torch {m['torch']}, latency with {report.get('threads', '?')} torch thread(s)",
        f"- model {report['model']} from `{report['dense_path']}` (parent {report.get('parent', '?')}): "
        f"test acc {dense['test_acc']:.4f}, "
        f"{dense['macs'] / 1e6:.2f} M MACs, {dense['params'] / 1e6:.4f} M params"
        + (f"; series: {report['series']}" if report.get("series") else ""),
        f"- epochs: ours = {report['search_epochs']} search + {report['finetune_epochs']} finetune unless a row's notes "
        "say otherwise (`search+finetune ep`); TP magnitude and "
        f"uniform L1 = prune at once + {report['search_epochs'] + report['finetune_epochs']} finetune; TP slimming = "
        f"{report['search_epochs']} sparse-training + {report['finetune_epochs']} finetune. Recipe: SGD lr 0.05, cosine, "
        "0.5 warm-up epoch, batch 256, precision auto (bf16 where the CPU runs it natively, else fp32; "
        f"{report.get('precision', 'bf16')} on the machine that wrote this page), label smoothing 0.1"
        + (f"; every method distills from the dense model (weight {report['recipe']['distill_weight']}, temperature "
           f"{report['recipe']['distill_temperature']}) in all its epochs" if report["recipe"].get("distill_weight")
           else ""),
        f"- data: CIFAR-10 `{report['data']}`, {report['train_images']} training images, "
        f"{report['val_images']} val held out of train, {report['test_images']} test",
        f"- seed {report['seed']}, **one seed per row in this file** (`--seed S` writes `compare_MODEL_seedS`; "
        "`compare_summary.py` merges the seeds into `compare.md`); differences smaller than the seed-to-seed "
        "spread mean nothing",
        "- accuracy: test top-1 after finetuning; \"before FT\": right after pruning (ours: the searched, "
        "projected supernet with recalibrated BN)",
        "- latency: median forward ms, dense and every finished row of a table timed in one interleaved "
        "`profile.compare_latency` call (memory format per model: faster of NCHW / channels_last); "
        "speed-up = dense / model",
        "",
    ]
    for target in report["targets"]:
        table = report["tables"][f"{target:g}"]
        bench = table.get("latency", {}).get("bench", {})
        kinds = " / ".join(dict.fromkeys(METHODS[n].target_label for n in report["methods"] if n in METHODS))
        lines += [f"## Target {target:g} of dense {kinds}", "",
                  "| method | test acc | before FT | MACs (M) | MACs ratio | params (M) | bs1 ms | bs1 speed-up | "
                  "bs64 ms | bs64 speed-up | notes |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        if "dense" in bench.get("models", {}):
            lines.append(_latency_row("dense", f"{dense['test_acc']:.4f} | – | {dense['macs'] / 1e6:.2f} | 1.000 | "
                                      f"{dense['params'] / 1e6:.4f}", bench, ""))
        for name in report["methods"]:
            row = table["rows"].get(name)
            if row is None or row["status"] != "done":
                status = "not run" if row is None else f"failed: {row['error']}"
                lines.append(f"| {name} | {status} | | | | | | | | | |")
                continue
            pre = row["pre_finetune_test_acc"]
            cells = (f"{row['test_acc']:.4f} | {'–' if pre is None else f'{pre:.4f}'} | {row['macs'] / 1e6:.2f} | "
                     f"{row['macs_ratio']:.3f} | {row['params'] / 1e6:.4f}")
            lines.append(_latency_row(name, cells, bench, _notes(row)))
        lines.append("")
    return "\n".join(lines)


def _latency_row(name: str, cells: str, bench: dict, notes: str) -> str:
    out = f"| {name} | {cells} |"
    for bs in ("1", "64"):
        entry = bench.get("models", {}).get(name)
        if entry is None:
            out += " – | – |"
        else:
            out += f" {entry['latency'][bs]['median_ms']:.3f} | {bench['ratios'][name][bs]['speedup']:.2f}x |"
    return out + f" {notes} |"


def epoch_split(row: dict) -> str:
    """A row's own epochs, ``search+finetune`` (a method may search fewer than the page's --search-epochs)."""
    return f"{row['epochs']['before_finetune']}+{row['epochs']['finetune']}"


def _notes(row: dict) -> str:
    info = row["info"]
    parts = [f"{epoch_split(row)} ep"]
    if "blocks_open" in info:
        parts.append(f"{info['blocks_open']}/{info['blocks_total']} blocks")
    if "max_rel_deviation_after_warmup" in info:
        parts.append(f"hard cost within {100 * info['max_rel_deviation_after_warmup']:.1f} % of the ramp")
    if "ratio" in info:
        parts.append(f"inner ratio {info['ratio']:.3f}")
    if "steps" in info:
        parts.append(f"{info['steps']} TP steps")
    if info.get("latency_landing"):
        landed = pinned_try(info["latency_landing"])
        parts.append(f"landed at measured latency {landed['measured_ratio']:.3f} of dense "
                     f"(table {landed['predicted_ratio']:.3f})")
    if "macs_match" in info and not info["macs_match"]:
        parts.append(f"MACs {info['macs_vs_target']:.3f}x target, NOT within 1 %")
    return ", ".join(parts)


def write_report(args: argparse.Namespace, rows: dict[str, dict], dense: nn.Module, dense_acc: dict,
                 data: CifarData, input_size: tuple[int, ...], command: str) -> None:
    cost = count_cost(dense, input_size)
    tables, threads = {}, None
    for target in args.targets:
        latency = latency_table(target, rows, dense, args, input_size)
        threads = latency["bench"]["threads"]
        tables[f"{target:g}"] = {"rows": {n: rows[f"{n}@{target:g}"] for n in args.methods if f"{n}@{target:g}" in rows},
                                 "latency": latency}
    report = {
        "command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "threads": threads, "model": args.model, "dense_path": args.parent,
        "precision": resolve_precision("auto", torch.device("cpu")),  # the recipe's "auto" on the machine writing this
        "parent": args.parent_id, "series": args.series, "search": "pruner",
        "data": args.data, "train_images": len(data.train),
        "val_images": len(data.val), "test_images": len(data.test), "seed": args.seed, "seeds": [args.seed],
        "search_epochs": args.search_epochs, "finetune_epochs": args.finetune_epochs,
        "recipe": {k: v for k, v in asdict(recipe(1, args.seed, args.distill_weight)).items() if k != "epochs"},
        "targets": args.targets, "methods": args.methods,
        "dense": {"macs": cost.macs, "params": cost.params, **dense_acc}, "tables": tables,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", "--dense", dest="parent", default=SHIPPED,
                        help="the dense model every method starts from: a `dnas-prune train` model.pt (or a "
                        f"state_dict of --model), or `{SHIPPED}` for the pretrained weights shipped with dnas_prune "
                        "(default: %(default)s)")
    parser.add_argument("--model", default="cifar_resnet20",
                        help="the parent's architecture (checked against a model file; names a state_dict's or the "
                        "shipped weights'; default: %(default)s)")
    parser.add_argument("--data", default=None, help="CIFAR-10 root (default: $DNAS_PRUNE_DATA)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.2], help="MACs fractions of dense")
    parser.add_argument("--search-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="run in this order (each over all targets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, help="use only N training images (smoke runs)")
    parser.add_argument("--distill-weight", type=float, default=0.0,
                        help="every method's training after the dense model also distills from it with this weight "
                        "(temperature 4); use a --series name for such runs")
    parser.add_argument("--slimming-reg", type=float, default=1e-4, help="L1 on BN scales (Network Slimming, CIFAR)")
    parser.add_argument("--latency-seconds", type=float, default=2.0, help="timed loop per model and batch size")
    parser.add_argument("--latency-threads", type=int, default=1,
                        help="torch threads for latency (default 1: on a shared, overloaded CPU a second OpenMP "
                        "thread that gets descheduled stalls every op)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/compare"), help="checkpoints and finished rows")
    parser.add_argument("--results", type=Path, help="writes RESULTS.json and RESULTS.md (default: "
                        "experiments/results/compare_MODEL, with _seedS for a seed other than 0; "
                        "experiments/compare_summary.py merges them into compare.md)")
    parser.add_argument("--series", default="", help="names a set of runs that compare_summary.py must keep apart from "
                        "other runs of the same parent (e.g. runs made after a change to the search)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the saved rows (missing ones marked \"not run\"); train nothing")
    args = parser.parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["compare.py", *argv])
    if args.results is None:
        args.results = RESULTS / (f"compare_{args.model}" + (f"_seed{args.seed}" if args.seed else ""))

    args.data = str(resolve_data_root(args.data, download=False))
    data = load_cifar10(args.data, limit_train=args.limit_train, seed=args.seed)
    dense, args.parent_id = load_parent(args.parent, args.model, data.num_classes)
    dense.eval()
    if spec_of(dense) != spec_of(create_model(args.model, num_classes=data.num_classes)):
        parser.error(f"{args.parent} is not a dense {args.model}: pass --model with its architecture")
    input_size = tuple(data.train.images.shape[1:])
    rows_dir = args.out_dir / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    dense_file = args.out_dir / "dense.json"
    if not dense_file.is_file():
        dense_file.write_text(json.dumps(evaluate(dense, data, args.seed, args.out_dir / "dense")) + "\n")
    dense_acc = json.loads(dense_file.read_text())
    rows = {p.stem: json.loads(p.read_text()) for p in rows_dir.glob("*.json")}
    write_report(args, rows, dense, dense_acc, data, input_size, command)
    if args.report_only:
        return 0
    for name in args.methods:
        for target in args.targets:
            key = f"{name}@{target:g}"
            if key in rows:
                print(f"{key}: {rows[key]['status']} already, skipped (delete {rows_dir / key}.json to redo)", flush=True)
                continue
            print(f"=== {key} ({METHODS[name].label})", flush=True)
            try:
                rows[key] = run_row(name, target, dense, data, args, input_size)
                print(f"{key}: test acc {rows[key]['test_acc']:.4f}, MACs ratio {rows[key]['macs_ratio']:.3f}, "
                      f"{rows[key]['wall_seconds']:.0f}s", flush=True)
            except Exception as exc:  # one failing peer must not cost the other rows
                traceback.print_exc()
                rows[key] = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            (rows_dir / f"{key}.json").write_text(json.dumps(rows[key], indent=2) + "\n")
            write_report(args, rows, dense, dense_acc, data, input_size, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
