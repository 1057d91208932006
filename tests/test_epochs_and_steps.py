"""Epochs and steps: an epoch is ``steps_per_epoch`` optimizer steps, so a schedule given in
steps, stages given in epochs (whole or fractional) and ``inspect --at EPOCH`` all agree."""

from __future__ import annotations

import json

import pytest

from paramgroups import Plan, Rule, Stage
from paramgroups.schedules import Schedule
from paramgroups.timeline import Timeline

from conftest import run_cli as run
from stagenet import Net


def test_epochs_become_steps_for_step_schedules_too():
    plan = Plan(lr=0.1, schedule=Schedule("linear", total=300, unit="step"))
    t = Timeline.of(plan, None, steps_per_epoch=100)
    assert [t.factor(t.step_of(e)) * 0.1 for e in range(3)] == pytest.approx(
        [0.1, 0.1 * 2 / 3, 0.1 / 3], rel=1e-12)


def test_inspect_at_with_a_step_schedule_and_epoch_stages(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nschedule: {main: linear, total: 300, unit: step}\n"
                                     "rules: [{match: layer4, freeze: true}]\n"
                                     "stages: [{epoch: 1, unfreeze: layer4}]\n")
    code, out, _ = run(capsys, "inspect", "resnet18", "--rules", tmp_path / "p.yaml", "--at", 2,
                       "--steps-per-epoch", 100, "--format", "json")
    assert code == 0
    row = {r["name"]: r for r in json.loads(out)["parameters"]}["layer4.0.conv1.weight"]
    assert row["trainable"] is True and row["lr"] == pytest.approx(0.1 / 3, rel=1e-12)


def test_fractional_stage_epochs_never_act_early():
    model = Net()
    plan = Plan([Rule("layer1", freeze=True)], lr=0.1, stages=[Stage(epoch=0.5, unfreeze="layer1")])
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt, steps_per_epoch=3)
    seen = []
    for _ in range(4):
        seen.append(model.layer1[0].weight.requires_grad)
        opt.step()
        sched.step()
    assert seen == [False, False, True, True]  # epoch 0.5 of 3 steps is step 1.5: the first step after is 2
    plan = Plan([Rule("layer1", freeze=True)], lr=0.1, stages=[Stage(epoch=1.5, unfreeze="layer1")])
    sched = plan.scheduler(plan.optimizer(model))
    states = []
    for _ in range(3):
        states.append(model.layer1[0].weight.requires_grad)
        sched.optimizer.step()
        sched.step()
    assert states == [False, False, True]
