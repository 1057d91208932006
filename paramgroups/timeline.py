"""The state of a plan at step k: every group's LR and frozen flag, as one closed form.

A :class:`Timeline` is the one answer to "what does group i train with at scheduler step k":
the scheduler sets the optimizer from it, and the audit (``inspect --at``), the ``schedule``
table, its plot and ``diff --at`` read it. A group's LR at step k is ``its LR x the schedule's
factor(k) x its stage factor(k)``; its frozen flag and stage factor change only at the steps of
the stages that act on it (and every step inside a stage's warmup), so the stage part is
computed once per quiet stretch (until :meth:`Timeline.next_change`) and reused.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import ParamgroupsError, PlanError
from .schedules import Schedule
from .stages import Event, Stage, first_step, stage_state, stage_steps
from .values import describe, is_finite_number

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan
    from .resolution import Resolution


@dataclass(frozen=True)
class Track:
    """What the timeline follows of one optimizer group: its name, its LR before schedule and
    stages, whether it is frozen at the start, and the stage events that change that."""

    name: str
    lr: Any  # a float, or the tensor LR of a capturable/fused group
    frozen: bool = False
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class GroupState:
    """One group at one step: frozen or not, the stage factor on its LR, and the LR itself
    (``Track.lr x schedule factor x stage_factor``; a frozen group's LR does not move it)."""

    frozen: bool
    stage_factor: float
    lr: Any


@dataclass(frozen=True)
class StageClock:
    """Each stage's first scheduler step and its warmup, in scheduler steps."""

    steps: tuple[int, ...]
    warmups: tuple[int, ...]


@dataclass(frozen=True)
class _Stretch:
    """The stage part of the state over steps ``[start, end)``, where no stage acts or ramps."""

    start: int
    end: float
    frozen: tuple[bool, ...]
    factors: tuple[float, ...]


class Timeline:
    """Every group's LR and frozen state at every scheduler step, for a schedule and stages.

    ``groups`` are :class:`Track`-like (``name``, ``lr``, ``frozen``, ``events``: a plan's
    resolved groups are), ``assignments`` the resolved parameters (``events``, ``frozen``,
    ``frozen_by``) for :meth:`frozen_by`. The scheduler steps once per epoch, or once per
    iteration when ``steps_per_epoch`` is given or the schedule's unit is ``step``.
    ``located`` wraps schedule errors in the plan file's location (:meth:`of` passes it).
    """

    def __init__(self, stages: Sequence[Stage], schedule: Schedule, base_lr: float,
                 groups: Sequence[Any], assignments: Sequence[Any] = (),
                 steps_per_epoch: int | None = None,
                 located: Callable[[], AbstractContextManager[Any]] = nullcontext):
        self.stages = tuple(stages)
        self.schedule = schedule
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.groups = tuple(Track(g.name, g.lr, g.frozen, tuple(g.events)) for g in groups)
        self.assignments = tuple(assignments)
        self._located = located
        # The clock in steps of one iteration (one epoch when steps_per_epoch is unset): the
        # scheduler's own clock whenever that one exists. It may not (epoch stages with a step
        # schedule and no steps_per_epoch); then only step 0 can be asked, where just the stages
        # at time 0 have acted, in any unit.
        self._start_clock = StageClock(*map(tuple, stage_steps(self.stages, "step", steps_per_epoch or 1)))
        try:
            stage_steps(self.stages, schedule.unit, steps_per_epoch)
            self._placed = True
        except PlanError:
            self._placed = False
        self._stretch: _Stretch | None = None

    @classmethod
    def of(cls, plan: "Plan", resolution: "Resolution | None" = None,
           steps_per_epoch: int | None = None) -> "Timeline":
        """The timeline of ``plan`` resolved as ``resolution``; without one, a single track:
        the plan's schedule on its base LR (what a plan says before it meets a model, whose
        parameters its stages would select)."""
        schedule = plan.schedule or Schedule()
        if resolution is None:
            return cls((), schedule, plan.base_lr, [Track("base lr", plan.base_lr)],
                       steps_per_epoch=steps_per_epoch, located=plan._in_file)
        return cls(plan.stages, schedule, plan.base_lr, resolution.groups, resolution.assignments,
                   steps_per_epoch, located=plan._in_file)

    # -- the clock ----------------------------------------------------------------------------

    @property
    def clock(self) -> StageClock:
        """Each stage's step and warmup on the scheduler's clock; a PlanError when the stages
        cannot be placed on it (epoch stages with a step schedule and no ``steps_per_epoch``,
        step stages stepped once per epoch)."""
        if not self._placed:
            stage_steps(self.stages, self.schedule.unit, self.steps_per_epoch)  # raises why not
        return self._start_clock

    def _clock_at(self, step: int) -> StageClock:
        return self._start_clock if step <= 0 else self.clock

    def step_of(self, epoch: float) -> int:
        """The first scheduler step of ``epoch`` (an epoch is a step when the scheduler steps
        once per epoch, or for a step schedule without ``steps_per_epoch``)."""
        if not is_finite_number(epoch) or epoch < 0:
            raise PlanError(f"the epoch to look at must be a finite number >= 0, got {describe(epoch)}")
        spe = self.steps_per_epoch
        if not math.isfinite(epoch * (spe or 1)):
            raise PlanError(f"the epoch to look at, {epoch:g}, times {spe} steps per epoch "
                            "is beyond float range: look at an earlier epoch")
        return first_step(epoch, spe)

    def next_change(self, step: int) -> float:
        """The first step after ``step`` at which a stage may change a group's state: the next
        stage's step, ``step + 1`` inside a stage warmup (the ramp moves every step), ``inf``
        when no stage is left."""
        clock = self._clock_at(step)
        nxt = math.inf
        for s, w in zip(clock.steps, clock.warmups):
            if s <= step < s + w:
                return step + 1
            if s > step:
                nxt = min(nxt, s)
        return nxt

    # -- the state ----------------------------------------------------------------------------

    def factor(self, step: int, plateau_level: int = 0) -> float:
        """The schedule's LR factor at ``step`` after ``plateau_level`` plateau reductions."""
        try:
            return self.schedule.factor(step, base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch,
                                        plateau_level=plateau_level)
        except ParamgroupsError:
            with self._located():  # a total left to a trainer: the error names the plan file
                raise

    def _stages_at(self, step: int) -> _Stretch:
        stretch = self._stretch
        if stretch is not None and stretch.start <= step < stretch.end:
            return stretch  # no stage acts or ramps in between: the same state
        clock = self._clock_at(step)
        states = [stage_state(g.events, self.stages, g.frozen, step, clock.steps, clock.warmups)
                  for g in self.groups]
        end = self.next_change(step) if self._placed else step + 1  # past step 0 the clock refuses
        stretch = _Stretch(step, end, tuple(f for f, _ in states), tuple(x for _, x in states))
        self._stretch = stretch
        return stretch

    def frozen(self, step: int) -> tuple[bool, ...]:
        """Per group, whether it is frozen at ``step`` (one tuple object per quiet stretch, so
        ``is`` tells a caller that nothing changed)."""
        return self._stages_at(step).frozen

    def stage_factors(self, step: int) -> tuple[float, ...]:
        """Per group, the factor its stages put on its LR at ``step`` (``lr_mult``, ramped
        inside the stage's warmup; 1 until a stage thaws it)."""
        return self._stages_at(step).factors

    def state(self, step: int, plateau_level: int = 0) -> list[GroupState]:
        """Every group at ``step``: frozen, stage factor and LR."""
        f = self.factor(step, plateau_level)
        stretch = self._stages_at(step)
        return [GroupState(fr, s, g.lr * f * s)
                for g, fr, s in zip(self.groups, stretch.frozen, stretch.factors)]

    def lrs(self, step: int) -> list[Any]:
        """Every group's LR at ``step``, ``None`` for a frozen group (the ``schedule`` table)."""
        return [None if s.frozen else s.lr for s in self.state(step)]

    def frozen_by(self, step: int) -> list[str | None]:
        """Per assignment, who froze it as of ``step``: the last stage that froze it, else the
        rule or the model (``Assignment.frozen_by``); ``None`` when it trains then."""
        steps = self._clock_at(step).steps
        out = []
        for a in self.assignments:
            done = [(i, action) for i, action in a.events if steps[i] <= step]
            if not done:
                out.append(a.frozen_by if a.frozen else None)
            else:
                out.append(f"stage {done[-1][0]}" if done[-1][1] == "freeze" else None)
        return out

    def never_trains(self) -> list[bool]:
        """Per assignment, whether it stays frozen for the whole run (frozen at the start and
        no stage thaws it)."""
        return [a.frozen and not any(action == "thaw" for _, action in a.events)
                for a in self.assignments]
