"""The stages of a pruning run, each written once: train, search, finalize, finetune, export and report.

The CLI commands, the TOML pipeline and the experiments call these functions rather than writing their own stage
bodies, so a stage writes the same files (and the same metadata in them) whichever way it is run. Each stage
reads and writes files in a run directory; TensorBoard logs go to ``OUT/tb`` when asked for.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch import nn

from .device.timing import latency_progress
from .errors import DnasPruneError
from .finalize import final_decisions, finalize as finalize_net
from .io.checkpoint import atomic_write_json, check_writable_dir, safe_load
from .io.export import check_written, export as export_model
from .io.pruned import default_input_size, load_pruned_with_metadata, save_pruned
from .models import spec_of
from .models.cost import count_cost
from .report.monitor import MonitorHooks, log_text
from .report.report import write_report
from .report.summary import layer_widths, width_table
from .search.hooks import SearchHooks, gate_summary, load_supernet, load_supernet_with_metadata, recalibrate_bn
from .search.landing import pinned_try
from .search.latency import LatencyTable, table_for_settings
from .search.pruner import Pruner, SearchConfig
from .search.supernet import Supernet
from .train.data import TrainingData
from .train.loop import TrainConfig, Trainer, TrainHooks


@contextmanager
def _monitor(out: Path, enabled: bool, pruner: Pruner | None = None) -> Iterator[list[MonitorHooks]]:
    """TensorBoard logging to ``out/tb`` for one training stage: the callbacks to add (none if not ``enabled``)."""
    monitors = [MonitorHooks(out / "tb", pruner=pruner)] if enabled else []
    try:
        yield monitors
    finally:
        for monitor in monitors:
            monitor.close()


CHECKPOINTS = {"train": "train.pt", "search": "supernet.pt", "finetune": "finetune.pt"}  # each stage's, in OUT


def check_out(stage: str, out: str | Path, resume: bool, strict: bool = False) -> None:
    """Refuse to start ``stage`` (train, search or finetune) over a run of it already in ``out``: its files would be
    overwritten; or in an ``out`` that cannot be written. With ``strict`` (the CLI) also refuse to resume one that
    is not there: a mistyped --out would silently start afresh (the pipeline resumes whatever is there)."""
    checkpoint = Path(out) / CHECKPOINTS[stage]
    if strict and resume and not checkpoint.is_file():
        raise DnasPruneError(f"{checkpoint}: no such file (expected a dnas_prune {stage} checkpoint); check --out, "
                             f"or drop --resume to start a {stage} run")
    check_writable_dir(out)
    if checkpoint.is_file() and not resume:
        raise DnasPruneError(f"{out} already holds a {stage} run ({checkpoint.name}); resume it (--resume) or choose "
                             "another --out")


def inference_of(data: TrainingData) -> dict[str, Any]:
    """``data.inference()`` (classes and preprocessing, what model files record), or nothing for a user's own data
    object that does not have it: the file then says nothing rather than something wrong."""
    inference = getattr(data, "inference", None)
    return inference() if callable(inference) else {}


# ---------------------------------------------------------------------------------------------- dense
def train(model: nn.Module, data: TrainingData, config: TrainConfig, out_dir: str | Path, *,
          metadata: dict[str, Any] | None = None, resume: bool = False, tensorboard: bool = False,
          hparams: dict[str, Any] | None = None, callbacks: Sequence[TrainHooks] = ()) -> tuple[Trainer, dict]:
    """Train a dense model; writes ``OUT/train.pt`` (resumable, every epoch) and ``OUT/model.pt``. Returns the
    trainer and the final metrics. ``resume`` continues from ``OUT/train.pt``, which must exist."""
    out = Path(out_dir)
    check_out("train", out, resume)
    with _monitor(out, tensorboard) as monitors:
        trainer = Trainer(model, data, config, out, callbacks=[*callbacks, *monitors], metadata=metadata)
        metrics = trainer.fit(resume=resume)
        for monitor in monitors:
            monitor.log_training_hparams(config, hparams or {}, metrics)
    if trainer.is_main:
        _save_dense(trainer, data, config, metrics, out)
    return trainer, metrics


def adopt(model: nn.Module, data: TrainingData, config: TrainConfig, out_dir: str | Path, *, source: str,
          metadata: dict[str, Any] | None = None) -> dict:
    """The dense stage for a parent trained elsewhere: evaluate it and write ``OUT/model.pt`` as :func:`train`
    does. Returns its metrics."""
    out = Path(out_dir)
    trainer = Trainer(model, data, config, out, metadata=metadata)
    metrics = {"test_acc": trainer.evaluate(data.test)["acc"], "source": source}
    if len(data.val):
        metrics["val_acc"] = trainer.evaluate(data.val)["acc"]
    if trainer.is_main:
        _save_dense(trainer, data, config, metrics, out)
    return metrics


def _save_dense(trainer: Trainer, data: TrainingData, config: TrainConfig, metrics: dict, out: Path) -> None:
    save_pruned(trainer.final_model.eval(), out / "model.pt", kind="dense", input_size=list(data.train.input_size),
                metrics=metrics, config=asdict(config), **inference_of(data))


# ---------------------------------------------------------------------------------------------- search
def search(
    model: nn.Module,
    data: TrainingData,
    train_config: TrainConfig,
    search_config: SearchConfig,
    out_dir: str | Path,
    resume: bool = False,
    input_size: tuple[int, int, int] | None = None,
    callbacks: Sequence[TrainHooks] = (),
    tensorboard: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Supernet, dict]:
    """Search ``model`` under the budget; writes ``OUT/supernet.pt`` (resumable, every epoch) and
    ``OUT/search.json``, and returns the projected supernet and that summary. ``log`` hears a latency landing's
    tries and timings (with ``train_config.progress``).

    ``callbacks`` run after the search's own (which steps the gates), then TensorBoard's with ``tensorboard``
    (to ``OUT/tb``).
    With ``train_config.distill_weight > 0`` the supernet also learns from the dense model it starts from (a
    frozen copy), as the finetune does.
    """
    if train_config.ema_decay > 0:
        raise DnasPruneError(f"ema_decay {train_config.ema_decay} applies to dense training and finetuning, not the "
                             "search, whose gates and BN statistics are fitted on the live weights; set it to 0 here")
    out = Path(out_dir)
    checkpoint = out / CHECKPOINTS["search"]
    check_out("search", out, resume)
    if resume and checkpoint.is_file() and (out / "search.json").is_file():
        return _finished_search(checkpoint, train_config, search_config, log)
    input_size = input_size or data.train.input_size
    teacher = copy.deepcopy(model) if train_config.distill_weight > 0 else None
    steps = train_config.epochs * (len(data.train) // train_config.batch_size)
    if steps < 1:  # as the Trainer says it, before the Pruner asks for a positive step count
        raise DnasPruneError(f"{len(data.train)} training images do not fill one batch of {train_config.batch_size}")
    resume = resume and checkpoint.is_file()
    table = None
    if resume and search_config.metric == "latency":  # the latency model it began with, as it began
        saved = safe_load(checkpoint, "a dnas_prune search checkpoint").get("metadata") or {}
        search_config = _resumed_ms_target(search_config, saved)
        table = _resumed_latency_table(saved)
    pruner = Pruner(model, input_size, total_steps=steps, config=search_config, latency=table)
    net, search_config = pruner.net, pruner.config  # a ms latency target is resolved to a fraction of dense
    metadata = {"kind": "dnas_prune.search", "supernet": net.config(), "search": asdict(search_config),
                "inference": inference_of(data)}  # finalize passes it on to the pruned file
    with _monitor(out, tensorboard, pruner) as monitors:
        trainer = Trainer(net, data, train_config, out, callbacks=[SearchHooks(pruner), *callbacks, *monitors],
                          checkpoint_name="supernet.pt", metadata=metadata, teacher=teacher)
        trainer.fit(resume=resume, evaluate_last=False)  # _land evaluates the network the projection pins
        summary = _land(trainer, pruner, data, train_config, search_config, log)
        for monitor in monitors:
            monitor.log_search_summary(summary)
    if trainer.is_main:
        trainer.metadata["supernet"] = net.config()
        trainer.metadata["summary"] = {k: summary[k] for k in ("final", "accuracy")}
        trainer.save_checkpoint()
        atomic_write_json(summary, out / "search.json")
    return net, summary


def search_line(summary: dict) -> str:
    """The search's result in one line; for a latency budget, first the latency the landing timed and the table's."""
    final, measured = summary["final"], summary["projection"].get("measured")
    latency = ""
    if measured:
        timed, target_ms = pinned_try(measured), summary.get("config", {}).get("search", {}).get("target_ms")
        target = f"{target_ms:g} ms" if target_ms is not None else f"{summary['target']['ratio']:g}"
        in_ms = f"{timed['measured_ms']:.3g} ms, " if target_ms is not None and "measured_ms" in timed else ""
        latency = (f"latency {in_ms}{timed['measured_ratio']:.3f} of dense as timed here at batch "
                   f"{final['latency_batch_size']} (target {target}; the table says {final['latency_ratio']:.3f}), ")
    return (f"{latency}{final['macs_ratio']:.4f} of dense MACs, {final['params_ratio']:.4f} of params, "
            f"{summary['gates']['blocks_open']}/{summary['gates']['blocks_total']} blocks; "
            f"hard-supernet test acc {summary['accuracy']['test']:.4f}")


def _finished_search(checkpoint: Path, train_config: TrainConfig, search_config: SearchConfig,
                     log: Callable[[str], None]) -> tuple[Supernet, dict]:
    """A resume of a search that has finished (``search.json`` is written last): its projected supernet and
    summary, as the search returned them, if it ran with these settings; else a one-line refusal, since a finished
    search cannot continue under others (its gates are pinned)."""
    state = safe_load(checkpoint, "a dnas_prune search checkpoint")
    saved = (state.get("metadata") or {}).get("search") or {}
    skip = {"target_ms_dense"} | ({"target"} if search_config.target_ms is not None else set())
    differ = [k for k, v in asdict(search_config).items()
              if k in saved and k not in skip and v is not None and v != saved[k]]
    if (state.get("config") or {}).get("epochs") != train_config.epochs:
        differ.append("epochs")
    if differ:
        raise DnasPruneError(f"{checkpoint.parent} holds a finished search with other settings ({', '.join(differ)}); "
                             "choose another --out")
    log(f"{checkpoint.parent} holds this search, finished: nothing to resume")
    return load_supernet(checkpoint), json.loads((checkpoint.parent / "search.json").read_text())


def _resumed_ms_target(config: SearchConfig, saved: dict[str, Any]) -> SearchConfig:
    """A ms latency target resumes against the dense timing it was resolved with (``saved``: the checkpoint's
    metadata): timing the dense model again would move the fraction and break an exact resume."""
    search = saved.get("search") or {}
    if config.target_ms is None or search.get("target_ms") != config.target_ms or not search.get("target_ms_dense"):
        return config
    return replace(config, target_ms_dense=float(search["target_ms_dense"]))


def _resumed_latency_table(saved: dict[str, Any]) -> LatencyTable | None:
    """The table of the settings the checkpoint's metadata (``saved``) recorded, from the cache or rebuilt with
    them, not whatever the staleness check of a new search would pick today: the budget's numbers must not move."""
    settings = ((saved.get("supernet") or {}).get("budget") or {}).get("latency_table")
    return table_for_settings(settings) if settings else None


