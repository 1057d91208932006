"""Schedules: step-by-step parity with torch's schedulers, warmups, resume, plateau, seeds."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as L

from paramgroups import Plan, Rule
from paramgroups.errors import PlanError
from paramgroups.schedules import Schedule
from paramgroups.timeline import Timeline

REL = 1e-12


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))


def plan_for(schedule: Schedule, **kw) -> Plan:
    return Plan([Rule("1", lr=0.3)], lr=0.1, optimizer=kw.pop("optimizer", "sgd"),
                schedule=schedule, **{"momentum": 0.9, **kw})


def torch_optimizer(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": list(m[0].parameters()), "lr": 0.1},
                            {"params": list(m[1].parameters()), "lr": 0.3}], lr=0.1, momentum=0.9)


def lr_sequences(schedule, make_reference, steps, **kw):
    m = model()
    opt = plan_for(schedule).optimizer(m)
    ours = Plan.scheduler(plan_for(schedule), opt, **kw)
    ref_opt = torch_optimizer(m)
    ref = make_reference(ref_opt)
    a, b = [], []
    for _ in range(steps):
        a.append(ours.get_last_lr())
        b.append(ref.get_last_lr())
        opt.step(), ref_opt.step(), ours.step(), ref.step()
    return a, b


PARITY = {
    "step": (Schedule("step", step_size=7, gamma=0.5), lambda o: L.StepLR(o, 7, 0.5), 40),
    "multistep": (Schedule("multistep", milestones=[5, 20, 33], gamma=0.3),
                  lambda o: L.MultiStepLR(o, [5, 20, 33], 0.3), 40),
    "exponential": (Schedule("exponential", gamma=0.93), lambda o: L.ExponentialLR(o, 0.93), 40),
    "cosine": (Schedule("cosine", total=60), lambda o: L.CosineAnnealingLR(o, 60), 60),
    "cosine+linear warmup": (
        Schedule("cosine", total=60, warmup=5, warmup_start=0.1),
        lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=5), L.CosineAnnealingLR(o, 55)],
                                 milestones=[5]), 60),
    "linear": (Schedule("linear", total=50, min_factor=0.2), lambda o: L.LinearLR(o, 1.0, 0.2, 50), 50),
    "poly": (Schedule("poly", total=50, power=2.0), lambda o: L.PolynomialLR(o, 50, 2.0), 50),
    "cosine restarts": (Schedule("cosine", restarts={"period": 7, "mult": 2}),
                        lambda o: L.CosineAnnealingWarmRestarts(o, 7, 2), 60),
    "onecycle": (Schedule("onecycle", total=60), lambda o: L.OneCycleLR(o, [0.1, 0.3], total_steps=60), 60),
    "onecycle linear": (Schedule("onecycle", total=40, pct_start=0.25, anneal="linear", div_factor=10,
                                 final_div_factor=100),
                        lambda o: L.OneCycleLR(o, [0.1, 0.3], total_steps=40, pct_start=0.25,
                                               anneal_strategy="linear", div_factor=10,
                                               final_div_factor=100), 40),
    "multistep+warmup (chained)": (
        Schedule("multistep", milestones=[10, 20], warmup=5, warmup_start=0.1),
        lambda o: L.ChainedScheduler([L.LinearLR(o, 0.1, total_iters=5), L.MultiStepLR(o, [10, 20], 0.1)]),
        30),
    "constant warmup": (Schedule("constant", warmup=4, warmup_start=0.25, warmup_shape="constant"),
                        lambda o: L.ConstantLR(o, 0.25, total_iters=4), 10),
}


@pytest.mark.parametrize("name", PARITY)
def test_parity_with_torch_every_step_every_group(name):
    schedule, reference, steps = PARITY[name]
    ours, theirs = lr_sequences(schedule, reference, steps)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=REL, abs=1e-300), f"step {k}"
    assert ours[0][1] / ours[0][0] == pytest.approx(3.0)  # group ratio kept


def test_onecycle_cycles_momentum_like_torch():
    m = model()
    plan = plan_for(Schedule("onecycle", total=30))
    opt = plan.optimizer(m)
    ours = plan.scheduler(opt)
    ref_opt = torch_optimizer(m)
    ref = L.OneCycleLR(ref_opt, [0.1, 0.3], total_steps=30)
    for k in range(30):
        assert [g["momentum"] for g in opt.param_groups] == pytest.approx(
            [g["momentum"] for g in ref_opt.param_groups], rel=REL), k
        opt.step(), ref_opt.step(), ours.step(), ref.step()


def test_onecycle_cycles_adam_beta1():
    m = model()
    plan = Plan(lr=0.1, optimizer="adamw", schedule=Schedule("onecycle", total=20))
    opt = plan.optimizer(m)
    sched = plan.scheduler(opt)
    ref_opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    ref = L.OneCycleLR(ref_opt, 0.1, total_steps=20)
    for _ in range(19):
        opt.step(), ref_opt.step(), sched.step(), ref.step()
        assert opt.param_groups[0]["betas"][0] == pytest.approx(ref_opt.param_groups[0]["betas"][0], rel=REL)
        assert opt.param_groups[0]["betas"][1] == 0.999


def test_steps_per_epoch_smooth_warmup_and_milestones_on_epoch_start():
    s = Schedule("multistep", milestones=[2], gamma=0.1, warmup=1, warmup_start=0.0)
    f = [s.factor(k, base_lr=1.0, steps_per_epoch=4) for k in range(13)]
    assert f[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert f[7] == 1.0 and f[8] == pytest.approx(0.1)  # epoch 2 starts at step 8
    cos = Schedule("cosine", total=2)
    g = [cos.factor(k, base_lr=1.0, steps_per_epoch=4) for k in range(9)]
    assert g == pytest.approx([(1 + math.cos(math.pi * k / 8)) / 2 for k in range(9)], rel=REL)


@pytest.mark.parametrize("shape,expected", [
    ("linear", [0.1, 0.4, 0.7, 1.0]),
    ("constant", [0.1, 0.1, 0.1, 1.0]),
    ("exponential", [0.1, 0.1 * 10 ** (1 / 3), 0.1 * 10 ** (2 / 3), 1.0]),
    ("cosine", [0.1 + 0.9 * (1 - math.cos(math.pi * k / 3)) / 2 for k in range(3)] + [1.0]),
])
def test_warmup_shapes(shape, expected):
    s = Schedule("constant", warmup=3, warmup_start=0.1, warmup_shape=shape)
    assert [s.factor(k, base_lr=1.0) for k in range(4)] == pytest.approx(expected, rel=REL)


def test_warmup_lr_is_absolute_for_the_base_and_keeps_ratios():
    plan = plan_for(Schedule("constant", warmup=2, warmup_lr=0.01))
    sched = plan.scheduler(plan.optimizer(model()))
    assert sched.get_last_lr() == pytest.approx([0.01, 0.03])


def test_min_lr_keeps_group_ratios():
    plan = plan_for(Schedule("cosine", total=10, min_lr=0.01))
    sched = plan.scheduler(plan.optimizer(model()))
    for _ in range(10):
        sched.optimizer.step()
        sched.step()
    assert sched.get_last_lr() == pytest.approx([0.01, 0.03], rel=REL)


def test_zero_warmup_is_no_warmup_and_one_epoch_schedule_ends_at_final_value():
    assert [Schedule("cosine", total=5, warmup=0).factor(k, base_lr=1.0) for k in range(6)] == \
        [Schedule("cosine", total=5).factor(k, base_lr=1.0) for k in range(6)]
    one = Schedule("cosine", total=1, min_factor=0.1)
    assert [one.factor(k, base_lr=1.0) for k in (0, 1, 2)] == pytest.approx([1.0, 0.1, 0.1])
    lin = Schedule("linear", total=1, min_factor=0.0, unit="step")
    assert lin.factor(1, base_lr=1.0) == 0.0


@pytest.mark.parametrize("schedule", [
    Schedule("cosine", total=12, warmup=3, warmup_start=0.1),
    Schedule("multistep", milestones=[4, 8], warmup=2, warmup_lr=0.02),
    Schedule("onecycle", total=12),
])
@pytest.mark.parametrize("stop", [2, 7])  # mid-warmup and mid-decay
def test_resume_continues_the_exact_sequence(schedule, stop):
    def fresh():
        m = model()
        plan = plan_for(schedule)
        opt = plan.optimizer(m)
        return opt, plan.scheduler(opt)

    opt, sched = fresh()
    full = []
    for _ in range(12):
        full.append(sched.get_last_lr())
        opt.step(), sched.step()
    opt, sched = fresh()
    for _ in range(stop):
        opt.step(), sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt2, sched2 = fresh()
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    resumed = [sched2.get_last_lr()]
    for _ in range(stop, 11):
        opt2.step(), sched2.step()
        resumed.append(sched2.get_last_lr())
    assert resumed == full[stop:]
    assert [g["lr"] for g in opt2.param_groups] == full[-1]


def test_resume_refuses_another_schedule():
    m = model()
    opt = plan_for(Schedule("cosine", total=10)).optimizer(m)
    state = plan_for(Schedule("cosine", total=10)).scheduler(opt).state_dict()
    other = plan_for(Schedule("cosine", total=20)).scheduler(opt)
    with pytest.raises(PlanError, match="another schedule"):
        other.load_state_dict(state)


def test_plateau_matches_reduce_lr_on_plateau():
    metrics = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    m = model()
    plan = plan_for(Schedule("plateau", gamma=0.5, patience=2, cooldown=1))
    opt = plan.optimizer(m)
    ours = plan.scheduler(opt)
    ref_opt = torch_optimizer(m)
    ref = L.ReduceLROnPlateau(ref_opt, factor=0.5, patience=2, cooldown=1)
    for k, metric in enumerate(metrics):
        ours.step(metric)
        ref.step(metric)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [g["lr"] for g in ref_opt.param_groups], rel=REL), k
    assert opt.param_groups[0]["lr"] < 0.1


def test_plateau_state_survives_resume():
    plan = plan_for(Schedule("plateau", gamma=0.5, patience=0))
    sched = plan.scheduler(plan.optimizer(model()))
    for metric in (1.0, 2.0, 3.0):
        sched.step(metric)
    state = sched.state_dict()
    again = plan.scheduler(plan.optimizer(model()))
    again.load_state_dict(state)
    assert again.plateau_level == 2 and again.get_last_lr() == sched.get_last_lr()
    with pytest.raises(PlanError, match="step\\(metric\\) is for plateau"):
        plan_for(Schedule("cosine", total=3)).scheduler(plan.optimizer(model())).step(1.0)


# -- the seeds' hand-written schedulers, rewritten as plans -------------------------------


class GradualWarmupScheduler(L.LRScheduler):
    """A faithful re-implementation of ildoonet/pytorch-gradual-warmup-lr (v0.3.2) for
    non-plateau after-schedulers: the same ``get_lr``/``step`` logic, line for line."""

    def __init__(self, optimizer, multiplier, total_epoch, after_scheduler=None):
        self.multiplier, self.total_epoch = multiplier, total_epoch
        self.after_scheduler, self.finished = after_scheduler, False
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch > self.total_epoch:
            if self.after_scheduler:
                if not self.finished:
                    self.after_scheduler.base_lrs = [b * self.multiplier for b in self.base_lrs]
                    self.finished = True
                return self.after_scheduler.get_last_lr()
            return [b * self.multiplier for b in self.base_lrs]
        if self.multiplier == 1.0:
            return [b * (float(self.last_epoch) / self.total_epoch) for b in self.base_lrs]
        return [b * ((self.multiplier - 1.0) * self.last_epoch / self.total_epoch + 1.0) for b in self.base_lrs]

    def step(self, epoch=None):
        if self.finished and self.after_scheduler:
            self.after_scheduler.step(None if epoch is None else epoch - self.total_epoch)
            self._last_lr = self.after_scheduler.get_last_lr()
        else:
            super().step(epoch)


def gradual_warmup_lrs(base_lr, multiplier, total_epoch, epochs, step_size, gamma):
    """The LR of every epoch under the seeds' convention: ``scheduler.step()`` once per epoch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = GradualWarmupScheduler(opt, multiplier, total_epoch, L.StepLR(opt, step_size, gamma))
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_gradual_warmup_scheduler_as_a_plan():
    # lr 0 warmed up to 0.01 over 5 epochs, then StepLR(step_size=3, gamma=0.5) after it: the
    # after-scheduler starts counting one epoch after the warmup ends, so its decays land at
    # 5 + 1 + 3k (the README's recipe: milestones shifted by the warmup length plus one)
    expected = gradual_warmup_lrs(0.01, 1, 5, 20, 3, 0.5)
    plan = Plan(lr=0.01, schedule=Schedule("multistep", milestones=[9, 12, 15, 18], gamma=0.5,
                                           warmup=5, warmup_start=0.0))
    t = Timeline.of(plan)
    assert [t.factor(t.step_of(e)) * 0.01 for e in range(20)] == pytest.approx(expected, rel=REL)
    assert expected[8:10] == pytest.approx([0.01, 0.005])  # the first decay: epoch 9, not 8


