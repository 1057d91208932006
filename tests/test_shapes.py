"""The shape classes on their own: each closed form against torch's scheduler (its closed form
exactly, its recursive steps within rounding), each shape's own checks, the warmup piece, and
how Schedule builds and hides them."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle

import pytest
import torch
from torch.optim import lr_scheduler as L

from paramgroups import shapes
from paramgroups.errors import PlanError
from paramgroups.schedules import MAINS, NEEDS_TOTAL, Schedule, Warmup

REL = 1e-12
FLOOR = {"min_lr": None, "min_factor": 0.0}


def one_lr_optimizer(momentum: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=momentum)


# shape, torch scheduler on an optimizer whose lr is 1 (so its LR is our factor), steps
TORCH = {
    "step": (shapes.Step(step_size=3, gamma=0.5), lambda o: L.StepLR(o, 3, 0.5), 20),
    "multistep": (shapes.MultiStep(milestones=(2, 5, 9), gamma=0.3),
                  lambda o: L.MultiStepLR(o, [2, 5, 9], 0.3), 15),
    "exponential": (shapes.Exponential(gamma=0.93, warmup=0, total=None),
                    lambda o: L.ExponentialLR(o, 0.93), 30),
    "cosine": (shapes.Cosine(total=20, warmup=0, min_lr=None, min_factor=0.1),
               lambda o: L.CosineAnnealingLR(o, 20, eta_min=0.1), 21),
    "poly": (shapes.Poly(total=20, warmup=0, power=2.0, **FLOOR), lambda o: L.PolynomialLR(o, 20, 2.0), 25),
    "linear": (shapes.Linear(total=20, warmup=0, min_lr=None, min_factor=0.25),
               lambda o: L.LinearLR(o, 1.0, 0.25, 20), 25),
    "constant": (shapes.Constant(), lambda o: L.LambdaLR(o, lambda k: 1.0), 5),
    "cosine restarts": (shapes.CosineRestarts(period=3, mult=2, warmup=0, **FLOOR),
                        lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2), 40),
}


@pytest.mark.parametrize("name", TORCH)
def test_each_closed_form_equals_torch(name):
    shape, make, steps = TORCH[name]
    ref = make(one_lr_optimizer())
    for k in range(steps):
        ours = shape.factor(k, k, 1, 1.0, 0)
        assert ours == pytest.approx(ref.get_last_lr()[0], rel=REL, abs=1e-300), k  # recursive
        if hasattr(ref, "_get_closed_form_lr"):  # the same formula: the same float
            assert ours == ref._get_closed_form_lr()[0], k
        ref.optimizer.step(), ref.step()


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_lr_and_momentum_equal_torch_exactly(anneal):
    shape = shapes.OneCycle(total=30, warmup=0, pct_start=0.25, max_factor=1.0, div_factor=10,
                            final_div_factor=100, anneal=anneal, cycle_momentum=True,
                            base_momentum=0.8, max_momentum=0.9)
    opt = one_lr_optimizer(momentum=0.9)
    ref = L.OneCycleLR(opt, 1.0, total_steps=30, pct_start=0.25, anneal_strategy=anneal,
                       div_factor=10, final_div_factor=100, base_momentum=0.8, max_momentum=0.9)
    for k in range(30):
        assert shape.factor(k, k, 1, 1.0, 0) == opt.param_groups[0]["lr"], k
        assert shape.momentum(k, 1) == opt.param_groups[0]["momentum"], k
        opt.step(), ref.step()
    assert shape.peak() == 1.0 and shape.total_steps(4) == 120


def test_plateau_level_is_reduce_lr_on_plateau_after_that_many_reductions():
    shape = shapes.Plateau(gamma=0.5, min_lr=None, min_factor=0.05)
    ref = L.ReduceLROnPlateau(one_lr_optimizer(), factor=0.5, patience=0, min_lr=0.05)
    ref.step(1.0)  # the first metric is the best so far
    for level in range(7):
        assert shape.factor(0, 0, 1, 1.0, level) == pytest.approx(ref.get_last_lr()[0], rel=REL)
        ref.step(1.0)  # never better: one reduction per step
    assert shapes.Plateau(gamma=0.5, min_lr=0.01, min_factor=0.0).factor(0, 0, 1, 0.1, 10) == 0.01 / 0.1


@pytest.mark.parametrize("shape,start_factor", [("linear", 0.1), ("constant", 0.25)])
def test_warmup_equals_torch(shape, start_factor):
    warmup = Warmup(4, shape, start_factor, None)
    ref = (L.LinearLR if shape == "linear" else L.ConstantLR)(one_lr_optimizer(), start_factor,
                                                                total_iters=4)
    for k in range(4):
        assert warmup.factor(k, 1.0) == pytest.approx(ref.get_last_lr()[0], rel=REL), k
        ref.optimizer.step(), ref.step()
    assert Warmup(4, "linear", None, 0.01).start_factor(0.1) == pytest.approx(0.1)
    assert Warmup(4, "linear", None, None).start_factor(0.1) == 0.0


def test_shapes_after_a_warmup_start_where_it_ends():
    cos = shapes.Cosine(total=12, warmup=2, **FLOOR)
    assert [cos.factor(t, t, 1, 1.0, 0) for t in (0, 2, 7, 12, 20)] == pytest.approx([1, 1, 0.5, 0, 0])
    assert shapes.Exponential(gamma=0.5, warmup=2, total=None).factor(4, 4, 1, 1.0, 0) == 0.25
    assert shapes.Linear(total=6, warmup=2, **FLOOR).factor(4, 4, 1, 1.0, 0) == 0.5
    step = shapes.Step(step_size=2, gamma=0.1)  # whole units: steps 0-7 of 4 per epoch are epoch 0-1
    assert [step.factor(k / 4, k, 4, 1.0, 0) for k in (7, 8)] == [1.0, 0.1]


# -- each shape's own checks: how its fields fit together ------------------------------------

SHAPE_ERRORS = [
    (lambda: shapes.Step(step_size=None, gamma=0.1), "schedule: main step needs step_size"),
    (lambda: shapes.Step(step_size=0, gamma=0.1), "schedule: step_size must be > 0"),
    (lambda: shapes.MultiStep(milestones=None, gamma=0.1), "schedule: main multistep needs milestones"),
    (lambda: shapes.WSD(total=10, warmup=0, decay=None, decay_shape="cosine", **FLOOR),
     "schedule: main wsd needs decay"),
    (lambda: shapes.WSD(total=10, warmup=5, decay=6, decay_shape="cosine", **FLOOR),
     "schedule: wsd's warmup (5) and decay (6) must fit in total (10)"),
    (lambda: shapes.Exponential(gamma=0.9, warmup=3, total=3),
     "schedule: total (3) must be longer than warmup (3)"),
    (lambda: shapes.Cosine(total=2, warmup=3, **FLOOR), "schedule: total (2) must be longer than warmup (3)"),
    (lambda: shapes.Poly(total=1, warmup=1, power=1.0, **FLOOR), "must be longer than warmup (1)"),
    (lambda: shapes.Linear(total=0.5, warmup=1, **FLOOR), "schedule: total (0.5) must be longer"),
]
ONECYCLE = dict(total=10, warmup=0, pct_start=0.3, max_factor=1.0, div_factor=25.0,
                final_div_factor=1e4, anneal="cos", cycle_momentum=True, base_momentum=0.85,
                max_momentum=0.95)
SHAPE_ERRORS += [
    (lambda: shapes.OneCycle(**{**ONECYCLE, "warmup": 1}),
     "schedule: onecycle has its own warm-up phase (pct_start); set warmup: 0"),
    (lambda: shapes.OneCycle(**{**ONECYCLE, "pct_start": 1}), "schedule: pct_start must be in (0, 1), got 1"),
    (lambda: shapes.OneCycle(**{**ONECYCLE, "final_div_factor": 0}),
     "schedule: final_div_factor divides the LR: it must be > 0, got 0"),
    (lambda: shapes.OneCycle(**{**ONECYCLE, "div_factor": 1e-320}), "leave float range: raise the divisors"),
    (lambda: Warmup(2, "linear", 0.1, 0.01), "schedule: give warmup_start or warmup_lr, not both"),
    (lambda: Warmup(2, "linear", 1.5, None), "schedule: warmup_start is a factor in [0, 1], got 1.5"),
    (lambda: Warmup(2, "exponential", 0.0, None), "an exponential warmup needs a start above 0"),
]


@pytest.mark.parametrize("make,message", SHAPE_ERRORS)
def test_each_shape_checks_its_own_fields(make, message):
    with pytest.raises(PlanError) as exc:
        make()
    assert message in str(exc.value)


def test_onecycle_without_room_for_a_phase_says_so_when_asked():
    shape = shapes.OneCycle(**{**ONECYCLE, "total": 2})
    with pytest.raises(PlanError, match="onecycle over 2 steps with pct_start 0.3 leaves a phase without steps"):
        shape.factor(0, 0, 1, 1.0, 0)
    assert shape.factor(0, 0, 4, 1.0, 0) == pytest.approx(1 / 25)  # 8 steps: room for both


def test_an_exponential_warmup_of_length_0_needs_no_start():
    assert Warmup(0, "exponential", None, None).start_factor(1.0) == 0.0


# -- how Schedule builds and hides them ------------------------------------------------------

def test_mains_and_needs_total_come_from_the_shape_classes():
    assert MAINS == ("constant", "step", "multistep", "exponential", "cosine", "poly", "linear",
                     "onecycle", "plateau", "wsd")
    assert NEEDS_TOTAL == ("cosine", "poly", "linear", "onecycle", "wsd")
    assert not shapes.CosineRestarts.needs_total  # a cosine with restarts runs without an end


@pytest.mark.parametrize("kwargs,cls", [
    ({"main": "constant"}, shapes.Constant),
    ({"main": "step", "step_size": 2}, shapes.Step),
    ({"main": "multistep", "milestones": [1]}, shapes.MultiStep),
    ({"main": "exponential"}, shapes.Exponential),
    ({"main": "cosine", "total": 4}, shapes.Cosine),
    ({"main": "cosine", "restarts": {"period": 2}}, shapes.CosineRestarts),
    ({"main": "poly", "total": 4}, shapes.Poly),
    ({"main": "linear", "total": 4}, shapes.Linear),
    ({"main": "onecycle", "total": 4}, shapes.OneCycle),
    ({"main": "plateau"}, shapes.Plateau),
    ({"main": "wsd", "total": 4, "decay": 1}, shapes.WSD),
])
def test_schedule_hands_its_main_fields_to_one_shape(kwargs, cls):
    schedule = Schedule(**kwargs, gamma=0.5, power=3.0, min_factor=0.1, pct_start=0.5)
    shape = schedule._shape
    assert type(shape) is cls
    for f in dataclasses.fields(shape):  # every shape field is the schedule's own field
        expected = {**schedule.restarts}[f.name] if cls is shapes.CosineRestarts and f.name in (
            "period", "mult") else getattr(schedule, f.name)
        assert getattr(shape, f.name) == expected, f.name


def test_the_parts_are_not_fields():
    a, b = Schedule("cosine", total=10, warmup=2), Schedule("cosine", total=10, warmup=2)
    assert a == b and hash(a) == hash(b) and "Cosine(" not in repr(a)
    assert a.to_dict() == {"main": "cosine", "total": 10, "warmup": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.total = 3
    longer = dataclasses.replace(a, total=20)  # a new schedule builds its own shape
    assert longer._shape.total == 20 and a._shape.total == 10
    assert longer.factor(11, base_lr=1.0) == pytest.approx((1 + math.cos(math.pi * 9 / 18)) / 2)
    for twin in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert twin == a and [twin.factor(k, base_lr=1.0) for k in range(12)] == [
            a.factor(k, base_lr=1.0) for k in range(12)]


def test_fields_of_another_main_are_ignored():
    plain = Schedule("step", step_size=2)
    busy = Schedule("step", step_size=2, total=5, power=3.0, pct_start=0.9, min_factor=0.5,
                    mode="max", anneal="linear", max_factor=7.0)
    assert [busy.factor(k, base_lr=1.0) for k in range(8)] == [plain.factor(k, base_lr=1.0) for k in range(8)]