def _land(trainer: Trainer, pruner: Pruner, data: TrainingData, train_config: TrainConfig,
          search_config: SearchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """After the search's training: project onto the budget, refit BN, evaluate; the summary of search.json."""
    net = pruner.net
    before_ratios = pruner.hard_ratios_now()
    projection = pruner.project(log=log if trainer.is_main and train_config.progress else None)
    final = net.hard_cost()
    latency = {}
    if search_config.metric == "latency":
        latency = {"latency_ratio": pruner.hard_ratios["latency"], "latency_batch_size": search_config.latency_batch_size}
    recalibrate_bn(net, data, search_config.recalibrate_batches, train_config.batch_size, train_config.seed,
                   bool(trainer.channels_last), trainer.device, trainer.autocast)
    val = trainer.evaluate(data.val) if len(data.val) else {"acc": float("nan")}
    test = trainer.evaluate(data.test)
    dense = net.dense_cost
    return {
        "target": {"metric": search_config.metric, "ratio": search_config.target},
        "dense": {"macs": dense.macs, "params": dense.params},
        "before_projection": {f"{k}_ratio": v for k, v in before_ratios.items()},
        "projection": {"metric": search_config.metric, **projection},
        "steering": pruner.summary(),
        "final": {"macs": final.macs, "params": final.params, "macs_ratio": final.macs / dense.macs,
                  "params_ratio": final.params / dense.params, **latency},
        "accuracy": {"val": val["acc"], "test": test["acc"], "note": "hard supernet after projection, before finetune"},
        "gates": gate_summary(net),
        "config": {"train": asdict(train_config), "search": asdict(search_config)},
        "history": trainer.history,
    }


def _refuse_to_overwrite(source: str | Path, output: str | Path) -> None:
    """A stage never writes over the file it reads: that file (a search, a pruned model) would be lost."""
    if Path(output).exists() and Path(output).resolve() == Path(source).resolve():
        raise DnasPruneError(f"{output} is also the input: writing it would destroy {source}; choose another output")


# ---------------------------------------------------------------------------------------------- finalize
def finalize(checkpoint: str | Path, output: str | Path, *, round_to: int | None = None,
             tensorboard: bool = False) -> tuple[nn.Module, str]:
    """The plain pruned model of a search checkpoint (``RUN_DIR/supernet.pt``), written to ``output`` with its
    dense cost, the search's accuracy and the kept width of every layer. Returns the model and the Markdown
    table of dense vs pruned widths (also logged next to the search's TensorBoard logs with ``tensorboard``)."""
    checkpoint = Path(checkpoint)
    _refuse_to_overwrite(checkpoint, output)
    if round_to is not None and round_to < 1:
        raise DnasPruneError(f"--round-to must be a positive integer, got {round_to}")
    net, metadata = load_supernet_with_metadata(checkpoint)
    with final_decisions(net, round_to):
        model, layers = finalize_net(net), layer_widths(net)
    summary_path = checkpoint.with_name("search.json")
    accuracy = json.loads(summary_path.read_text()).get("accuracy", {}) if summary_path.is_file() else {}
    save_pruned(model, output, input_size=list(net.input_size), dense_macs=net.dense_cost.macs,
                dense_params=net.dense_cost.params, search_accuracy=accuracy.get("test"), layers=layers,
                **metadata.get("inference", {}))
    table = width_table(spec_of(net.model), spec_of(model), net.dense_cost, count_cost(model, net.input_size))
    if tensorboard:
        log_text(checkpoint.parent / "tb", "architecture/finalized", table)
    return model, table


# ---------------------------------------------------------------------------------------------- finetune
def finetune(pruned_path: str | Path, data: TrainingData, config: TrainConfig, out_dir: str | Path, *,
             data_root: str, resume: bool = False, teacher: nn.Module | None = None, tensorboard: bool = False,
             callbacks: Sequence[TrainHooks] = ()) -> tuple[Trainer, dict]:
    """Train the model in ``pruned_path`` further; writes ``OUT/finetune.pt`` (resumable) and ``OUT/pruned.pt``
    (the same metadata plus the new accuracies). Returns the trainer and its final metrics.

    ``teacher`` (usually the dense parent) is distilled from when ``config.distill_weight > 0``."""
    out = Path(out_dir)
    _refuse_to_overwrite(pruned_path, out / "pruned.pt")
    check_out("finetune", out, resume)
    model, metadata = load_pruned_with_metadata(pruned_path)
    with _monitor(out, tensorboard) as monitors:
        trainer = Trainer(model.train(), data, config, out, callbacks=[*callbacks, *monitors],
                          checkpoint_name="finetune.pt", metadata={"kind": "dnas_prune.finetune",
                                                                   "source": str(pruned_path)}, teacher=teacher)
        metrics = trainer.fit(resume=resume and trainer.checkpoint_path.is_file())
        for monitor in monitors:
            monitor.log_training_hparams(config, {"source": str(pruned_path)}, metrics)
    if trainer.is_main:
        resized = list(data.train.input_size) != list(metadata.get("input_size") or data.train.input_size)
        drop = ("macs", "params") + (("dense_macs", "dense_params") if resized else ())  # counted at the old size
        keep = {k: v for k, v in metadata.items() if k not in drop}
        save_pruned(trainer.final_model.eval(), out / "pruned.pt",
                    **{**keep, "input_size": list(data.train.input_size), **inference_of(data),  # as finetuned
                       "dataset": data_root, "test_acc": metrics["test_acc"], "val_acc": metrics.get("val_acc"),
                       "finetune_epochs": config.epochs})
    return trainer, metrics


# ---------------------------------------------------------------------------------------------- export
def export(pruned_path: str | Path, output: str | Path, fmt: str, *, input_size: Sequence[int] | None = None,
           batch_size: int = 1, dynamic_batch: bool = True, check: bool = True) -> tuple[Path, dict | None]:
    """Export the model in ``pruned_path`` (at the input size stored in the file unless given, with the file's
    classes and preprocessing in the export's info); with ``check``, run the export against the model on a batch it
    was not traced with, and delete it if they differ. Returns the path and the check's result (None without
    ``check``)."""
    _refuse_to_overwrite(pruned_path, output)
    model, metadata = load_pruned_with_metadata(pruned_path)
    input_size = tuple(input_size or metadata.get("input_size") or default_input_size(spec_of(model)))
    info = {key: metadata[key] for key in ("classes", "preprocess") if key in metadata}
    path = export_model(model, output, fmt, input_size, batch_size, dynamic_batch=dynamic_batch, check=False,
                        info=info)
    return path, check_written(path, model, fmt, input_size, batch_size, dynamic_batch) if check else None


# ---------------------------------------------------------------------------------------------- report
SLOW_SPEEDUP = 1.1  # below this measured speed-up the summary says why a cost budget may not buy speed


def run_summary(result: dict[str, Any], pruned_path: str | Path, exports: dict[str, str],
                out_dir: str | Path) -> str:
    """The lines a run ends with: dense vs pruned accuracy, cost, measured speed-up and where the files are. When a
    MACs or params budget left the model barely faster at some batch size, one more line says what to do."""
    d, p = result["dense"], result["pruned"]
    speedups = {bs: ratio["speedup"] for bs, ratio in result["latency"]["ratios"]["pruned"].items()}
    crowded = result["latency"].get("warning")  # other processes used the cores: said here
    noisy = any(lat.get("warning") for entry in result["latency"]["models"].values()  # said above, per timing
                for lat in entry["latency"].values())
    lines = [
        "summary:",
        f"  test accuracy  dense {d['test_acc']:.2%} -> pruned {p['test_acc']:.2%} "
        f"({100 * (p['test_acc'] - d['test_acc']):+.2f} points)",
        f"  MACs           {d['macs'] / 1e6:.2f} M -> {p['macs'] / 1e6:.2f} M ({p['macs_ratio']:.1%} of dense)",
        f"  params         {d['params'] / 1e3:.1f} k -> {p['params'] / 1e3:.1f} k ({p['params_ratio']:.1%})",
        "  speed-up       " + ", ".join(f"{x:.2f}x at batch {bs}" for bs, x in speedups.items())
        + " (measured side by side here)",
        f"  files          {pruned_path} (pruned model), {', '.join(exports.values()) or 'no exports'}, "
        f"{Path(out_dir) / 'report.md'} (report, figures beside it)",
    ]
    slow = [bs for bs, x in speedups.items() if x < SLOW_SPEEDUP]
    if crowded:  # then a small speed-up says nothing of the budget
        lines.append(f"  warning        latency timings not to be trusted: {crowded}")
    elif slow and not noisy and result["target"]["metric"] != "latency":
        metric, batches = result["target"]["metric"], ", ".join(map(str, slow))
        lines.append(f"  note           little speed-up at batch {batches}: a {metric} budget does not price how this "
                     "device runs the narrower layers; to prune to a measured speed, search with --target-latency R "
                     f"--latency-batch-size {slow[0]} (search.target_latency in a config)")
    return "\n".join(lines)


def report(out_dir: str | Path, *, dense_path: str | Path, pruned_path: str | Path, search_summary: dict,
           config: dict[str, Any], config_toml: str, exports: dict[str, str], batch_sizes: Sequence[int] = (1, 64),
           max_seconds: float = 3.0, threads: int | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Dense vs pruned accuracy, cost and latency (measured side by side here) with figures: writes
    ``OUT/report.md`` and ``OUT/report.json``, logs noisy timings and a short summary, and returns the report."""
    dense, dense_file = load_pruned_with_metadata(dense_path)
    pruned, metadata = load_pruned_with_metadata(pruned_path)
    with latency_progress(log):
        result = write_report(
            Path(out_dir), dense=dense, dense_metrics=dense_file["metrics"], pruned=pruned, pruned_metadata=metadata,
            search_summary=search_summary, config=config, config_toml=config_toml, exports=exports,
            batch_sizes=batch_sizes, max_seconds=max_seconds, threads=threads,
        )
    for name, entry in result["latency"]["models"].items():
        for bs, lat in entry["latency"].items():
            if lat.get("warning"):
                log(f"warning: {name} latency at batch {bs}: {lat['warning']}")
    log(run_summary(result, pruned_path, exports, out_dir))
    return result
