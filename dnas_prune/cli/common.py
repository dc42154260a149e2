"""Arguments and set-up shared by the commands that train (train, search, finetune)."""

from __future__ import annotations

import argparse

from ..device.policy import MEMORY_FORMAT_CHOICES, PRECISIONS, memory_format_name
from ..train.cifar import FLIP_MODES
from ..train.data import DATA_KINDS, TrainingData, load_dataset
from ..train.imagefolder import IMAGE_SIZE, IMAGEFOLDER_LAYOUT
from ..train.loop import TrainConfig


def add_training_args(p: argparse.ArgumentParser, defaults: TrainConfig, val_size: int = 5000,
                      clean_epochs_per: int | None = None, weight_average: bool = False) -> None:
    """The flags of every training command. With ``clean_epochs_per`` set, --clean-epochs defaults to
    ``epochs // clean_epochs_per``, so the clean tail scales with the run and a 1-epoch smoke run has none.
    ``weight_average`` adds --ema-decay, for commands that train a plain model (not the gated supernet, whose
    evaluation refits BN statistics on the live weights)."""
    p.add_argument("--data", help="data directory (default: $DNAS_PRUNE_DATA; without either, CIFAR-10 is "
                                  "downloaded to the cache)")
    p.add_argument("--data-kind", choices=DATA_KINDS, default="cifar",
                   help=f"cifar: CIFAR-10; imagefolder: an ImageNet-style tree {IMAGEFOLDER_LAYOUT} "
                        "(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                   help="imagefolder: side of the training crop and the eval center crop (default: %(default)s)")
    p.add_argument("--workers", type=int, help="imagefolder: loader processes per training process "
                                               "(default: the usable cores, at most 8)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate of the weights (default: %(default)s)")
    p.add_argument("--schedule", choices=("onecycle", "cosine"), default=defaults.schedule)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                   help="L2 weight decay on conv/linear weights (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                   help="label smoothing of the training loss (default: %(default)s)")
    p.add_argument("--distill-weight", type=float, default=defaults.distill_weight,
                   help="weight of distillation from the dense parent in the loss, 0..1 (search: the model "
                        "searched; finetune: --teacher) (default: %(default)s)")
    p.add_argument("--distill-temperature", type=float, default=defaults.distill_temperature,
                   help="softmax temperature of the distillation targets (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs, help="lr warm-up (default: %(default)s)")
    p.add_argument("--schedule-epochs", type=float, default=defaults.schedule_epochs,
                   help="the lr schedule spans this many epochs, of which this run is a part, e.g. search 2 + "
                        "finetune 3 = 5 (default: 0, this run's --epochs)")
    p.add_argument("--schedule-start", type=float, default=defaults.schedule_start,
                   help="this run starts this many epochs into --schedule-epochs, e.g. a finetune after a 2-epoch "
                        "search: 2 (default: %(default)s)")
    p.add_argument("--flip", choices=FLIP_MODES, default=defaults.flip,
                   help="horizontal flips: random per image and epoch, alternate (each image mirrored in every "
                        "other epoch, CIFAR data only) or none (default: %(default)s)")
    p.add_argument("--crop-padding", type=int, default=defaults.crop_padding,
                   help="CIFAR random crops: zero-pad by this many pixels and crop back (default: %(default)s)")
    clean_default = (f"epochs // {clean_epochs_per}" if clean_epochs_per else str(defaults.clean_epochs))
    p.add_argument("--clean-epochs", type=int, default=None if clean_epochs_per else defaults.clean_epochs,
                   help=f"CIFAR data: the last N epochs train on un-augmented images, no crop or flip "
                        f"(default: {clean_default})")
    p.set_defaults(clean_epochs_per=clean_epochs_per)
    if weight_average:
        p.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                       help="evaluate and save an exponential moving average of the weights with this per-step "
                            "decay, e.g. 0.998; 0: the weights as trained (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=defaults.device)
    p.add_argument("--limit-train", type=int, help="train on the first N images of the training split (smoke runs)")
    p.add_argument("--val-size", type=int, default=val_size,
                   help="images held out of train for validation (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="auto: bf16 autocast where the CPU or GPU runs bf16 natively, else fp32 (default: %(default)s)")
    p.add_argument("--memory-format", type=memory_format_name, choices=MEMORY_FORMAT_CHOICES,
                   default=defaults.memory_format,
                   help="auto: time both layouts on the model and keep the faster (default: %(default)s)")
    p.add_argument("--test-every-epoch", action="store_true", help="also evaluate the test split after every epoch")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
        warmup_epochs=args.warmup_epochs, schedule_epochs=args.schedule_epochs, schedule_start=args.schedule_start,
        flip=args.flip, crop_padding=args.crop_padding,
        ema_decay=getattr(args, "ema_decay", 0.0),
        clean_epochs=(args.clean_epochs if args.clean_epochs is not None else args.epochs // args.clean_epochs_per),
        device=args.device, precision=args.precision,
        memory_format=args.memory_format, seed=args.seed, sync_bn=args.sync_bn,
        test_every_epoch=args.test_every_epoch, progress=not args.no_progress,
    )


def load_data(args: argparse.Namespace) -> tuple[TrainingData, str]:
    data, root = load_dataset(args.data_kind, args.data, val_size=args.val_size, limit_train=args.limit_train,
                              seed=args.seed, image_size=args.image_size, workers=args.workers)
    return data, str(root)
