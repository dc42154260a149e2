"""Which channels, or which weights? A finished `compare.py` row of ours, against its own architecture trained
from the parent: is what the search loses to the one-shot peers its widths, its choice of channels within a layer,
or its weights?

From the row's searched widths and the same dense parent, each variant finetunes with the row's recipe:

- ``widths_l1_all``: the parent's filters of largest L1 norm, finetuned all S + F epochs (what a one-shot peer gets);
- ``widths_l1``: the same model, finetuned only the F epochs the row's finetune got, at the same place in the lr
  schedule (the row's schedule is one over S + F epochs);
- ``gates_parent``: the channels the gates kept, with the parent's weights (the search's weights discarded),
  finetuned the same F epochs.

Beside them, the row itself: the gates' channels with the searched weights. ``widths_l1`` vs ``gates_parent``
isolates the channel choice; ``gates_parent`` vs the row isolates the search's weights.

    python experiments/channel_choice.py --row /tmp/compare/ours_1sched_taylor_1search@0.5 --model cifar_resnet20 \\
        --search-epochs 1 --finetune-epochs 4 --seed 0 --work /tmp/channel_choice

Each variant resumes from its checkpoint and is skipped when its result.json exists.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

from compare import load_parent, recipe
from peers import l1_prune_to_widths, machine

from dnas_prune.finalize import finalize
from dnas_prune.io.pruned import load_pruned_with_metadata, save_pruned
from dnas_prune.models import spec_of
from dnas_prune.models.cost import count_cost
from dnas_prune.search.hooks import load_supernet
from dnas_prune.stages import finetune
from dnas_prune.train.cifar import load_cifar10, resolve_data_root
from dnas_prune.train.recipes import seed_everything

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("widths_l1_all", "widths_l1", "gates_parent")


def variant_model(name: str, dense, row: Path):
    searched = load_pruned_with_metadata(row / "pruned.pt")[0]
    if name == "gates_parent":
        net = load_supernet(row / "search" / "supernet.pt")
        net.model.load_state_dict(dense.state_dict(), strict=True)
        return finalize(net.eval())
    inner = [[b["inner"] for b in stage["blocks"]] for stage in spec_of(searched)["stages"]]
    if [len(stage) for stage in inner] != [len(stage["blocks"]) for stage in spec_of(dense)["stages"]]:
        raise SystemExit(f"{row}: the search removed whole blocks; widths_l1 needs every block of the parent")
    return l1_prune_to_widths(dense, inner)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", type=Path, required=True, help="a finished compare.py row dir of an ours method")
    parser.add_argument("--parent", default="cifar10", help="the row's dense parent (as compare.py --parent)")
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--search-epochs", type=int, default=1, help="the row's search epochs (S)")
    parser.add_argument("--finetune-epochs", type=int, default=4, help="the row's finetune epochs (F)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=RESULTS / "channel_choice_cifar_resnet20")
    parser.add_argument("--note", default="", help="a line for the report (e.g. how earlier variant runs were made)")
    args = parser.parse_args()
    root = str(resolve_data_root(args.data, download=False))
    data = load_cifar10(root, seed=args.seed)
    dense, parent_id = load_parent(args.parent, args.model, data.num_classes)
    row_result = json.loads((args.row.parent / "rows" / f"{args.row.name}.json").read_text())
    total, input_size = args.search_epochs + args.finetune_epochs, tuple(data.train.images.shape[1:])
    results = {}
    for name in VARIANTS:
        out = args.work / name
        done = out / "result.json"
        if not done.is_file():
            out.mkdir(parents=True, exist_ok=True)
            model = variant_model(name, dense, args.row)
            path = out / "pruned.pt"
            if not path.is_file():
                save_pruned(model, path, input_size=list(input_size), info={"variant": name}, epochs_before_finetune=0)
            epochs, schedule = (total, {}) if name == "widths_l1_all" else (
                args.finetune_epochs, {"span": total, "start": args.search_epochs})
            seed_everything(args.seed)
            _, metrics = finetune(path, data, recipe(epochs, args.seed, **schedule), out / "finetune", data_root=root,
                                  resume=True)
            ratio = count_cost(model, input_size).macs / count_cost(dense, input_size).macs
            done.write_text(json.dumps({"variant": name, "epochs": epochs, **schedule, "macs_ratio": ratio,
                                        "test_acc": metrics["test_acc"], "val_acc": metrics.get("val_acc")}) + "\n")
        results[name] = json.loads(done.read_text())
        print(f"{name}: test {results[name]['test_acc']:.4f}", flush=True)
    report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": machine(),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "parent": parent_id,
              "model": args.model, "seed": args.seed, "row": str(args.row), "row_method": row_result["method"],
              "row_test_acc": row_result["test_acc"], "row_val_acc": row_result.get("val_acc"),
              "search_epochs": args.search_epochs, "finetune_epochs": args.finetune_epochs, "note": args.note,
              "variants": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    m = machine()
    lines = ["# Which channels, or which weights?", "",
             f"- command: `{report['command']}`",
             f"- machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), torch {m['torch']}; date {report['date']}",
             f"- parent {parent_id} ({args.model}); seed {args.seed}; the row: `{row_result['method']}` at "
             f"{row_result['target_macs']:g} of dense MACs, {args.search_epochs} search + {args.finetune_epochs} "
             "finetune epochs under one lr schedule; recipe `compare.recipe`"]
    lines += [f"- {args.note}"] if args.note else []
    lines += ["",
             "| model | channels | weights at finetune start | finetune epochs | val acc | test acc |",
             "|---|---|---|---:|---:|---:|",
             f"| the row | the gates' | searched | {args.finetune_epochs} (of {total}) | "
             f"{row_result.get('val_acc') or float('nan'):.4f} | {row_result['test_acc']:.4f} |"]
    what = {"widths_l1_all": ("largest filter L1 norm", "parent's", f"{total} (own schedule)"),
            "widths_l1": ("largest filter L1 norm", "parent's", f"{args.finetune_epochs} (of {total})"),
            "gates_parent": ("the gates'", "parent's", f"{args.finetune_epochs} (of {total})")}
    for name in VARIANTS:
        r = results[name]
        lines.append(f"| `{name}` | {what[name][0]} | {what[name][1]} | {what[name][2]} | "
                     f"{r.get('val_acc') or float('nan'):.4f} | {r['test_acc']:.4f} |")
    lines += ["", "Every model has the row's widths (MACs ratio "
              + ", ".join(f"{results[n]['macs_ratio']:.3f}" for n in VARIANTS) + "). One seed: read differences "
              "against the seed-to-seed spread in compare.md.", ""]
    args.results.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
