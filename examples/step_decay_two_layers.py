"""Per-layer learning rates with step decay: a hand-written adjust_learning_rate vs. a plan.

The classic recipe trains two layers at their own learning rates (10 and 5 here) and divides
both by 10 every 2 epochs with a hand-written function called at the top of every epoch:

    def adjust_learning_rate(optimizer, epoch):
        for group, base in zip(optimizer.param_groups, BASE_LRS):
            group["lr"] = base * 0.1 ** (epoch // 2)

The script runs that loop (torch.optim.SGD with two hand-built groups), then the same training
with a paramgroups plan (one Rule per layer, Schedule("step", step_size=2, gamma=0.1)) and its
scheduler stepped once per epoch, from the same initial weights on the same data. It prints
the LR of each layer at every epoch for both, whether the trained weights came out equal, and
whether the two runs are identical (LR tables and weights; exit code 1 if not).

Run it (CPU, random data, a second or two):

    python examples/step_decay_two_layers.py --epochs 6
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from paramgroups import Plan, Rule
from paramgroups.schedules import Schedule

LR1, LR2 = 10.0, 5.0   # layer1, layer2
STEP_SIZE, GAMMA = 2, 0.1


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(8, 16)
        self.layer2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(torch.relu(self.layer1(x)))


def make_plan() -> Plan:
    """layer1 at lr 10, layer2 at lr 5, both divided by 10 every 2 epochs."""
    return Plan(
        [
            Rule("layer1", lr=LR1),
            Rule("layer2", lr=LR2),
        ],
        optimizer="sgd",
        schedule=Schedule("step", step_size=STEP_SIZE, gamma=GAMMA),
    )


# -- the hand-written version ----------------------------------------------------------------

BASE_LRS = (LR1, LR2)


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Sets each group's LR to its initial LR decayed by 10 every 2 epochs."""
    for group, base in zip(optimizer.param_groups, BASE_LRS):
        group["lr"] = base * 0.1 ** (epoch // 2)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    loss_fn = nn.MSELoss()
    for x, y in batches:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


Table = list[tuple[int, float, float]]  # (epoch, layer1 lr, layer2 lr)


def hand_written(epochs: int, batches, seed: int) -> tuple[Table, nn.Module]:
    torch.manual_seed(seed)
    model = TwoLayers()
    optimizer = torch.optim.SGD([
        {"params": model.layer1.parameters(), "lr": LR1},
        {"params": model.layer2.parameters(), "lr": LR2},
    ], lr=LR1)
    table = []
    for epoch in range(epochs):
        adjust_learning_rate(optimizer, epoch)
        table.append((epoch, optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
        train_one_epoch(model, optimizer, batches)
    return table, model


def with_plan(epochs: int, batches, seed: int) -> tuple[Table, nn.Module]:
    torch.manual_seed(seed)
    model = TwoLayers()
    plan = make_plan()
    optimizer = plan.optimizer(model)     # group 0: layer1 (lr 10), group 1: layer2 (lr 5)
    scheduler = plan.scheduler(optimizer)  # stepped once per epoch
    table = []
    for epoch in range(epochs):
        table.append((epoch, optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
        train_one_epoch(model, optimizer, batches)
        scheduler.step()
    return table, model


def print_table(title: str, table: Table) -> None:
    print(title)
    print(f"{'epoch':>5}  {'layer1 lr':>22}  {'layer2 lr':>22}")
    for epoch, lr1, lr2 in table:  # repr: the exact floats, so "identical" can be checked by eye
        print(f"{epoch:>5}  {lr1!r:>22}  {lr2!r:>22}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    # Tiny inputs keep the updates small at lr 10: the point here is the schedule, not the fit.
    batches = [(1e-3 * torch.randn(4, 8, generator=gen), torch.zeros(4, 1)) for _ in range(2)]

    hand, hand_model = hand_written(args.epochs, batches, args.seed)
    plan, plan_model = with_plan(args.epochs, batches, args.seed)
    print_table("hand-written adjust_learning_rate:", hand)
    print()
    print_table("paramgroups plan (Schedule('step', step_size=2, gamma=0.1)):", plan)
    print()
    weights = all(torch.equal(a, b) for a, b in zip(hand_model.parameters(), plan_model.parameters()))
    print(f"trained weights equal: {'yes' if weights else 'NO'}")
    same = hand == plan and weights
    print(f"identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
