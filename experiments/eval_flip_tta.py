"""How much of the gap to a target accuracy an evaluation protocol change would hide: plain vs flip-TTA accuracy.

Evaluates finished dense models (``dnas-prune train`` model.pt files) on the held-out validation split and the test
split three ways, side by side in one run: fp32, bf16 autocast (what the trainer reports), and fp32 with
horizontal-flip test-time augmentation (softmax of the image and its mirror averaged). The trainer never uses TTA;
this page only says how far a TTA-reported number would sit from ours. Writes JSON + Markdown to
``experiments/results/``.

    python experiments/eval_flip_tta.py --data ../shared/data/cifar10-jpeg \
        --model /work/runs/r20_bs128/model.pt --model /work/runs/r20_zi_alt/model.pt --name eval_flip_tta_cifar_resnet20
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from dnas_prune.train.cifar import load_cifar10, resolve_data_root
from dnas_prune.io.pruned import load_pretrained
from peers import cpu_line, machine

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def accuracies(model: torch.nn.Module, split, batch_size: int = 500) -> dict[str, float]:
    """Top-1 of the plain fp32, bf16-autocast and flip-TTA predictions on one split."""
    correct = {"fp32": 0, "bf16": 0, "flip_tta": 0}
    for x, y in split.batches(batch_size, train=False):
        plain = model(x)
        with torch.autocast("cpu", torch.bfloat16):
            half = model(x).float()
        mirrored = model(x.flip(3))
        correct["fp32"] += int((plain.argmax(1) == y).sum())
        correct["bf16"] += int((half.argmax(1) == y).sum())
        correct["flip_tta"] += int(((plain.softmax(1) + mirrored.softmax(1)).argmax(1) == y).sum())
    return {k: v / len(split) for k, v in correct.items()}


def _cell(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 root (default: $DNAS_PRUNE_DATA)")
    parser.add_argument("--model", action="append", required=True, help="a dense model.pt (repeatable)")
    parser.add_argument("--name", default="eval_flip_tta", help="results file stem")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-size", type=int, default=5000,
                        help="the held-out split the models were trained without (0 for models trained on all 50k)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_cifar10(resolve_data_root(args.data, download=False), val_size=args.val_size)
    rows = []
    for path in args.model:
        model = load_pretrained(path, None, len(data.classes)).eval()
        rows.append({"model": path, "val": accuracies(model, data.val) if len(data.val) else None,
                     "test": accuracies(model, data.test)})
        print(path, rows[-1], flush=True)
    report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": machine(), "rows": rows,
              "val_size": len(data.val), "test_size": len(data.test)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Plain vs flip-TTA evaluation: {args.name}", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {cpu_line(report['machine'])}, torch {report['machine']['torch']}. Validation: the trainer's "
             f"{report['val_size']} held-out training images; test: the {report['test_size']} test images. The "
             "trainer reports bf16; flip TTA is not part of any number we report elsewhere.", "",
             "| model | val fp32 | val bf16 | val flip-TTA | test fp32 | test bf16 | test flip-TTA | TTA gain (test) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r["test"]
        v = r["val"] or {"fp32": "–", "bf16": "–", "flip_tta": "–"}
        lines.append(f"| `{r['model']}` | {_cell(v['fp32'])} | {_cell(v['bf16'])} | {_cell(v['flip_tta'])} | {t['fp32']:.4f} | "
                     f"{t['bf16']:.4f} | {t['flip_tta']:.4f} | {100 * (t['flip_tta'] - t['bf16']):+.2f} points |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
