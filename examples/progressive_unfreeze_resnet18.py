"""Progressive unfreezing of a ResNet-18, top-down, one block group per epoch, on FakeData.

Epoch 0 trains only the classifier (fc); each later epoch thaws the next group down:
layer4, layer3, layer2, then layer1 with the stem (conv1, bn1). One plan says it all: every
parameter frozen by a rule, fc thawed, a Stage per group that thaws it at its epoch with a
smaller LR the deeper it sits (``lr_mult``) and a one-epoch LR warmup of its own; on top of
that a cosine schedule with a one-epoch warmup, SGD with momentum, no weight decay on biases
and norms. ``Plan.progressive(GROUPS, every=1, ...)`` is the shorthand for the same freezing
timeline without the per-group LR multipliers and warmups.

The scheduler is stepped every iteration; it flips ``requires_grad`` at each epoch boundary
and releases the running statistics of the BatchNorm layers it thaws (frozen ones are held
in eval mode even under ``model.train()``). Optimizer groups never change: parameters wait,
frozen, in groups of their own. At the start of each epoch the script prints the audit at
that epoch, collapsed to top-level modules (which are trainable, at which LR), then trains
and prints the loss.

Run it (CPU, no downloads: random weights, random images; well under a minute):

    python examples/progressive_unfreeze_resnet18.py --epochs 5 --batches-per-epoch 3
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn
from torchvision import transforms

import paramgroups
from paramgroups import Plan, Rule, Schedule, Stage

NUM_CLASSES = 10
LR, WEIGHT_DECAY, MOMENTUM = 0.01, 1e-4, 0.9
GROUPS = ["fc", "layer4", "layer3", "layer2", ["layer1", "conv1", "bn1"]]  # in thawing order
LR_DECAY = 0.5  # GROUPS[k] (thawed at epoch k) trains at LR * LR_DECAY ** k
WARMUP_START = 0.1  # warmups (the schedule's and each thawed group's) start at 10% of the LR


def modules_of(group: str | list[str]) -> list[str]:
    return [group] if isinstance(group, str) else list(group)


def thawed_at(epoch: int) -> list[str]:
    """Top-level modules trainable during ``epoch`` (one group thaws per epoch)."""
    return [m for g in GROUPS[:epoch + 1] for m in modules_of(g)]


def make_plan(epochs: int = 5) -> Plan:
    """Everything frozen but fc; group k thaws at epoch k with lr_mult LR_DECAY ** k and a
    one-epoch warmup; cosine over ``epochs`` after a one-epoch warmup; SGD, no decay on biases/norms."""
    stages = [Stage(epoch=k, unfreeze=group, lr_mult=LR_DECAY ** k, warmup=1, warmup_start=WARMUP_START)
              for k, group in enumerate(GROUPS) if k]
    return Plan(
        [Rule("**", freeze=True), Rule(GROUPS[0], freeze=False)],
        stages=stages, lr=LR, weight_decay=WEIGHT_DECAY, optimizer="sgd", momentum=MOMENTUM,
        no_decay=True, schedule=Schedule("cosine", total=epochs, warmup=1, warmup_start=WARMUP_START),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default: 5)")
    parser.add_argument("--batches-per-epoch", type=int, default=3, help="batches per epoch (default: 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batches_per_epoch", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size < 2:  # layer4's BatchNorms see 1x1 maps: training needs 2 values per channel
        parser.error("--batch-size must be >= 2")
    return args


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, loader) -> float:
    """One epoch, the scheduler stepped every batch (at the last one it thaws the next group);
    the mean loss."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()  # held (frozen) BatchNorms stay in eval mode
    total = 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
    return total / len(loader)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)
    plan = make_plan(args.epochs)
    spe = args.batches_per_epoch
    optimizer = plan.optimizer(model)  # freezes all but fc; one group per (settings, timeline)
    scheduler = plan.scheduler(optimizer, steps_per_epoch=spe)  # stepped every iteration
    data = torchvision.datasets.FakeData(
        size=spe * args.batch_size, image_size=(3, args.image_size, args.image_size),
        num_classes=NUM_CLASSES, transform=transforms.ToTensor(), random_offset=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    for epoch in range(args.epochs):
        print(f"== epoch {epoch}/{args.epochs}: trainable {', '.join(thawed_at(epoch))} ==")
        # LRs at the epoch's first step; a frozen row shows its group's LR before its stage's
        # lr_mult and warmup apply (it takes no steps until then)
        print(paramgroups.audit(model, plan, at=epoch, steps_per_epoch=spe).collapse(1).to_table())
        loss = train_epoch(model, optimizer, scheduler, loader)
        print(f"epoch {epoch}  loss {loss:.4f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
