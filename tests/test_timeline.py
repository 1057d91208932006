"""The timeline: one answer to "every group's LR and frozen state at step k", equal to what the
scheduler sets on the optimizer, what the audit shows at an epoch and the schedule table."""

from __future__ import annotations

import math

import pytest
import torch

import stagenet
from paramgroups import Plan, Rule, Schedule, Stage, audit
from paramgroups.errors import PlanError
from paramgroups.report import schedule_table
from paramgroups.timeline import GroupState, Timeline

SPE = stagenet.STEPS_PER_EPOCH
STEPS = SPE * stagenet.EPOCHS


def _seen(opt: torch.optim.Optimizer) -> tuple[list[float], list[bool]]:
    """The optimizer as a step leaves it: each group's LR, and whether its parameters train
    (every group's parameters agree)."""
    flags = []
    for g in opt.param_groups:
        trains = {p.requires_grad for p in g["params"]}
        assert len(trains) == 1
        flags.append(trains.pop())
    return [g["lr"] for g in opt.param_groups], flags


def _step(opt: torch.optim.Optimizer, sched, k: int) -> None:
    """One step of a loop (no gradients: only what the scheduler sets is looked at); a plateau
    schedule sees a loss that stops improving, so it reduces."""
    opt.step()
    if sched.schedule.main == "plateau":
        sched.step(max(1.0 - k / 4, 0.0))
    else:
        sched.step()


def _run(schedule: str, stages: str) -> tuple[Plan, list[tuple[list[float], list[bool]]], list[int]]:
    """A staged run of stagenet: what the optimizer held at every step, and the plateau level."""
    _, opt, sched = stagenet.setup(schedule, stages)
    seen, levels = [_seen(opt)], [sched.plateau_level]
    for k in range(STEPS):
        _step(opt, sched, k)
        seen.append(_seen(opt))
        levels.append(sched.plateau_level)
    return stagenet.make_plan(schedule, stages), seen, levels


@pytest.mark.parametrize("schedule,stages", [("cosine", "progressive"), ("cosine", "warmup"),
                                             ("onecycle", "step"), ("step", "freeze"),
                                             ("plateau", "progressive")])
def test_the_timeline_is_what_the_scheduler_sets_step_by_step(schedule, stages):
    plan, seen, levels = _run(schedule, stages)
    res = plan.resolve(stagenet.Net())
    timeline = Timeline.of(plan, res, SPE)
    assert [t.name for t in timeline.groups] == [g.name for g in res.groups]
    for k, ((lrs, trains), level) in enumerate(zip(seen, levels)):
        state = timeline.state(k, level)
        assert [s.lr for s in state] == lrs, k  # exactly: one closed form
        assert [not s.frozen for s in state] == trains, k
        assert list(timeline.frozen(k)) == [s.frozen for s in state]
        by = timeline.frozen_by(k)
        for a, who in zip(res.assignments, by):
            if a.group is not None:
                assert (who is None) == trains[a.group], (k, a.record.name)


def test_the_audit_at_an_epoch_and_the_schedule_table_show_what_the_scheduler_set():
    plan, seen, _ = _run("cosine", "warmup")
    times = [0, 1, 2, 3, 3 + 1 / 3, 4, 5]
    for at in times:
        lrs, trains = seen[math.ceil(at * SPE - 1e-9)]
        report = audit(stagenet.Net(), plan, at=at, steps_per_epoch=SPE)
        assert [g["lr"] for g in report.groups] == lrs
        for row in report.parameters:
            assert row["trainable"] == trains[row["group"]], (at, row["name"])
            assert (row["frozen_by"] is None) == row["trainable"]
    headers, rows = schedule_table(plan, stagenet.Net(), stagenet.EPOCHS, SPE)
    assert headers[1:] == [g.name for g in plan.resolve(stagenet.Net()).groups]
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4, 5]
    for t, *cells in rows:
        lrs, trains = seen[t * SPE]
        assert cells == [lr if train else None for lr, train in zip(lrs, trains)]


