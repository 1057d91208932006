"""A small conv net and a deterministic training loop, shared by stage tests and the
resume subprocesses they start (``python tests/stagenet.py ...``)."""

from __future__ import annotations

import sys

import torch
from torch import nn

from paramgroups import Plan, Rule, Stage
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


SCHEDULES = {
    "constant": Schedule("constant"),
    "step": Schedule("step", step_size=2, gamma=0.5),
    "multistep": Schedule("multistep", milestones=[2, 4], warmup=1, warmup_start=0.1),
    "exponential": Schedule("exponential", gamma=0.8, warmup=1, warmup_shape="cosine"),
    "cosine": Schedule("cosine", total=EPOCHS, warmup=1, warmup_start=0.1),
    "restarts": Schedule("cosine", restarts={"period": 2, "mult": 2}),
    "poly": Schedule("poly", total=EPOCHS, power=2.0),
    "linear": Schedule("linear", total=EPOCHS, min_factor=0.1),
    "onecycle": Schedule("onecycle", total=EPOCHS),
    "plateau": Schedule("plateau", gamma=0.5, patience=1),
}
STAGES = {
    "progressive": [],  # Plan.progressive's own epoch stages
    "warmup": [Stage(epoch=3, unfreeze="layer1", warmup=1, lr_mult=0.5)],
    "step": [Stage(step=4, unfreeze="stem", warmup=2, warmup_start=0.2),
             Stage(step=7, unfreeze=["layer2", "layer1"], lr_mult=0.5)],
    "freeze": [Stage(epoch=5, freeze="layer2")],
}


def make_plan(schedule: str = "cosine", stages: str = "progressive") -> Plan:
    """Progressive unfreezing (fc, then layer2 at epoch 2, then the rest at 4) plus extra stages."""
    options = dict(lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule=SCHEDULES[schedule])
    if stages == "step":  # stages in steps only: one unit per plan
        return Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], stages=STAGES[stages], **options)
    groups = ["fc", "layer2"] if stages == "warmup" else ["fc", "layer2", ["layer1", "stem"]]
    return Plan.progressive(groups, every=2, stages=STAGES[stages], **options)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)


def setup(schedule: str, stages: str = "progressive"):
    torch.manual_seed(0)
    model = Net()
    plan = make_plan(schedule, stages)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt, steps_per_epoch=STEPS_PER_EPOCH)
    return model, opt, sched


def train(model, opt, sched, start: int, stop: int) -> None:
    model.train()
    for step in range(start, stop):
        x, y = batch(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sched.schedule.main == "plateau":
            sched.step(loss.item())
        else:
            sched.step()


def save(path: str, model, opt, sched) -> None:
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, path)


def resume(schedule: str, stages: str, ckpt: str, start: int, out: str) -> None:
    """A fresh model, optimizer and scheduler; load the checkpoint; finish the run; save."""
    model, opt, sched = setup(schedule, stages)
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict(state["model"])
    sched.load_state_dict(state["sched"])  # restores the frozen set before the optimizer
    opt.load_state_dict(state["opt"])
    train(model, opt, sched, start, STEPS_PER_EPOCH * EPOCHS)
    save(out, model, opt, sched)


if __name__ == "__main__":  # python stagenet.py SCHEDULE STAGES CHECKPOINT START OUT [...]
    torch.use_deterministic_algorithms(True)
    args = sys.argv[1:]
    for i in range(0, len(args), 5):
        resume(args[i], args[i + 1], args[i + 2], int(args[i + 3]), args[i + 4])
