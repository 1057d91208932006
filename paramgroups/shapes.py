"""The main shapes of a schedule: one class per shape, each with a closed form.

Like torch's ``lr_scheduler.py`` (one class per schedule), each shape holds only its own
settings and gives its factor at any position directly, never by stepping from the last one;
tests compare each with torch's own recursive scheduler. :class:`~paramgroups.schedules.Schedule`
is the user-facing object: it checks every field's value, then builds one shape (and its
warmup), and the shape checks how its own fields fit together.

Every shape's ``factor(t, step, spe, base_lr, level)`` takes the same position: ``t`` in the
schedule's unit since its start (fractional when an epoch is evaluated per step), ``step`` and
``spe`` (steps per unit) for the shapes that count whole units or steps, ``base_lr`` for a floor
given as ``min_lr``, and ``level``, the reductions a plateau has made so far.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import PlanError

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")  # wsd's decay, as transformers' get_wsd_schedule


def floor_factor(min_lr: float | None, min_factor: float, base_lr: float) -> float:
    """The lowest factor a decay reaches: ``min_factor``, or ``min_lr`` relative to the base LR."""
    return min_lr / base_lr if min_lr is not None else min_factor


class Shape:
    """A main shape: its settings, how they fit together, and its closed-form factor."""

    needs_total = False      # has no length without the schedule's total
    cycles_momentum = False  # cycles the optimizer's momentum (onecycle)

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        """The factor at a position (see the module docstring); the warmup multiplies it."""
        raise NotImplementedError

    def peak(self) -> float:
        """The largest factor this shape gives."""
        return 1.0


def _require(main: str, name: str, value: Any) -> None:
    if value is None:
        raise PlanError(f"schedule: main {main} needs {name}")


def _check_after_warmup(total: float | None, warmup: float) -> None:
    """A shape that runs from the end of the warmup to ``total`` needs room to run."""
    if total is not None and total <= warmup:
        raise PlanError(f"schedule: total ({total:g}) must be longer than warmup ({warmup:g})")


def check_divisors(div_factor: float, final_div_factor: float) -> None:
    """onecycle's divisors (checked for every main: they are refused even where unused)."""
    for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        if value <= 0:
            raise PlanError(f"schedule: {name} divides the LR: it must be > 0, got {value:g}")


def _cosine(floor: float, t: float, length: float) -> float:
    return floor + (1 - floor) * (1 + math.cos(min(math.pi * t / length, math.pi))) / 2


@dataclass(frozen=True, kw_only=True)
class Constant(Shape):
    """The base LR throughout (after the warmup)."""

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        return 1.0


