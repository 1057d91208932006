"""A small VGG-style CIFAR-10 classifier with a 5-epoch LR warmup, then multistep decay.

The recipe: SGD with momentum at lr 0.04, warmed up linearly from 0.001 over the first 5
epochs, then divided by 10 at each milestone epoch; no weight decay on biases and norms. The
plan says all of it; its scheduler is stepped every iteration (``steps_per_epoch``), so the
warmup rises smoothly within epochs and each decay lands on the first step of its epoch.

By default it trains on torchvision's FakeData (random 32x32 images, 10 classes: nothing is
downloaded); ``--data DIR`` trains on the real CIFAR-10 in DIR (the ``cifar-10-batches-py``
folder torchvision's CIFAR10 reads; this script never downloads it). It prints the epoch, the
LR at the epoch's first step and the epoch's mean loss.

Run it (CPU, a few seconds):

    python examples/cifar_vgg_warmup.py --epochs 8 --batches-per-epoch 4
"""

from __future__ import annotations

import argparse
import sys

import torch
import torchvision
from torch import nn
from torchvision import transforms

from paramgroups import Plan
from paramgroups.schedules import Schedule

NUM_CLASSES = 10
LR, WARMUP_LR, WARMUP_EPOCHS = 0.04, 0.001, 5
MILESTONES = (10, 15)   # epochs where the LR is divided by 10
CHANNELS = (16, "M", 32, "M", 64, "M")  # VGG-style config: conv widths, "M" = 2x2 max-pool
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class SmallVGG(nn.Module):
    """conv3x3-bn-relu blocks with max-pooling (VGG's layout, much narrower), then a linear head."""

    def __init__(self, cfg=CHANNELS, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for c in cfg:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_ch, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
                in_ch = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def make_plan() -> Plan:
    """SGD momentum 0.9 at lr 0.04, wd 5e-4 (none on biases/norms), 5 warmup epochs, multistep."""
    return Plan(
        lr=LR, weight_decay=5e-4, optimizer="sgd", momentum=0.9, no_decay=True,
        schedule=Schedule("multistep", warmup=WARMUP_EPOCHS, warmup_lr=WARMUP_LR,
                          milestones=list(MILESTONES), gamma=0.1),
    )


def load_data(args: argparse.Namespace) -> torch.utils.data.Dataset:
    normalize = transforms.Normalize(MEAN, STD)
    if args.data is None:
        return torchvision.datasets.FakeData(
            size=args.fake_size, image_size=(3, 32, 32), num_classes=NUM_CLASSES,
            transform=transforms.Compose([transforms.ToTensor(), normalize]), random_offset=args.seed)
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), normalize])
    return torchvision.datasets.CIFAR10(args.data, train=True, transform=augment, download=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default: 20)")
    parser.add_argument("--batches-per-epoch", type=int, default=None,
                        help="stop each epoch after this many batches (default: the whole set)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="train on CIFAR-10 from DIR (default: FakeData, random images)")
    parser.add_argument("--fake-size", type=int, default=256,
                        help="FakeData images when --data is not given (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batches_per_epoch", "batch_size", "fake_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        data = load_data(args)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        if args.data is None:
            raise
        print(f"error: {args.data} does not hold CIFAR-10 (expected {args.data}/cifar-10-batches-py, "
              "the python version from https://www.cs.toronto.edu/~kriz/cifar.html; "
              "this script never downloads)", file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    steps = min(len(loader), args.batches_per_epoch or len(loader))

    model = SmallVGG()
    plan = make_plan()
    optimizer = plan.optimizer(model)
    scheduler = plan.scheduler(optimizer, steps_per_epoch=steps)  # stepped every iteration
    loss_fn = nn.CrossEntropyLoss()
    print(f"{'FakeData' if args.data is None else 'CIFAR-10'}: {len(data)} images, "
          f"{steps} batches of {args.batch_size} per epoch")

    model.train()
    for epoch in range(args.epochs):
        lr = optimizer.param_groups[0]["lr"]
        total = 0.0
        for i, (images, labels) in enumerate(loader):
            if i == steps:
                break
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        print(f"epoch {epoch}  lr {lr:.6g}  loss {total / steps:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
