"""Ship a dense parent trained by ``dnas-prune train`` inside the package, as ``create_model(name, weights=TAG)``.

Stores the state_dict in half precision under dnas_prune/models/weights/, re-measures the test accuracy of the
stored (half-precision, reloaded) weights on the whole test split, and records sha256, accuracy, recipe, command,
machine and normalization in weights/index.json, plus a results page experiments/results/parent_NAME_TAG.md/.json.

    python experiments/ship_parent.py --model cifar_resnet20 --run runs/r20_parent --data ../shared/data/cifar10-jpeg \\
        --command "dnas-prune train --model cifar_resnet20 --data ../shared/data/cifar10-jpeg --epochs 30"
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shlex
import sys
from pathlib import Path

import torch

from dnas_prune import create_model, load_pruned_with_metadata
from dnas_prune.io.checkpoint import atomic_write, atomic_write_json, atomic_write_text, safe_load
from dnas_prune.train.data import load_dataset
from dnas_prune.models import spec_of
from dnas_prune.models.pretrained import INDEX, WEIGHTS_DIR, weights_key

from peers import machine

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, data) -> float:
    model.eval()
    correct = seen = 0
    for x, y in data.test.batches(500, train=False):
        correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return correct / seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the registry name the run trained, e.g. cifar_resnet20")
    p.add_argument("--run", required=True, type=Path, help="a `dnas-prune train` output directory (model.pt, train.pt)")
    p.add_argument("--data", required=True, help="the data the accuracy is measured on")
    p.add_argument("--tag", default="cifar10", help="weights tag (default: %(default)s)")
    p.add_argument("--command", required=True, help="the command that trained the run, for the record")
    args = p.parse_args()
    if not (args.run / "model.pt").is_file():
        print(f"ship_parent.py: error: {args.run / 'model.pt'} not found; pass a `dnas-prune train` --out directory",
              file=sys.stderr)
        return 2
    trained, meta = load_pruned_with_metadata(args.run / "model.pt")
    history = safe_load(args.run / "train.pt", "a dnas_prune trainer checkpoint").get("history", [])
    name = args.model
    if spec_of(trained) != spec_of(create_model(name)):
        print(f"ship_parent.py: error: {args.run / 'model.pt'} is not a dense {name}", file=sys.stderr)
        return 2
    data, root = load_dataset("cifar", args.data, val_size=0, limit_train=None, seed=0)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in trained.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(half, buffer)
    blob = buffer.getvalue()
    file = f"{name}_{args.tag}.pt"
    atomic_write(WEIGHTS_DIR / file, lambda f: f.write(blob))
    index = json.loads(INDEX.read_text()) if INDEX.is_file() else {}
    entry = {
        "file": file, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "storage": "float16",
        "num_classes": data.num_classes, "dataset": "CIFAR-10 (shared quality-75 JPEG re-encoding, 50k train / 10k test)",
        "normalization": {"mean": list(data.test.mean), "std": list(data.test.std)},
        "trained_test_acc": meta.get("metrics", {}).get("test_acc"), "recipe": meta.get("config"),
        "command": args.command, "machine": machine(), "epochs_trained": len(history),
    }
    index[weights_key(name, args.tag)] = entry
    atomic_write_json(index, INDEX)
    from dnas_prune.models import pretrained
    pretrained._index.cache_clear()
    shipped = create_model(name, weights=args.tag)
    entry["test_acc"] = test_accuracy(shipped, data)
    index[weights_key(name, args.tag)] = entry
    atomic_write_json(index, INDEX)
    RESULTS.mkdir(exist_ok=True)
    stem = f"parent_{name}_{args.tag}"
    atomic_write_json({"name": name, "tag": args.tag, **entry, "history": history,
                       "script": shlex.join(["python", "experiments/ship_parent.py", *sys.argv[1:]])}, RESULTS / f"{stem}.json")
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.4f} | {h.get('img_per_s', 0):.0f} |"
                     for h in history)
    m = entry["machine"]
    atomic_write_text(
        f"# Shipped parent: {name}, weights={args.tag!r}\n\n"
        f"Trained by `{args.command}` on {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs, "
        f"torch {m['torch']}; shipped by `{shlex.join(['python', 'experiments/ship_parent.py', *sys.argv[1:]])}`.\n\n"
        f"- test accuracy of the stored float16 weights, reloaded: **{entry['test_acc']:.4f}** (10,000 test images)\n"
        f"- test accuracy at the end of training (float32 weights): {entry['trained_test_acc']:.4f}\n"
        f"- file {file}, {len(blob) / 1e6:.2f} MB, sha256 {entry['sha256']}\n"
        f"- normalization mean {entry['normalization']['mean']}, std {entry['normalization']['std']}\n\n"
        f"| epoch | train loss | train acc | img/s |\n|---:|---:|---:|---:|\n{rows}\n",
        RESULTS / f"{stem}.md")
    print(f"shipped {name} weights={args.tag!r}: test acc {entry['test_acc']:.4f}, {len(blob) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