@dataclass(frozen=True, kw_only=True)
class Step(Shape):
    """torch's StepLR: ``gamma`` every ``step_size`` whole units."""

    step_size: float | None
    gamma: float

    def __post_init__(self) -> None:
        _require("step", "step_size", self.step_size)
        if self.step_size <= 0:
            raise PlanError("schedule: step_size must be > 0")

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        return self.gamma ** (step // spe // self.step_size)  # on the first step of a unit


@dataclass(frozen=True, kw_only=True)
class MultiStep(Shape):
    """torch's MultiStepLR: ``gamma`` at each of the (increasing) ``milestones``."""

    milestones: tuple[float, ...] | None
    gamma: float

    def __post_init__(self) -> None:
        _require("multistep", "milestones", self.milestones)

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step // spe)


@dataclass(frozen=True, kw_only=True)
class Exponential(Shape):
    """torch's ExponentialLR from the end of the warmup: ``gamma ** t``, at fractional ``t`` too."""

    gamma: float
    warmup: float
    total: float | None  # not needed; when given, it must leave room after the warmup

    def __post_init__(self) -> None:
        _check_after_warmup(self.total, self.warmup)

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        return self.gamma ** max(t - self.warmup, 0)


@dataclass(frozen=True, kw_only=True)
class Decay(Shape):
    """A decay from the end of the warmup to ``total``, down to the floor (``min_lr`` or
    ``min_factor``): what cosine, poly and linear share."""

    needs_total = True
    total: float | None
    warmup: float
    min_lr: float | None
    min_factor: float

    def __post_init__(self) -> None:
        _check_after_warmup(self.total, self.warmup)


@dataclass(frozen=True, kw_only=True)
class Cosine(Decay):
    """torch's CosineAnnealingLR from the end of the warmup to ``total``, down to the floor."""

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        length = self.total - self.warmup
        return _cosine(floor_factor(self.min_lr, self.min_factor, base_lr),
                       min(max(t - self.warmup, 0), length), length)


@dataclass(frozen=True, kw_only=True)
class CosineRestarts(Shape):
    """torch's CosineAnnealingWarmRestarts: cycles of ``period``, each ``mult`` times longer."""

    period: float
    mult: float
    warmup: float
    min_lr: float | None
    min_factor: float

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        t, length = cosine_restart_position(max(t - self.warmup, 0), self.period, self.mult)
        return _cosine(floor_factor(self.min_lr, self.min_factor, base_lr), t, length)


@dataclass(frozen=True, kw_only=True)
class Poly(Decay):
    """torch's PolynomialLR from the end of the warmup to ``total``, down to the floor."""

    power: float

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        floor = floor_factor(self.min_lr, self.min_factor, base_lr)
        length = self.total - self.warmup
        t = min(max(t - self.warmup, 0), length)
        return floor + (1 - floor) * (1 - t / length) ** self.power


@dataclass(frozen=True, kw_only=True)
class Linear(Decay):
    """torch's LinearLR from 1 down to the floor, from the end of the warmup to ``total``."""

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        floor = floor_factor(self.min_lr, self.min_factor, base_lr)
        length = self.total - self.warmup
        return 1 + (floor - 1) * min(max(t - self.warmup, 0), length) / length


@dataclass(frozen=True, kw_only=True)
class Plateau(Shape):
    """torch's ReduceLROnPlateau: ``gamma`` per reduction, never below the floor.

    The reductions (``level``) are counted by the scheduler from the metric it is given.
    """

    gamma: float
    min_lr: float | None
    min_factor: float

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        return max(self.gamma ** level, floor_factor(self.min_lr, self.min_factor, base_lr))


@dataclass(frozen=True, kw_only=True)
class WSD(Shape):
    """Warmup-stable-decay (transformers' get_wsd_schedule): 1 after the warmup, then
    ``decay_shape`` down to the floor over the last ``decay`` of ``total``."""

    needs_total = True
    total: float | None
    warmup: float
    decay: float | None
    decay_shape: str
    min_lr: float | None
    min_factor: float

    def __post_init__(self) -> None:
        _require("wsd", "decay", self.decay)
        if self.total is not None and self.warmup + self.decay > self.total:
            raise PlanError(f"schedule: wsd's warmup ({self.warmup:g}) and decay ({self.decay:g}) "
                            f"must fit in total ({self.total:g})")

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        floor = floor_factor(self.min_lr, self.min_factor, base_lr)
        start = self.total - self.decay
        if t < start:
            return 1.0
        if t >= self.total:
            return floor
        p = (t - start) / self.decay
        if self.decay_shape == "linear":
            shape = 1.0 - p
        elif self.decay_shape == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * p))
        else:  # 1-sqrt
            shape = 1.0 - math.sqrt(p)
        return floor + (1.0 - floor) * shape


def _anneal(start: float, end: float, pct: float, how: str) -> float:
    if how == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