def test_a_stage_warmup_ramps_inside_one_epoch():
    plan = stagenet.make_plan("cosine", "warmup")  # layer1 thaws at epoch 3 over 1 epoch, lr_mult 0.5
    timeline = Timeline.of(plan, plan.resolve(stagenet.Net()), SPE)
    i = next(i for i, g in enumerate(timeline.groups) if g.events and g.name.startswith("layer1"))
    assert [timeline.stage_factors(k)[i] for k in range(8, 14)] == [1.0, 0.0, 0.5 / 3, 1 / 3, 0.5, 0.5]
    assert [timeline.frozen(k)[i] for k in (8, 9)] == [True, False]
    assert timeline.state(9)[i] == GroupState(frozen=False, stage_factor=0.0, lr=0.0)


def test_next_change_is_the_next_stage_or_every_step_of_a_warmup():
    plan = stagenet.make_plan("cosine", "step")  # stem thaws at step 4 (warmup 2), layer2/1 at 7
    timeline = Timeline.of(plan, plan.resolve(stagenet.Net()), SPE)
    assert timeline.clock.steps == (4, 7) and timeline.clock.warmups == (2, 0)
    assert [timeline.next_change(k) for k in (0, 3, 4, 5, 6, 7, 100)] == [4, 4, 5, 6, 7, math.inf, math.inf]
    before = timeline.frozen(0)
    assert timeline.frozen(3) is before  # one quiet stretch: one answer
    assert timeline.frozen(4) is not before


def test_the_scheduler_asks_the_timeline_and_resumes_onto_it():
    _, opt, sched = stagenet.setup("cosine", "progressive")
    for k in range(7):
        _step(opt, sched, k)
    state = sched.state_dict()
    assert state["frozen_groups"] == [i for i, f in enumerate(sched.timeline.frozen(7)) if f] == [0]
    assert [s.lr for s in sched.stage_state()] == sched.get_last_lr()
    for k in range(7, STEPS):
        _step(opt, sched, k)
    _, again_opt, again = stagenet.setup("cosine", "progressive")
    again.load_state_dict(state)
    assert again.last_epoch == 7
    assert _seen(again_opt)[1] == [not f for f in again.timeline.frozen(7)]
    assert [s.lr for s in again.stage_state()] == [s.lr for s in sched.stage_state(7)]
    assert again.get_last_lr() == [s.lr for s in again.timeline.state(7)]


@pytest.mark.parametrize("epoch", [-1, float("nan"), float("inf"), "2", True, None])
def test_a_bad_epoch_to_look_at_is_refused(epoch):
    timeline = Timeline.of(stagenet.make_plan(), None, SPE)
    with pytest.raises(PlanError) as exc:
        timeline.step_of(epoch)
    assert str(exc.value) == f"the epoch to look at must be a finite number >= 0, got {epoch!r}"


def test_an_epoch_beyond_float_range_in_steps_is_refused():
    timeline = Timeline.of(stagenet.make_plan(), None, 10)
    with pytest.raises(PlanError, match=r"the epoch to look at, 1e\+308, times 10 steps per epoch is "
                                        r"beyond float range: look at an earlier epoch"):
        timeline.step_of(1e308)
    assert timeline.step_of(2.5) == 25 and timeline.step_of(0) == 0


def test_stages_the_scheduler_cannot_place_still_answer_step_zero():
    plan = Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], lr=0.1,
                stages=[Stage(epoch=2, unfreeze="layer2")], schedule=Schedule(unit="step"))
    res = plan.resolve(stagenet.Net())
    timeline = Timeline.of(plan, res)  # epoch stages, a step schedule, no steps_per_epoch
    assert [s.frozen for s in timeline.state(0)] == [g.frozen for g in res.groups]
    with pytest.raises(PlanError, match="stages in epochs need steps_per_epoch"):
        timeline.state(1)
    with pytest.raises(PlanError, match="stages in epochs need steps_per_epoch"):
        plan.scheduler(plan.optimizer(stagenet.Net()))
    assert audit(stagenet.Net(), plan).lr_at == "step 0"


def test_without_a_model_the_timeline_follows_the_base_lr():
    plan = Plan(lr=0.1, schedule=Schedule("step", step_size=2, gamma=0.5),
                stages=[Stage(epoch=1, unfreeze="fc")])
    timeline = Timeline.of(plan)
    assert [t.name for t in timeline.groups] == ["base lr"]
    assert [timeline.lrs(k) for k in range(5)] == [[0.1], [0.1], [0.05], [0.05], [0.025]]
