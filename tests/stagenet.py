"""A small conv net and a deterministic training loop, shared by stage tests and the
resume subprocesses they start (``python tests/stagenet.py ...``)."""

from __future__ import annotations

import sys

import torch
from torch import nn

from paramgroups import Plan, Stage
from paramgroups.schedules import Schedule


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = block(3, 4)
        self.layer1 = block(4, 4)
        self.layer2 = block(4, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


STEPS_PER_EPOCH = 3
EPOCHS = 6


def make_plan(schedule: str = "cosine") -> Plan:
    schedules = {
        "cosine": Schedule("cosine", total=EPOCHS, warmup=1, warmup_start=0.1),
        "multistep": Schedule("multistep", milestones=[2, 4], warmup=1, warmup_start=0.1),
        "onecycle": Schedule("onecycle", total=EPOCHS),
        "constant": Schedule("constant"),
    }
    return Plan.progressive(["fc", "layer2", ["layer1", "stem"]], every=2, lr=0.05, optimizer="sgd",
                            momentum=0.9, weight_decay=1e-4, schedule=schedules[schedule],
                            stages=[Stage(epoch=5, freeze="layer2")] if schedule == "constant" else ())


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)


def setup(schedule: str):
    torch.manual_seed(0)
    model = Net()
    plan = make_plan(schedule)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt, steps_per_epoch=STEPS_PER_EPOCH)
    return model, opt, sched


def train(model, opt, sched, start: int, stop: int) -> None:
    model.train()
    for step in range(start, stop):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()


def save(path: str, model, opt, sched) -> None:
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, path)


if __name__ == "__main__":  # resume: python stagenet.py SCHEDULE CHECKPOINT START OUT
    schedule, ckpt, start, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.use_deterministic_algorithms(True)
    model, opt, sched = setup(schedule)
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict(state["model"])
    sched.load_state_dict(state["sched"])  # restores the frozen set before the optimizer
    opt.load_state_dict(state["opt"])
    train(model, opt, sched, start, STEPS_PER_EPOCH * EPOCHS)
    save(out, model, opt, sched)
