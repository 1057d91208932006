"""Fine-tune a ResNet-18 with a paramgroups plan, on torchvision's FakeData, on the CPU.

Shows one declarative plan doing what fine-tuning scripts usually hand-build: the stem
(conv1, bn1) frozen, a small learning rate for the backbone (layer1..layer4), a larger one
for the new classifier (fc), no weight decay on biases and norms, and SGD with momentum.
The audit table is printed before training, then the loss of each step.

Run it (no downloads: random weights, random images):

    python examples/finetune_resnet18.py --steps 5 --batch-size 8 --image-size 64
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn
from torchvision import transforms

from paramgroups import Plan, Rule, audit

NUM_CLASSES = 10


def make_plan() -> Plan:
    """The fine-tuning plan: frozen stem, small backbone LR, larger head LR, no decay on biases/norms."""
    return Plan(
        [
            Rule(["conv1", "bn1"], freeze=True),          # the stem stays as it is
            Rule("layer*", lr=1e-3),                       # a small backbone learning rate
            Rule("fc", lr=1e-2),                           # a larger one for the new head
            Rule(kinds=["bias", "norm"], weight_decay=0),  # no decay on biases and norms
        ],
        lr=1e-3, weight_decay=1e-4, optimizer="sgd", momentum=0.9,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="training steps (default: 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser.parse_args(argv)


def train(model: nn.Module, plan: Plan, args: argparse.Namespace) -> None:
    """``args.steps`` SGD steps on FakeData; the frozen stem stays as it is."""
    optimizer = plan.optimizer(model)  # sets requires_grad=False on the stem, builds torch.optim.SGD
    data = torchvision.datasets.FakeData(
        size=args.steps * args.batch_size, image_size=(3, args.image_size, args.image_size),
        num_classes=NUM_CLASSES, transform=transforms.ToTensor(), random_offset=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    model.bn1.eval()  # a frozen BatchNorm still updates its running stats in train mode
    for step, (images, labels) in enumerate(loader, 1):
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        print(f"step {step}/{args.steps}  loss {loss.item():.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)
    plan = make_plan()
    print(audit(model, plan).to_table())
    print()
    train(model, plan, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
