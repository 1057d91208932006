"""Benchmark 7: the cost of ``PlanScheduler.step()`` in a training loop, against torch.

Contenders, interleaved in one process on a torchvision ResNet-50 (CPU, real tensors, no
forward/backward: only the scheduler step is timed):

- ``LambdaLR.step()`` with a constant factor (what a hand-written loop steps);
- ``PlanScheduler.step()`` of a plan without stages, and of a plan with one stage (thaw
  ``layer4`` at step 1000), both away from the boundary;
- the step that crosses the stage boundary (thawing layer4 and releasing its norm layers),
  against a hand-written flip: ``LambdaLR.step()`` plus ``requires_grad_(True)`` on layer4's
  parameters and ``layer4.train()``. Before each timed crossing the scheduler steps back to
  the step before the boundary (untimed), which re-freezes layer4 through the scheduler itself.

Each round times every contender once; a ratio is taken inside its round (so load that drifts
between rounds cancels) and the table shows medians over rounds.

    python benchmarks/scheduler_step.py [--repeat 15] [--steps 100] [--crossings 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from _util import header, table
from paramgroups import Plan, Rule, Stage

BOUNDARY = 1000


def per_step(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--crossings", type=int, default=5, help="boundary crossings timed per round")
    args = ap.parse_args()
    header("scheduler step: microseconds per step (medians over interleaved rounds)")

    model = torchvision.models.resnet50()
    plain = Plan(lr=0.1, optimizer="sgd", momentum=0.9)
    staged = Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], lr=0.1, optimizer="sgd",
                  momentum=0.9, stages=[Stage(step=BOUNDARY, unfreeze="layer4")],
                  schedule={"unit": "step"})
    opt_plain = plain.optimizer(model)
    opt_staged = staged.optimizer(model)
    opt_lambda = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched_plain = plain.scheduler(opt_plain)
    sched_staged = staged.scheduler(opt_staged)
    lam = torch.optim.lr_scheduler.LambdaLR(opt_lambda, lambda k: 1.0)
    for opt in (opt_plain, opt_staged, opt_lambda):
        opt.step()  # no gradients: moves nothing; keeps torch's call-order warning quiet
    layer4 = list(model.layer4.parameters())

    def crossing() -> float:
        sched_staged.last_epoch = BOUNDARY - 2
        sched_staged.step()  # to the step before the boundary: layer4 frozen and held again
        assert not layer4[0].requires_grad
        t = time.perf_counter()
        sched_staged.step()
        spent = time.perf_counter() - t
        assert layer4[0].requires_grad and model.layer4[0].bn1.training
        return spent

    def hand_flip() -> float:
        for p in layer4:
            p.requires_grad_(False)
        model.layer4.eval()
        t = time.perf_counter()
        lam.step()
        for p in layer4:
            p.requires_grad_(True)
        model.layer4.train()
        return time.perf_counter() - t

    steady = {"LambdaLR": lam.step, "no stages": sched_plain.step, "one stage": sched_staged.step}
    times: dict[str, list[float]] = {k: [] for k in (*steady, "boundary", "hand flip")}
    ratios: dict[str, list[float]] = {k: [] for k in ("no stages", "one stage", "boundary")}
    model.train()
    for round_ in range(args.repeat + 1):  # round 0 warms up, untimed
        sched_staged.last_epoch = 10  # far from the boundary; the next step re-freezes layer4
        sched_staged.step()
        now = {name: per_step(fn, args.steps) for name, fn in steady.items()}
        now["boundary"] = statistics.median(crossing() for _ in range(args.crossings))
        now["hand flip"] = statistics.median(hand_flip() for _ in range(args.crossings))
        if round_:
            for name, value in now.items():
                times[name].append(value)
            ratios["no stages"].append(now["no stages"] / now["LambdaLR"])
            ratios["one stage"].append(now["one stage"] / now["LambdaLR"])
            ratios["boundary"].append(now["boundary"] / now["hand flip"])
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    rows = [["LambdaLR.step()", med["LambdaLR"], 1.0],
            ["PlanScheduler.step(), no stages", med["no stages"], ratio["no stages"]],
            ["PlanScheduler.step(), one stage, away from it", med["one stage"], ratio["one stage"]],
            ["hand flip: LambdaLR.step() + requires_grad_ + train()", med["hand flip"], 1.0],
            ["PlanScheduler.step() across the boundary", med["boundary"], ratio["boundary"]]]
    table(rows, ["step", "us per step", "x its baseline"])


if __name__ == "__main__":
    main()
