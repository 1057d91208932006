"""The progressive-unfreezing example runs end to end, prints the audit of every epoch, and
its plan thaws exactly one group per epoch without ever changing the optimizer's groups."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision import transforms

import paramgroups
from paramgroups import Plan
from paramgroups.report import COLUMNS

from conftest import run_example

ROOT = Path(__file__).resolve().parents[1]
PROGRESSIVE = ROOT / "examples" / "progressive_unfreeze_resnet18.py"
TOPS = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]  # model order
THAW = [["fc"], ["layer4"], ["layer3"], ["layer2"], ["layer1", "conv1", "bn1"]]  # one per epoch
EPOCHS, LR = 5, 0.01


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=10)


def _trainable(epoch: int) -> list[str]:
    return [m for group in THAW[:epoch + 1] for m in group]


def _ramp(into: int, spe: int) -> float:
    """A one-epoch linear warmup from 0.1, ``into`` steps in."""
    return 0.1 + 0.9 * min(into / spe, 1.0)


def _lr(top: str, step: int, spe: int) -> float:
    """LR of a trainable top-level module at ``step``: LR x (1-epoch warmup, then cosine to 0 at
    EPOCHS), x 0.5 ** k for the group thawed at epoch k, ramped up over its first epoch."""
    f = _ramp(step, spe) if step < spe else 0.5 * (1 + math.cos(math.pi * (step - spe) / ((EPOCHS - 1) * spe)))
    k = next(k for k, group in enumerate(THAW) if top in group)
    return LR * f * (0.5 ** k * _ramp(step - k * spe, spe) if k else 1.0)


@pytest.mark.slow  # runs the example script in a subprocess
def test_progressive_unfreeze_runs():
    proc = run_example(PROGRESSIVE, "--epochs", EPOCHS, "--batches-per-epoch", 2, "--batch-size", 2,
                       "--image-size", 32, "--seed", 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for epoch in range(EPOCHS):
        start = lines.index(f"== epoch {epoch}/{EPOCHS}: trainable {', '.join(_trainable(epoch))} ==")
        assert lines[start + 1].split() == ["name", "shape", "numel", "module", "group", "base", "lr",
                                            f"lr@epoch{epoch}", "wd", "trainable", "rules"]
        rows = [line.split() for line in lines[start + 3:start + 3 + len(TOPS)]]
        assert [r[0] for r in rows] == TOPS  # collapsed to depth 1: one row per top-level module
        assert lines[start + 3 + len(TOPS)] == ""
        got = {r[0]: r[COLUMNS.index("trainable")] for r in rows}
        assert got == {t: "yes" if t in _trainable(epoch) else "no" for t in TOPS}, epoch
        lrs = {r[0]: r[COLUMNS.index("lr")] for r in rows if r[0] in _trainable(epoch)}
        assert lrs == {t: f"{_lr(t, epoch * 2, 2):g}" for t in _trainable(epoch)}, epoch
    losses = [line.split("  loss ") for line in lines if line.startswith("epoch ") and "  loss " in line]
    assert [head for head, _ in losses] == [f"epoch {e}" for e in range(EPOCHS)]
    assert all(math.isfinite(float(loss)) for _, loss in losses)
    assert lines[-2:] == [f"epoch {EPOCHS - 1}  loss {losses[-1][1]}", ""]


def _bn_statistics(model: nn.Module, tops: list[str]) -> list[str]:
    """State-dict names of the running statistics of the BatchNorm layers under ``tops``."""
    return [f"{name}.{buf}" for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and name.split(".")[0] in tops
            for buf in ("running_mean", "running_var", "num_batches_tracked")]


@pytest.mark.slow  # five epochs of a ResNet-18
def test_progressive_unfreeze_training_moves_only_what_is_thawed():
    """The example's plan and training loop, epoch by epoch: the audit agrees with
    requires_grad, parameters and BatchNorm statistics of frozen layers never move, thawed
    statistics do, and the optimizer keeps its 10 groups at every step."""
    ns = runpy.run_path(str(PROGRESSIVE), run_name="progressive_unfreeze_resnet18")
    spe = 2
    torch.manual_seed(1)
    model = _resnet18()
    plan = ns["make_plan"](EPOCHS)
    optimizer = plan.optimizer(model)
    scheduler = plan.scheduler(optimizer, steps_per_epoch=spe)
    counts, step = [], scheduler.step

    def step_and_count() -> None:
        step()
        counts.append(len(optimizer.param_groups))

    scheduler.step = step_and_count
    data = torchvision.datasets.FakeData(size=spe * 2, image_size=(3, 32, 32), num_classes=10,
                                         transform=transforms.ToTensor(), random_offset=1)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    assert len(_bn_statistics(model, TOPS)) == 3 * 20
    for epoch in range(EPOCHS):
        report = paramgroups.audit(model, plan, at=epoch, steps_per_epoch=spe)
        assert {r["name"] for r in report.parameters if r["trainable"]} == {
            n for n, p in model.named_parameters() if p.requires_grad}, epoch
        before = paramgroups.snapshot(model)
        assert math.isfinite(ns["train_epoch"](model, optimizer, scheduler, loader))
        moved = set(paramgroups.changed(model, before))
        frozen = [t for t in TOPS if t not in _trainable(epoch)]
        params = [n for n, _ in model.named_parameters() if n.split(".")[0] in frozen]
        assert moved.intersection(params) == set(), epoch
        assert moved.intersection(_bn_statistics(model, frozen)) == set(), epoch
        assert set(_bn_statistics(model, _trainable(epoch))) <= moved, epoch
    assert counts == [10] * (EPOCHS * spe)


@pytest.mark.parametrize("spe", [1, 3])
def test_progressive_unfreeze_plan_thaws_one_group_per_epoch(spe):
    ns = runpy.run_path(str(PROGRESSIVE), run_name="progressive_unfreeze_resnet18")
    plan, shorthand = ns["make_plan"](EPOCHS), Plan.progressive(ns["GROUPS"], every=1, lr=LR)
    model, twin = _resnet18(), _resnet18()
    optimizer, twin_opt = plan.optimizer(model), shorthand.optimizer(twin)
    scheduler = plan.scheduler(optimizer, steps_per_epoch=spe)
    twin_sched = shorthand.scheduler(twin_opt, steps_per_epoch=spe)
    names = [g["name"] for g in optimizer.param_groups]
    assert len(names) == 10 and sum("thaws at epoch" in n for n in names) == 8  # only fc's 2 start trainable
    top_of = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
    model.train()

    def frozen(m: nn.Module) -> list[str]:
        return [t for t in TOPS if not any(p.requires_grad for p in m.get_submodule(t).parameters())]

    for step in range(EPOCHS * spe + 2):  # two steps past the end: nothing else changes
        epoch = step // spe
        want = [t for t in TOPS if t not in _trainable(epoch)]
        assert frozen(model) == frozen(twin) == want, step  # same timeline as Plan.progressive
        assert [g["name"] for g in optimizer.param_groups] == names  # no group added or removed
        held = {n.split(".")[0] for n, m in model.named_modules()
                if isinstance(m, nn.BatchNorm2d) and not m.training}
        assert held == set(want) - {"conv1"}, step  # frozen BatchNorms stay in eval mode under train()
        lrs: dict[str, set[float]] = {}
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            assert group["lr"] == lr
            for p in group["params"]:
                lrs.setdefault(top_of[id(p)], set()).add(lr)
        for top in _trainable(epoch) if step < EPOCHS * spe else ():
            assert len(lrs[top]) == 1, (step, top)
            assert lrs[top].pop() == pytest.approx(_lr(top, step, spe), rel=1e-12), (step, top)
        optimizer.step(), twin_opt.step()  # no gradients: changes nothing, keeps torch's order check quiet
        scheduler.step(), twin_sched.step()
