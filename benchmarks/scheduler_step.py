"""Benchmark 7: the cost of ``PlanScheduler.step()`` in a training loop, against torch.

Contenders, interleaved in one process on a torchvision ResNet-50 (CPU, real tensors, no
forward/backward: only the scheduler step is timed):

- ``LambdaLR.step()`` with a constant factor (what a hand-written loop steps);
- ``PlanScheduler.step()`` of a plan without stages, and of a plan with one stage (thaw
  ``layer4`` at step 1000), both away from the boundary;
- the step that crosses the stage boundary, against a hand-written flip: ``LambdaLR.step()``
  plus ``requires_grad_(True)`` on layer4's parameters and ``layer4.train()``.

    python benchmarks/scheduler_step.py [--repeat 7] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from _util import header, table
from paramgroups import Plan, Rule, Stage, norms

BOUNDARY = 1000


def per_step(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    header("scheduler step: seconds per step (median of rounds, interleaved)")

    model = torchvision.models.resnet50()
    plain = Plan(lr=0.1, optimizer="sgd", momentum=0.9)
    staged = Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], lr=0.1, optimizer="sgd",
                  momentum=0.9, stages=[Stage(step=BOUNDARY, unfreeze="layer4")],
                  schedule={"unit": "step"})
    opt_plain = plain.optimizer(model)
    sched_plain = plain.scheduler(opt_plain)
    opt_staged = staged.optimizer(model)
    sched_staged = staged.scheduler(opt_staged)
    opt_lambda = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lam = torch.optim.lr_scheduler.LambdaLR(opt_lambda, lambda k: 1.0)
    layer4 = list(model.layer4.parameters())

    def refreeze() -> None:  # back to the step before the boundary
        sched_staged.last_epoch = BOUNDARY - 1
        for p in layer4:
            p.requires_grad_(False)
        norms.sync(model)

    def boundary() -> None:
        refreeze()
        t = time.perf_counter()
        sched_staged.step()
        times["boundary"].append(time.perf_counter() - t)

    def hand_flip() -> None:
        for p in layer4:
            p.requires_grad_(False)
        t = time.perf_counter()
        lam.step()
        for p in layer4:
            p.requires_grad_(True)
        model.layer4.train()
        times["hand flip"].append(time.perf_counter() - t)

    times: dict[str, list[float]] = {k: [] for k in ("LambdaLR", "no stages", "one stage",
                                                     "boundary", "hand flip")}
    for round_ in range(args.repeat + 1):
        sched_staged.last_epoch = 10  # far from the boundary; the first step back re-freezes
        sched_staged.step()            # layer4 (a real state change), so it stays untimed
        steady = {"LambdaLR": lam.step, "no stages": sched_plain.step, "one stage": sched_staged.step}
        for name, fn in steady.items():
            value = per_step(fn, args.steps)
            if round_:
                times[name].append(value)
        for _ in range(5 if round_ else 1):
            boundary()
            hand_flip()
        if not round_:
            times["boundary"].clear()
            times["hand flip"].clear()
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [["LambdaLR.step()", med["LambdaLR"] * 1e6, 1.0],
            ["PlanScheduler.step(), no stages", med["no stages"] * 1e6, med["no stages"] / med["LambdaLR"]],
            ["PlanScheduler.step(), one stage, away from it", med["one stage"] * 1e6,
             med["one stage"] / med["LambdaLR"]],
            ["hand flip: LambdaLR.step() + requires_grad_ + train()", med["hand flip"] * 1e6, 1.0],
            ["PlanScheduler.step() across the boundary", med["boundary"] * 1e6,
             med["boundary"] / med["hand flip"]]]
    table(rows, ["step", "us per step", "x its baseline"])


if __name__ == "__main__":
    main()
