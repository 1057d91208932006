"""Stages: boundaries, thawed-group warmup, norm statistics, resume in a second process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, Stage, audit
from paramgroups.errors import PlanError, UnmatchedRuleError
from paramgroups.schedules import Schedule

import stagenet
from stagenet import Net


def trainable(model: nn.Module) -> list[str]:
    return sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})


def test_progressive_thaws_top_down_at_epoch_boundaries():
    model = Net()
    plan = Plan.progressive(["fc", "layer2", ["layer1", "stem"]], every=2, lr=0.1)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    seen = []
    for epoch in range(6):
        seen.append(trainable(model))
        assert len(opt.param_groups) == 3  # never adds or removes a group
        opt.step()
        sched.step()
    assert seen == [["fc"], ["fc"], ["fc", "layer2"], ["fc", "layer2"],
                    ["fc", "layer1", "layer2", "stem"], ["fc", "layer1", "layer2", "stem"]]
    assert [g["name"] for g in opt.param_groups] == [
        "layer1,stem, thaws at epoch 4", "layer2, thaws at epoch 2", "fc"]


def test_parameters_in_no_group_stay_frozen():
    model = Net()
    Plan.progressive(["fc", "layer2"], every=1).optimizer(model)
    assert trainable(model) == ["fc"]


def test_stage_warmup_and_lr_mult_on_top_of_the_schedule():
    model = Net()
    plan = Plan([Rule(["stem", "layer1", "layer2"], freeze=True)], lr=1.0,
                schedule=Schedule("exponential", gamma=0.5),
                stages=[Stage(epoch=2, unfreeze="layer2", lr_mult=0.1, warmup=1)])
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt, steps_per_epoch=4)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["stem,layer1,layer2, frozen", "layer2, thaws at epoch 2", "default"]
    layer2, fc = 1, 2
    lrs = []
    for _ in range(16):
        lrs.append(sched.get_last_lr())
        opt.step()
        sched.step()
    for k, lr in enumerate(lrs):
        assert lr[fc] == pytest.approx(0.5 ** (k / 4), rel=1e-12)
        ramp = 0.0 if k < 8 else min((k - 8) / 4, 1.0)
        expected = 0.5 ** (k / 4) * 0.1 * ramp if k >= 8 else 0.5 ** (k / 4)
        assert lr[layer2] == pytest.approx(expected, rel=1e-12), k
    assert lrs[12][layer2] == pytest.approx(0.5 ** 3 * 0.1, rel=1e-12)


def test_frozen_parameters_get_no_optimizer_state_until_they_thaw():
    torch.manual_seed(0)
    model = Net()
    plan = Plan.progressive(["fc", "**"], every=1, lr=0.1, optimizer="adamw")
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert model.stem[0].weight.grad is None and model.stem[0].weight not in opt.state
    assert model.fc.weight in opt.state
    sched.step()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert model.stem[0].weight in opt.state


def test_freeze_stage_freezes_again():
    model = Net()
    plan = Plan(lr=0.1, stages=[Stage(epoch=1, freeze="layer1"), Stage(epoch=3, unfreeze="layer1")])
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    states = []
    for _ in range(4):
        states.append(model.layer1[0].weight.requires_grad)
        opt.step(), sched.step()
    assert states == [True, False, False, True]


def test_frozen_norm_statistics_are_held_and_thaw_with_the_layer():
    torch.manual_seed(0)
    model = Net()
    plan = Plan.progressive(["fc", "**"], every=1, lr=0.1)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    model.train()  # the user's usual call must not wake the frozen statistics
    assert model.stem[1].training is False and model.training is True
    before = model.stem[1].running_mean.clone()
    model(torch.randn(4, 3, 8, 8))
    assert torch.equal(model.stem[1].running_mean, before)
    keys = set(model.state_dict())
    opt.step(), sched.step()
    assert model.stem[1].training is True
    model(torch.randn(4, 3, 8, 8))
    assert not torch.equal(model.stem[1].running_mean, before)
    assert set(model.state_dict()) == keys == set(Net().state_dict())
    model.eval()
    assert model.stem[1].training is False


def test_bn_train_keeps_torch_behaviour():
    model = Net()
    Plan([Rule("stem", freeze=True)], bn="train").optimizer(model)
    model.train()
    before = model.stem[1].running_mean.clone()
    model(torch.randn(4, 3, 8, 8))
    assert not torch.equal(model.stem[1].running_mean, before)


def test_norm_trainable_keeps_norm_parameters_training():
    model = Net()
    Plan([Rule(["stem", "layer1"], freeze=True)], norm_trainable=True).optimizer(model)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["layer1.0.bias", "layer1.0.weight", "stem.0.bias", "stem.0.weight"]
    assert model.stem[1].training is True


def test_held_norms_work_under_torch_compile():
    torch.manual_seed(0)
    model = Net()
    Plan([Rule("stem", freeze=True)]).optimizer(model)
    compiled = torch.compile(model, backend="eager")
    compiled.train()
    before = model.stem[1].running_mean.clone()
    compiled(torch.randn(4, 3, 8, 8))
    assert torch.equal(model.stem[1].running_mean, before)
    assert not torch.equal(model.layer1[1].running_mean, torch.zeros(4))


def test_audit_shows_norm_statistics():
    model = Net()
    plan = Plan.progressive(["fc", "layer2"], every=1, lr=0.1)
    rows = {r["name"]: r for r in audit(model, plan).parameters}
    assert rows["stem.1.weight"]["stats"] == "frozen"
    assert rows["stem.0.weight"]["stats"] is None and rows["fc.bias"]["stats"] is None
    at1 = {r["name"]: r for r in audit(model, plan, at=1).parameters}
    assert at1["layer2.1.bias"]["stats"] == "updating" and at1["layer2.1.bias"]["trainable"] is True
    assert {r["name"]: r for r in audit(model, Plan.progressive(["fc"], bn="train")).parameters}[
        "stem.1.weight"]["stats"] == "updating"


def test_everything_frozen_is_an_error_unless_a_stage_thaws():
    with pytest.raises(PlanError, match="no stage thaws any"):
        Plan([Rule("**", freeze=True)]).optimizer(Net())
    Plan([Rule("**", freeze=True)], stages=[Stage(epoch=2, unfreeze="fc")]).optimizer(Net())


@pytest.mark.parametrize("kwargs,message", [
    ({"unfreeze": "fc"}, "exactly one of epoch or step"),
    ({"epoch": 1, "step": 3, "unfreeze": "fc"}, "exactly one of epoch or step"),
    ({"epoch": 1}, "needs unfreeze or freeze"),
    ({"epoch": -1, "unfreeze": "fc"}, "stage epoch must be a finite number >= 0"),
    ({"step": 1.5, "unfreeze": "fc"}, "whole number"),
    ({"epoch": 1, "unfreeze": 3}, "must be a pattern or a list of patterns"),
    ({"epoch": 1, "unfreeze": "fc", "warmup_start": 2}, "warmup_start is a factor"),
])
def test_stage_errors(kwargs, message):
    with pytest.raises(PlanError) as exc:
        Stage(**kwargs)
    assert message in str(exc.value)


def test_plan_level_stage_errors(tmp_path):
    with pytest.raises(PlanError, match="mix epoch= and step="):
        Plan(stages=[Stage(epoch=1, unfreeze="fc"), Stage(step=5, unfreeze="fc")])
    with pytest.raises(UnmatchedRuleError, match="stage 0: thaw 'layer3' matches no parameter; closest names: layer"):
        Plan(stages=[Stage(epoch=1, unfreeze="layer3")]).resolve(Net())
    plan = Plan(stages=[Stage(step=5, unfreeze="fc")])
    with pytest.raises(PlanError, match="step= stages need a scheduler stepped every iteration"):
        plan.scheduler(plan.optimizer(Net()))
    (tmp_path / "p.yaml").write_text("stages:\n  - epoch: 1\n    unfreze: fc\n")
    with pytest.raises(PlanError, match=r"p.yaml:1: stage 0: unknown stage field 'unfreze' \(did you mean 'unfreeze'\?\)"):
        Plan.load(tmp_path / "p.yaml")


def test_stages_round_trip_through_plan_files(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "lr: 0.1\nrules:\n  - match: '**'\n    freeze: true\n  - match: fc\n    freeze: false\n"
        "stages:\n  - epoch: 2\n    unfreeze: layer2\n    warmup: 1\n  - epoch: 4\n    unfreeze: [layer1, stem]\n"
        "    lr_mult: 0.1\nbn: freeze\nnorm_trainable: false\n")
    plan = Plan.load(tmp_path / "p.yaml")
    assert plan.stages == (Stage(epoch=2, unfreeze="layer2", warmup=1),
                           Stage(epoch=4, unfreeze=("layer1", "stem"), lr_mult=0.1))
    assert Plan.from_dict(plan.to_dict()) == plan


def test_scheduler_needs_the_plans_own_optimizer():
    plan = Plan.progressive(["fc", "layer2"])
    with pytest.raises(PlanError, match="needs the optimizer from plan.optimizer"):
        plan.scheduler(torch.optim.SGD(Net().parameters(), lr=0.1))


CASES = [(schedule, "progressive") for schedule in stagenet.SCHEDULES] + [
    ("cosine", "warmup"), ("multistep", "step"), ("constant", "freeze"), ("plateau", "freeze")]


@pytest.mark.slow  # trains every case twice and resumes in a subprocess
def test_resume_in_a_second_process_is_bitwise_for_every_schedule_and_stage_kind(tmp_path):
    """Train, save at a random step, finish in a new process: equal to the uninterrupted run."""
    import random

    torch.use_deterministic_algorithms(True)
    total = stagenet.STEPS_PER_EPOCH * stagenet.EPOCHS
    rng = random.Random(20261123)
    expected, jobs = {}, []
    for n, (schedule, stages) in enumerate(CASES):
        model, opt, sched = stagenet.setup(schedule, stages)
        stagenet.train(model, opt, sched, 0, total)
        expected[n] = ({k: v.clone() for k, v in model.state_dict().items()}, sched.get_last_lr(),
                       trainable(model))
        stop = rng.randrange(1, total)
        model, opt, sched = stagenet.setup(schedule, stages)
        stagenet.train(model, opt, sched, 0, stop)
        stagenet.save(str(tmp_path / f"ckpt{n}.pt"), model, opt, sched)
        jobs += [schedule, stages, str(tmp_path / f"ckpt{n}.pt"), str(stop), str(tmp_path / f"out{n}.pt")]
    proc = subprocess.run([sys.executable, stagenet.__file__, *jobs], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for n, (schedule, stages) in enumerate(CASES):
        params, lrs, frozen = expected[n]
        resumed = torch.load(tmp_path / f"out{n}.pt", weights_only=True)
        for key, value in params.items():
            assert torch.equal(resumed["model"][key], value), (schedule, stages, key)
        assert [g["lr"] for g in resumed["opt"]["param_groups"]] == lrs, (schedule, stages)
        model2, _, sched2 = stagenet.setup(schedule, stages)
        sched2.load_state_dict(resumed["sched"])
        assert trainable(model2) == frozen, (schedule, stages)
