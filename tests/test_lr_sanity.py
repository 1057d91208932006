"""Every LR finite and >= 0 (or the plan does not load), closed-form restarts, plateau NaNs,
resume into another plan refused, onecycle momentum decided per group."""

from __future__ import annotations

import io
import math
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim import lr_scheduler as L

import stagenet
from conftest import run_cli as run
from paramgroups import Plan, Rule, Stage
from paramgroups.errors import PlanError
from paramgroups.scheduler import PlanScheduler
from paramgroups.schedules import Schedule, cosine_restart_position
from paramgroups.timeline import Timeline

REL = 1e-12


def two_linears() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))


def bounded(fn, budget: int = 300):
    """``fn()``, failing once it has run ``budget`` lines of paramgroups.schedules: a cost
    measured without a clock, so a loop as long as the step fails fast instead of hanging."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if not frame.f_code.co_filename.endswith("schedules.py"):
            return None
        if event == "line":
            count += 1
            if count > budget:
                raise AssertionError(f"more than {budget} lines of schedules.py for one step")
        return tracer

    sys.settrace(tracer)
    try:
        return fn()
    finally:
        sys.settrace(None)


# -- values that break an LR are refused at load, with the usual located error --------------

LOAD_ERRORS = [
    ("lr: 0.1\nschedule: {main: onecycle, total: 10, div_factor: 0}\n",
     "schedule: div_factor divides the LR: it must be > 0, got 0"),
    ("lr: 0.1\nschedule: {main: onecycle, total: 10, final_div_factor: 0}\n",
     "schedule: final_div_factor divides the LR: it must be > 0, got 0"),
    ("lr: 0\nschedule: {main: cosine, total: 10, min_lr: 0.001}\n",
     "schedule: min_lr is relative to the plan's lr, which is 0"),
    ("lr: 0\nschedule: {main: cosine, total: 10, warmup: 1, warmup_lr: 0.1, min_lr: 0}\n",
     "schedule: warmup_lr and min_lr are relative to the plan's lr, which is 0"),
    ("lr: 0.1\nschedule: {main: step, step_size: 1, gamma: 1e300}\n",
     "schedule: gamma is the factor each decay multiplies the LR by, in [0, 1]; got 1e+300"),
    ("lr: 0.1\nschedule: {main: exponential, gamma: 1.5}\n", "in [0, 1]; got 1.5"),
    ("lr: 0.1\nschedule: {main: onecycle, total: 10, div_factor: 1e-320}\n",
     "schedule: onecycle's LR factors (max_factor 1 / div_factor"),
    ("lr: 0.1\nschedule: {main: onecycle, total: 10, final_div_factor: 1e-320}\n",
     "leave float range: raise the divisors"),
    ("lr: 0.1\nschedule: {main: cosine, total: 10, min_lr: 1.0}\n",
     "schedule: min_lr (1) is above the plan's lr (0.1): the schedule would rise towards it"),
    ("lr: 1e-10\nschedule: {main: cosine, total: 10, warmup: 2, warmup_lr: 1e300}\n",
     "schedule: the LR would reach lr 1e-10 x inf"),
    ("lr: 1e300\nschedule: {main: onecycle, total: 10, max_factor: 1e10}\n",
     "schedule: the LR would reach lr 1e+300 x 1e+10"),
]


@pytest.mark.parametrize("text,message", LOAD_ERRORS)
def test_breaking_values_fail_at_load_located(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PlanError) as exc:
        Plan.load(path)
    assert str(exc.value).startswith(f"{path}:2: ")
    assert message in str(exc.value)


@pytest.mark.parametrize("text,message", LOAD_ERRORS[:9:2])
def test_cli_schedule_exits_2_with_one_line(capsys, tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, out, err = run(capsys, "schedule", "--rules", path, "--epochs", 4)
    assert (code, out) == (2, "")
    assert err.startswith(f"paramgroups: error: {path}:2: schedule: ") and err.count("\n") == 1
    assert message in err


def test_edge_values_that_keep_every_lr_finite_still_load():
    s = Schedule("constant", warmup=4, warmup_start=1e-320, warmup_shape="exponential")
    f = [s.factor(k, base_lr=1.0) for k in range(6)]  # 1 / 1e-320 overflowed to inf, then NaN
    assert f[0] == 1e-320 and f[2] == pytest.approx(1e-160, rel=1e-9) and f[4:] == [1.0, 1.0]
    plan = Plan(lr=0.1, schedule={"main": "cosine", "total": 10, "min_lr": 0.1})
    t = Timeline.of(plan)
    assert [t.factor(t.step_of(e)) for e in range(12)] == [1.0] * 12  # min_lr == lr: flat, allowed


def test_group_lr_beyond_float_range_at_the_peak_fails_at_resolve():
    plan = Plan([Rule("1", lr=1e300)], lr=0.1, schedule={"main": "onecycle", "total": 10,
                                                          "max_factor": 1e10})
    with pytest.raises(PlanError, match=r"group '.*': its lr 1e\+300 x stage lr_mult 1 x the "
                                        r"schedule's peak factor 1e\+10 is beyond float range"):
        plan.resolve(two_linears())
    staged = Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], lr=1e300,
                  stages=[Stage(epoch=1, unfreeze="layer1", lr_mult=1e10)])
    with pytest.raises(PlanError, match=r"its lr 1e\+300 x stage lr_mult 1e\+10 x"):
        staged.resolve(stagenet.Net())


def test_hand_built_optimizer_with_a_huge_lr_is_refused_before_any_step():
    opt = torch.optim.SGD(two_linears().parameters(), lr=1e300)
    with pytest.raises(PlanError, match="group '0': its lr 1e\\+300"):
        PlanScheduler(opt, Schedule("onecycle", total=10, max_factor=1e10), base_lr=1.0)
    assert opt.param_groups[0]["lr"] == 1e300  # untouched


@pytest.mark.parametrize("decay,message", [
    (1e300, "layer_decay 1e+300 over 7 layers gives the first layer a scale of 1e+300**6, beyond "
            "float range: use a decay closer to 1"),
    (1e-300, "layer_decay 1e-300 over 7 layers gives the first layer a scale of 1e-300**6, beyond "
            "float range: use a decay closer to 1"),
])
def test_layer_decay_whose_scales_leave_float_range(capsys, tmp_path, decay, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"lr: 0.1\nlayer_decay: {decay}\nlayers: 'layer{{i}}'\n")
    code, out, err = run(capsys, "inspect", "resnet18", "--rules", path)
    assert (code, err) == (2, f"paramgroups: error: {path}:2: {message}\n")
    # the same decay is fine where the model has fewer layers (1e300 ** 1 is a float)
    plan = Plan(lr=1e-300, layer_decay=decay, layers=["0", "1"])
    assert [g.lr for g in plan.resolve(two_linears()).groups] == [1e-300 * decay, 1e-300]


@pytest.mark.parametrize("main", [
    "{main: step, step_size: 3}", "{main: exponential, gamma: 0.9}",
    "{main: cosine, restarts: {period: 1, mult: 1}}", "{main: cosine, restarts: {period: 7, mult: 2}}",
    "{main: onecycle, total: 10}", "{main: multistep, milestones: [1, 2]}"])
def test_inspect_at_a_huge_epoch(capsys, tmp_path, main):
    path = tmp_path / "p.yaml"
    path.write_text(f"lr: 0.1\nschedule: {main}\n")
    code, out, err = bounded(lambda: run(capsys, "inspect", "resnet18", "--rules", path, "--at", "1e300",
                                         "--format", "json"), budget=2000)
    assert (code, err) == (0, "")
    import json

    lrs = [g["lr"] for g in json.loads(out)["groups"]]
    assert lrs and all(math.isfinite(x) and 0 <= x <= 0.1 for x in lrs)


def test_at_times_steps_per_epoch_beyond_float_range_is_bad_input(capsys, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("lr: 0.1\nschedule: {main: cosine, total: 10}\n")
    code, out, err = run(capsys, "inspect", "resnet18", "--rules", path, "--at", "1e300",
                         "--steps-per-epoch", "1000000000")
    assert (code, err) == (2, "paramgroups: error: the epoch to look at, 1e+300, times 1000000000 "
                              "steps per epoch is beyond float range: look at an earlier epoch\n")


NUMBERS = st.sampled_from([0, 1e-320, 1e-300, 1e-10, 0.3, 0.5, 1, 2, 7, 1e10, 1e300])
STEPS = [0, 1, 2, 3, 5, 17, 100, 10 ** 6, 10 ** 300]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(main=st.sampled_from(["constant", "step", "multistep", "exponential", "cosine", "poly",
                             "linear", "onecycle", "plateau"]),
       fields=st.dictionaries(st.sampled_from(
           ["total", "warmup", "warmup_start", "warmup_lr", "step_size", "gamma", "min_lr", "min_factor",
            "power", "max_factor", "div_factor", "final_div_factor", "pct_start"]), NUMBERS, max_size=6),
       restarts=st.one_of(st.none(), st.tuples(NUMBERS, NUMBERS)),
       shape=st.sampled_from(["linear", "constant", "exponential", "cosine"]),
       lr=NUMBERS, spe=st.sampled_from([None, 7]))
def test_every_lr_of_every_plan_that_loads_is_finite(main, fields, restarts, shape, lr, spe):
    data = {"main": main, "warmup_shape": shape, **fields}
    if main == "multistep":
        data["milestones"] = [1, 5]
    if restarts is not None and main == "cosine":
        data["restarts"] = {"period": restarts[0], "mult": restarts[1]}
    try:
        plan = Plan(lr=lr, schedule=data)
    except PlanError:
        return
    s = plan.schedule
    for step in STEPS:
        for level in (0, 3, 10 ** 4):
            try:
                f = bounded(lambda: s.factor(step, base_lr=lr, steps_per_epoch=spe, plateau_level=level))
            except PlanError as exc:  # onecycle too short for its steps, or a total left to a
                # trainer helper: known only then
                assert "leaves a phase without steps" in str(exc) or "needs total" in str(exc)
                return
            assert math.isfinite(f) and 0 <= f <= s.peak_factor(lr), (step, level, f)
            assert math.isfinite(lr * f)


# -- cosine restarts in closed form --------------------------------------------------------


@pytest.mark.parametrize("period,mult", [(7, 2), (3, 3), (1, 2), (5, 1), (2, 4), (1, 1)])
def test_restarts_equal_torch_every_step_every_group(period, mult):
    m = two_linears()
    plan = Plan([Rule("1", lr=0.3)], lr=0.1, momentum=0.9,
                schedule=Schedule("cosine", restarts={"period": period, "mult": mult}))
    opt = plan.optimizer(m)
    ours = plan.scheduler(opt)
    ref_opt = torch.optim.SGD([{"params": list(m[0].parameters()), "lr": 0.1},
                               {"params": list(m[1].parameters()), "lr": 0.3}], lr=0.1, momentum=0.9)
    ref = L.CosineAnnealingWarmRestarts(ref_opt, period, mult)
    for k in range(400):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=REL, abs=1e-300), k
        opt.step(), ref_opt.step(), ref.step()
        bounded(ours.step, budget=150)  # a closed form: step 400 costs what step 1 does


@pytest.mark.parametrize("period,mult", [(1, 1), (1, 2), (1e-320, 1), (7, 1.5)])
@pytest.mark.parametrize("step", [10, 10 ** 5, 10 ** 300], ids=["10", "1e5", "1e300"])
def test_restarts_cost_the_same_at_any_step(period, mult, step):
    s = Schedule("cosine", restarts={"period": period, "mult": mult})
    f = bounded(lambda: s.factor(step, base_lr=1.0), budget=120)
    assert 0 <= f <= 1


def test_restart_position_at_the_edges_of_float_range():
    assert bounded(lambda: cosine_restart_position(1e300, 1, 1)) == (0.0, 1.0)
    pos, length = bounded(lambda: cosine_restart_position(1.7e308, 1e-300, 1.0000001))
    assert math.isfinite(pos) and pos >= 0 and length > 0
    assert cosine_restart_position(62.0, 2, 2) == (0.0, 64.0)  # 2 + 4 + ... + 32 = 62: a restart
    assert cosine_restart_position(61.5, 2, 2) == (31.5, 32.0)


# -- plateau: a NaN metric is a bad epoch, as in ReduceLROnPlateau -------------------------


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_nan_and_inf_metrics_match_torch(mode):
    nan, inf = float("nan"), float("inf")
    metrics = [nan, 1.0, nan, nan, 0.9, inf, -inf, nan, 0.5, nan, nan, nan, 2.0, nan]
    m = two_linears()
    plan = Plan(lr=0.1, momentum=0.9, schedule=Schedule("plateau", gamma=0.5, patience=1, mode=mode))
    opt = plan.optimizer(m)
    ours = plan.scheduler(opt)
    ref_opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    ref = L.ReduceLROnPlateau(ref_opt, mode=mode, factor=0.5, patience=1)
    for k, metric in enumerate(metrics):
        opt.step(), ref_opt.step()
        ours.step(metric)
        ref.step(metric)
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=REL), k
        assert ours.num_bad_epochs == ref.num_bad_epochs, k
    assert opt.param_groups[0]["lr"] < 0.1 / 4


# -- resume refuses a state saved from another plan -----------------------------------------


def _saved(sched) -> dict:
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _staged(stages=None, rules=None, spe=3):
    plan = Plan(rules or [Rule("**", freeze=True), Rule("fc", freeze=False)], lr=0.05, momentum=0.9,
                schedule=Schedule("cosine", total=6),
                stages=stages or [Stage(epoch=2, unfreeze="layer2")])
    opt = plan.optimizer(stagenet.Net())
    return plan.scheduler(opt, steps_per_epoch=spe)


def test_resume_into_the_same_plan_loads_with_weights_only():
    sched = _staged()
    for _ in range(7):
        sched.optimizer.step(), sched.step()
    state = _saved(sched)
    assert state["stages"] == [{"epoch": 2, "unfreeze": "layer2"}] and state["steps_per_epoch"] == 3
    assert state["groups"] == [g["name"] for g in sched.optimizer.param_groups]
    again = _staged()
    again.load_state_dict(state)
    assert again.last_epoch == 7 and again.get_last_lr() == sched.get_last_lr()


@pytest.mark.parametrize("other,message", [
    (lambda: _staged(stages=[Stage(epoch=3, unfreeze="layer2")]),
     "cannot resume: stage 0 differs: saved {'epoch': 2, 'unfreeze': 'layer2'}, this plan "
     "{'epoch': 3, 'unfreeze': 'layer2'}"),
    (lambda: _staged(stages=[Stage(epoch=2, unfreeze="layer2"), Stage(epoch=4, unfreeze="layer1")]),
     "cannot resume: the saved scheduler had 1 stages; this plan has 2: was it built from another plan?"),
    (lambda: _staged(spe=5),
     "cannot resume: the saved scheduler stepped with steps_per_epoch=3; this one has 5: pass the "
     "same steps_per_epoch"),
    (lambda: _staged(rules=[Rule("**", freeze=True), Rule("fc", freeze=False), Rule("fc.bias", lr=0.01)]),
     "cannot resume: the saved scheduler had 3 groups; this plan has 4: was it built from another plan?"),
    (lambda: _staged(rules=[Rule("**", freeze=True), Rule("fc", freeze=False, group="head")]),
     "cannot resume: group 2 differs: saved 'fc', this plan 'head'"),
])
def test_resume_from_another_plan_says_what_differs(other, message):
    sched = _staged()
    for _ in range(7):
        sched.optimizer.step(), sched.step()
    state = _saved(sched)
    target = other()
    before = (target.last_epoch, target.timeline.clock, target.get_last_lr())
    with pytest.raises(PlanError) as exc:
        target.load_state_dict(state)
    assert str(exc.value) == message
    assert (target.last_epoch, target.timeline.clock, target.get_last_lr()) == before


# -- onecycle cycles momentum / beta1 per group ---------------------------------------------


def test_onecycle_momentum_per_group_like_torch_where_a_group_has_momentum():
    m = two_linears()
    plan = Plan([Rule("1", lr=0.3, momentum=0.0)], lr=0.1, momentum=0.9,
                schedule=Schedule("onecycle", total=20))
    opt = plan.optimizer(m)
    sched = plan.scheduler(opt)
    ref_opt = torch.optim.SGD([{"params": list(m[0].parameters()), "lr": 0.1},
                               {"params": list(m[1].parameters()), "lr": 0.3, "momentum": 0.0}],
                              lr=0.1, momentum=0.9)
    ref = L.OneCycleLR(ref_opt, [0.1, 0.3], total_steps=20)
    for k in range(19):
        assert opt.param_groups[0]["momentum"] == pytest.approx(ref_opt.param_groups[0]["momentum"], rel=REL), k
        assert opt.param_groups[1]["momentum"] == 0.0, k  # torch sets it too; the plan leaves it
        assert sched.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=REL), k
        opt.step(), ref_opt.step(), sched.step(), ref.step()
    assert ref_opt.param_groups[1]["momentum"] > 0  # torch turned momentum on for that group


class Mixed(torch.optim.Optimizer):
    """Groups of two kinds in one optimizer (as a router emits): ``betas`` or ``momentum``."""

    def __init__(self, groups):
        super().__init__(groups, {"lr": 0.1})

    def step(self, closure=None):
        return None


def test_onecycle_cycles_beta1_and_momentum_each_in_its_own_group():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    opt = Mixed([{"params": m[0].parameters(), "betas": (0.9, 0.99)},
                 {"params": m[1].parameters(), "momentum": 0.9},
                 {"params": m[2].parameters()}])
    sched = PlanScheduler(opt, Schedule("onecycle", total=15), base_lr=0.1)
    adam = torch.optim.AdamW(m[0].parameters(), lr=0.1, betas=(0.9, 0.99))
    sgd = torch.optim.SGD(m[1].parameters(), lr=0.1, momentum=0.9)
    refs = [L.OneCycleLR(adam, 0.1, total_steps=15), L.OneCycleLR(sgd, 0.1, total_steps=15)]
    for k in range(14):
        assert opt.param_groups[0]["betas"][0] == pytest.approx(adam.param_groups[0]["betas"][0], rel=REL), k
        assert opt.param_groups[0]["betas"][1] == 0.99
        assert opt.param_groups[1]["momentum"] == pytest.approx(sgd.param_groups[0]["momentum"], rel=REL), k
        assert set(opt.param_groups[2]) == {"params", "lr", "initial_lr"}, k
        opt.step(), sched.step()
        for r in refs:
            r.optimizer.step(), r.step()


# -- torch's LRScheduler contract -----------------------------------------------------------


def _constant_pair(lr):
    """The same two-group optimizer under a plan's constant schedule and under torch's LambdaLR."""
    out = []
    for make in (lambda o: PlanScheduler(o, Schedule(), base_lr=0.1), lambda o: L.LambdaLR(o, lambda k: 1.0)):
        m = two_linears()
        opt = torch.optim.SGD([{"params": m[0].parameters(), "lr": lr},
                               {"params": m[1].parameters(), "lr": 0.3}], lr=0.1)
        out.append((opt, make(opt)))
    return out


@pytest.mark.parametrize("optimizer_first", [True, False])
def test_the_step_keeps_torchs_counters_and_call_order_warnings(optimizer_first):
    seen = []
    for opt, sched in _constant_pair(0.1):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for _ in range(4):
                if optimizer_first:
                    opt.step()
                sched.step()
        seen.append(([str(w.message) for w in record], sched.last_epoch, sched._step_count,
                     sched.get_last_lr(), [g["lr"] for g in opt.param_groups]))
    assert seen[0] == seen[1]
    assert seen[0][1:] == (4, 5, [0.1, 0.3], [0.1, 0.3])
    assert len(seen[0][0]) == (0 if optimizer_first else 1)  # "Detected call of lr_scheduler.step() before..."


def test_a_tensor_lr_is_filled_in_place_and_get_last_lr_copies_it():
    (ours_opt, ours), (ref_opt, ref) = _constant_pair(torch.tensor(0.1))
    tensor = ours_opt.param_groups[0]["lr"]
    for _ in range(3):
        ours_opt.step(), ours.step()
        ref_opt.step(), ref.step()
    assert ours_opt.param_groups[0]["lr"] is tensor and float(tensor) == float(torch.tensor(0.1))
    assert ours.get_last_lr()[0] is not tensor and torch.equal(ours.get_last_lr()[0], tensor)
    assert [float(x) for x in ours.get_last_lr()] == [float(x) for x in ref.get_last_lr()]