@dataclass(frozen=True, kw_only=True)
class OneCycle(Shape):
    """torch's two-phase OneCycleLR over ``total``, in steps; its rise replaces the warmup.

    The LR factor goes from ``max_factor / div_factor`` up to ``max_factor`` over the first
    ``pct_start`` of the steps, then down to that start over ``final_div_factor``; with
    ``cycle_momentum`` the momentum goes the other way, between ``max_momentum`` and
    ``base_momentum``.
    """

    needs_total = True
    total: float | None
    warmup: float
    pct_start: float
    max_factor: float
    div_factor: float
    final_div_factor: float
    anneal: str
    cycle_momentum: bool
    base_momentum: float
    max_momentum: float

    def __post_init__(self) -> None:
        _check_after_warmup(self.total, self.warmup)
        if self.warmup:
            raise PlanError("schedule: onecycle has its own warm-up phase (pct_start); set warmup: 0")
        if not 0 < self.pct_start < 1:
            raise PlanError(f"schedule: pct_start must be in (0, 1), got {self.pct_start:g}")
        check_divisors(self.div_factor, self.final_div_factor)
        start = self.max_factor / self.div_factor
        if not math.isfinite(start) or not math.isfinite(start / self.final_div_factor):
            raise PlanError(f"schedule: onecycle's LR factors (max_factor {self.max_factor:g} / "
                            f"div_factor {self.div_factor:g} / final_div_factor "
                            f"{self.final_div_factor:g}) leave float range: raise the divisors")

    @property
    def cycles_momentum(self) -> bool:  # type: ignore[override]
        return self.cycle_momentum

    def total_steps(self, spe: int) -> int:
        return int(round(self.total * spe))

    def peak(self) -> float:
        start = self.max_factor / self.div_factor
        return max(start, self.max_factor, start / self.final_div_factor)

    def factor(self, t: float, step: int, spe: int, base_lr: float, level: int) -> float:
        phase, pct = self._phase(step, spe)
        peak = self.max_factor
        points = (peak / self.div_factor, peak, peak / self.div_factor / self.final_div_factor)
        return _anneal(points[phase], points[phase + 1], pct, self.anneal)

    def momentum(self, step: int, spe: int) -> float:
        """The cycled momentum (or beta1) at ``step``."""
        phase, pct = self._phase(step, spe)
        ends = (self.max_momentum, self.base_momentum, self.max_momentum)
        return _anneal(ends[phase], ends[phase + 1], pct, self.anneal)

    def _phase(self, step: int, spe: int) -> tuple[int, float]:
        """Phase (0 rising, 1 falling) and position in it of torch's two-phase OneCycleLR."""
        total = self.total_steps(spe)
        ends = (float(self.pct_start * total) - 1, float(total - 1))
        if ends[0] <= 0 or ends[1] <= ends[0]:
            raise PlanError(f"schedule: onecycle over {total} steps with pct_start {self.pct_start:g} "
                            f"leaves a phase without steps: raise total (or steps_per_epoch) or move pct_start")
        step = min(step, total - 1)
        if step <= ends[0]:
            return 0, step / ends[0]
        return 1, (step - ends[0]) / (ends[1] - ends[0])


def cosine_restart_position(t: float, period: float, mult: float) -> tuple[float, float]:
    """Position inside the current cycle and its length (torch's CosineAnnealingWarmRestarts).

    Closed form, so one step costs the same at any ``t``: cycle ``n`` starts at
    ``period * (mult**n - 1) / (mult - 1)`` (``n * period`` when ``mult`` is 1).
    """
    t, period, mult = float(t), float(period), float(mult)
    if t < period:
        return t, period
    if mult == 1:
        if t / period >= 2 ** 52:  # more cycles than a float counts one by one
            return math.fmod(t, period), period
        n = int(t / period)
    else:
        r = t / period * (mult - 1)
        logs = math.log1p(r) if math.isfinite(r) else math.log(t) - math.log(period) + math.log(mult - 1)
        n = int(logs / math.log1p(mult - 1))
    for _ in range(4):  # rounding can put the estimate a cycle or two off
        if n > 0 and _cycle_start(n, period, mult) > t:
            n -= 1
        elif _cycle_start(n + 1, period, mult) <= t:
            n += 1
        else:
            break
    # at the float range's edges the start can overflow: clamp, the factor stays in [floor, 1]
    return max(t - _cycle_start(n, period, mult), 0.0), _scaled(period, mult, n)


def _scaled(period: float, mult: float, n: int) -> float:
    """``period * mult ** n``, also where ``mult ** n`` alone leaves float range but the
    product does not (a tiny period); ``inf`` where the product does."""
    try:
        return period * mult ** n
    except OverflowError:
        return _exp(math.log(period) + n * math.log(mult))


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _cycle_start(n: int, period: float, mult: float) -> float:
    if mult == 1:
        return n * period
    try:
        return period * (mult ** n - 1) / (mult - 1)
    except OverflowError:  # mult ** n is beyond float range, so mult ** n - 1 == mult ** n
        return _exp(math.log(period) + n * math.log(mult) - math.log(mult - 1))


SHAPES: dict[str, type[Shape]] = {
    "constant": Constant, "step": Step, "multistep": MultiStep, "exponential": Exponential,
    "cosine": Cosine, "poly": Poly, "linear": Linear, "onecycle": OneCycle, "plateau": Plateau,
    "wsd": WSD,
}  # by main name; cosine with restarts is CosineRestarts


def build(main: str, settings: Mapping[str, Any]) -> Shape:
    """The shape of ``main`` from a schedule's (checked) fields by name; ``restarts`` (a
    ``{period, mult}`` mapping) makes a cosine a :class:`CosineRestarts`."""
    cls = SHAPES[main]
    if cls is Cosine and settings["restarts"]:
        cls, settings = CosineRestarts, {**settings, **settings["restarts"]}
    return cls(**{f.name: settings[f.name] for f in fields(cls)})