def test_gradual_warmup_with_a_multiplier_falls_back_after_warmup():
    # multiplier > 1: the library hands its after-scheduler the LR it had before warming up, so
    # from epoch total_epoch + 1 on the curve restarts at the base LR. The plan gives the curve
    # the scheduler means (warm up to 10x, then decay from there); they agree up to the switch.
    expected = gradual_warmup_lrs(0.01, 10, 5, 20, 3, 0.5)
    plan = Plan(lr=0.1, schedule=Schedule("multistep", milestones=[9, 12, 15, 18], gamma=0.5,
                                          warmup=5, warmup_start=0.1))
    t = Timeline.of(plan)
    got = [t.factor(t.step_of(e)) * 0.1 for e in range(20)]
    assert got[:6] == pytest.approx(expected[:6], rel=REL)
    assert got[6:] == pytest.approx([10 * x for x in expected[6:]], rel=REL)


def warmup_multifactor_reference(base_lr, factor, warmup_epochs, milestones, warmup_lr, strategy, e):
    """WarmupMultiFactorScheduler(optimizer, factor, warmup_epochs, milestones, warmup_lr, strategy)."""
    if e < warmup_epochs:
        if strategy == "constant":
            return warmup_lr
        p = e / warmup_epochs
        if strategy == "linear":
            return warmup_lr + (base_lr - warmup_lr) * p
        return warmup_lr + (base_lr - warmup_lr) * (1 - math.cos(math.pi * p)) / 2
    return base_lr * factor ** sum(1 for m in milestones if m <= e)


