"""Prune cifar_resnet20 to a MACs budget inside a plain PyTorch training loop.

    python experiments/examples/custom_loop.py --data DIR --target-macs 0.5 --steps 2000 --out pruned.pt

DIR/train is an ImageFolder tree of 32x32 images. The loop is yours; the Pruner adds two things: train
``pruner.net`` (the model with its gates), and call ``pruner.step()`` after ``optimizer.step()``."""

import argparse
import itertools
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from dnas_prune import DnasPruneError, Pruner, count_cost, create_model, save_pruned
from dnas_prune.train.cifar import CIFAR10_MEAN, CIFAR10_STD


def forever(loader):
    while True:  # a new shuffle every epoch
        yield from loader


def train(pruner, batches, optimizer, scheduler, criterion, device="cpu"):
    """The whole integration: an ordinary training step, then ``pruner.step()``."""
    pruner.net.train()
    for x, y in batches:
        loss = criterion(pruner.net(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        pruner.step()  # moves the gates and lowers the budget along its schedule


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with a train/ ImageFolder tree")
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of the dense MACs to keep")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="pruned.pt")
    parser.add_argument("--weights", default="cifar10", help='shipped pretrained weights, or "none"')
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    fail = parser.error = lambda message: parser.exit(2, f"custom_loop: error: {message}\n")  # one line, exit 2
    args = parser.parse_args(argv)
    if not (Path(args.data) / "train").is_dir():
        fail(f"{args.data}/train is not a folder (expected an ImageFolder tree)")
    if not 0 < args.target_macs < 1 or args.steps < 1:
        fail(f"need 0 < --target-macs < 1 and --steps >= 1, got {args.target_macs} and {args.steps}")
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dataset = datasets.ImageFolder(Path(args.data) / "train", augment)
        weights = None if args.weights.lower() == "none" else args.weights
        model = create_model("cifar_resnet20", num_classes=len(dataset.classes), weights=weights).to(device)
        pruner = Pruner(model, input_size=(3, 32, 32), target_macs=args.target_macs, total_steps=args.steps)
    except (DnasPruneError, FileNotFoundError) as exc:  # no images, unknown weights, a budget below the floor
        fail(exc)
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, shuffle=True, num_workers=args.workers)
    # Weights only: the gates live on pruner.net and have their own optimizer inside the Pruner.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    train(pruner, itertools.islice(forever(loader), args.steps), optimizer, scheduler, criterion, device)
    calibration = ((x.to(device), y) for x, y in itertools.islice(forever(loader), 20))
    small = pruner.finalize(calibration)  # within +-1 % of the target, BN statistics refitted
    dense = pruner.net.dense_cost
    ratio = count_cost(small, (3, 32, 32)).macs / dense.macs
    save_pruned(small, args.out, input_size=[3, 32, 32], dense_macs=dense.macs, dense_params=dense.params)
    print(f"MACs {ratio:.4f} of dense (target {args.target_macs}) after {args.steps} steps; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