@pytest.mark.parametrize("strategy,shape", [("linear", "linear"), ("cos", "cosine"), ("constant", "constant")])
def test_warmup_multifactor_scheduler_as_a_plan(strategy, shape):
    plan = Plan(lr=0.04, schedule=Schedule("multistep", milestones=[10, 15], gamma=0.1, warmup=5,
                                           warmup_lr=0.001, warmup_shape=shape))
    expected = [warmup_multifactor_reference(0.04, 0.1, 5, [10, 15], 0.001, strategy, e) for e in range(20)]
    t = Timeline.of(plan)
    assert [t.factor(t.step_of(e)) * 0.04 for e in range(20)] == pytest.approx(expected, rel=REL)


def test_adjust_learning_rate_loop_as_a_plan():
    # the classic: lr = base * 0.1 ** (epoch // 30)
    plan = Plan(lr=0.1, schedule=Schedule("step", step_size=30))
    t = Timeline.of(plan)
    assert [t.factor(t.step_of(e)) * 0.1 for e in range(0, 100, 10)] == pytest.approx(
        [0.1 * 0.1 ** (e // 30) for e in range(0, 100, 10)], rel=REL)


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"main": "cosin"}, "unknown main 'cosin' (did you mean 'cosine'?)"),
    ({"main": "cosine"}, "main cosine needs total"),
    ({"main": "step"}, "main step needs step_size"),
    ({"main": "multistep", "milestones": [5, 3]}, "milestones must increase"),
    ({"main": "constant", "warmup": 2, "warmup_shape": "exponential"}, "exponential warmup needs a start above 0"),
    ({"main": "constant", "warmup_start": 0.1, "warmup_lr": 0.01}, "not both"),
    ({"main": "cosine", "total": 5, "warmup": 5}, "must be longer than warmup"),
    ({"main": "onecycle", "total": 5, "warmup": 1}, "onecycle has its own warm-up"),
    ({"main": "constant", "unit": "epochs"}, "unknown unit 'epochs' (did you mean 'epoch'?)"),
    ({"main": "step", "restarts": {"period": 2}}, "restarts only apply to main: cosine"),
    ({"main": "cosine", "restarts": {"period": 0}}, "period > 0"),
    ({"main": "constant", "warmup": -1}, "warmup must be a finite number >= 0"),
    ({"main": "constant", "gamma": float("nan")}, "gamma must be a finite number"),
    ({"main": "plateau", "patience": 1.5}, "patience must be a whole number"),
])
def test_schedule_errors(kwargs, message):
    with pytest.raises(PlanError) as exc:
        Schedule(**kwargs)
    assert message in str(exc.value)


def test_schedule_section_in_plan_files(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "lr: 0.1\nschedule:\n  main: cosine\n  total: 10\n  warmup: 2\n  warmup_start: 0.1\nrules: []\n")
    plan = Plan.load(tmp_path / "p.yaml")
    assert plan.schedule == Schedule("cosine", total=10, warmup=2, warmup_start=0.1)
    assert Plan.from_dict(plan.to_dict()) == plan
    (tmp_path / "bad.yaml").write_text("lr: 0.1\nschedule:\n  main: cosine\n  totl: 10\n")
    with pytest.raises(PlanError, match=r"bad.yaml:2: schedule: unknown field 'totl' \(did you mean 'total'\?\)"):
        Plan.load(tmp_path / "bad.yaml")


def test_steps_per_epoch_must_be_positive():
    plan = plan_for(Schedule("cosine", total=3))
    with pytest.raises(PlanError, match="steps_per_epoch must be a whole number >= 1"):
        plan.scheduler(plan.optimizer(model()), steps_per_epoch=0)
