"""Learning-rate schedules as closed forms: the LR factor is a pure function of the step.

A :class:`Schedule` is a warmup followed by a main shape: the user-facing object that plan
files, the scheduler and the trainer helpers read. It checks each field's value, then hands the
fields of its main to one shape class of :mod:`paramgroups.shapes` (one class per shape, like
torch's ``lr_scheduler.py``; tests compare each closed form step by step with torch's own
recursive scheduler) and the warmup fields to a :class:`Warmup`. Positions are in the
schedule's unit (epochs or steps); with ``steps_per_epoch`` an epoch-based schedule is evaluated
at fractional epochs, except that step-wise decays (``step``, ``multistep``) change on the first
step of their epoch.

``total`` may be left to a trainer when the schedule comes from a plan file (``from_dict``):
the "needs total" error then comes when an LR is asked for.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, fields
from typing import Any, Mapping, Sequence

from .errors import PlanError
from .shapes import DECAY_SHAPES, SHAPES, build, check_divisors, cosine_restart_position, floor_factor
from .values import check_flag, describe, did_you_mean, hint, is_finite_number

__all__ = ["MAINS", "NEEDS_TOTAL", "UNITS", "WARMUP_SHAPES", "DECAY_SHAPES", "Schedule", "Warmup",
           "check_group_lrs", "cosine_restart_position", "warmup_factor"]

MAINS = tuple(SHAPES)
NEEDS_TOTAL = tuple(main for main, shape in SHAPES.items() if shape.needs_total)
UNITS = ("epoch", "step")
WARMUP_SHAPES = ("linear", "constant", "exponential", "cosine", "1-sqrt")
_CHOICES = {"main": MAINS, "unit": UNITS, "warmup_shape": WARMUP_SHAPES, "decay_shape": DECAY_SHAPES,
            "anneal": ("cos", "linear"), "mode": ("min", "max"), "threshold_mode": ("rel", "abs")}
_NUMBERS = ("warmup", "gamma", "min_factor", "power", "max_factor", "div_factor", "final_div_factor",
            "threshold", "base_momentum", "max_momentum", "pct_start")
_OPTIONAL_NUMBERS = ("total", "step_size", "warmup_start", "warmup_lr", "min_lr", "decay")


def warmup_factor(shape: str, start: float, t: float, length: float) -> float:
    """The warmup factor at ``t`` in ``[0, length)``: from ``start`` towards 1."""
    p = t / length
    if shape == "linear":  # torch's LinearLR: reaches 1 at t == length
        return start + (1.0 - start) * p
    if shape == "constant":
        return start
    if shape == "exponential":  # start * (1 / start) ** p, without overflowing 1 / start
        return start ** (1.0 - p)
    if shape == "1-sqrt":  # transformers' get_wsd_schedule(warmup_type="1-sqrt")
        return start + (1.0 - start) * (1.0 - math.sqrt(1.0 - p))
    return start + (1.0 - start) * (1.0 - math.cos(math.pi * p)) / 2.0  # cosine


@dataclass(frozen=True)
class Warmup:
    """The ramp before the main shape: ``shape`` from a start factor to 1 over ``length``.

    The start is ``start`` (a factor of each group's LR) or ``start_lr`` (an LR for the plan's
    base LR, so group ratios hold); neither means 0.
    """

    length: float
    shape: str
    start: float | None
    start_lr: float | None

    def __post_init__(self) -> None:
        if self.start is not None and self.start_lr is not None:
            raise PlanError("schedule: give warmup_start or warmup_lr, not both")
        if self.start is not None and self.start > 1:
            raise PlanError(f"schedule: warmup_start is a factor in [0, 1], got {self.start:g}")
        if self.length and self.shape == "exponential" and not (
                (self.start or 0) > 0 or (self.start_lr or 0) > 0):
            raise PlanError("schedule: an exponential warmup needs a start above 0 "
                            "(set warmup_start or warmup_lr)")

    def start_factor(self, base_lr: float) -> float:
        """The first factor: ``start``, or ``start_lr`` relative to the base LR."""
        if self.start_lr is not None:
            return self.start_lr / base_lr
        return self.start if self.start is not None else 0.0

    def factor(self, t: float, base_lr: float) -> float:
        """The factor at ``t`` in ``[0, length)``."""
        return warmup_factor(self.shape, self.start_factor(base_lr), t, self.length)


@dataclass(frozen=True)
class Schedule:
    """A warmup then a main schedule; see the README for every field.

    Lengths (``total``, ``warmup``, ``step_size``, ``milestones``, ``restarts.period``) are in
    ``unit``. ``warmup_start`` is a factor of each group's LR; ``warmup_lr`` and ``min_lr``
    are absolute values for the plan's base LR, turned into factors so group ratios hold.
    ``wsd`` holds 1 after the warmup, then falls to the floor over its last ``decay`` with
    ``decay_shape``. ``total_later=True`` (what ``from_dict`` passes) lets a main that needs
    ``total`` leave it unset until an LR is asked for (a trainer helper fills it in).
    Every field's value is checked whatever the main (``gamma <= 1`` and onecycle's divisors
    ``> 0`` too); beyond that a field of another main is ignored, except ``restarts`` (cosine
    only) and ``decay`` / ``decay_shape`` (wsd only). The main's own fields go to one shape of
    :mod:`paramgroups.shapes`, the warmup's to a :class:`Warmup`.
    """

    main: str = "constant"
    total: float | None = None
    unit: str = "epoch"
    warmup: float = 0
    warmup_start: float | None = None
    warmup_lr: float | None = None
    warmup_shape: str = "linear"
    step_size: float | None = None
    gamma: float = 0.1
    milestones: tuple[float, ...] | None = None
    min_lr: float | None = None
    min_factor: float = 0.0
    power: float = 1.0
    restarts: Mapping[str, float] | None = None
    max_factor: float = 1.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    mode: str = "min"
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    decay: float | None = None
    decay_shape: str = "cosine"
    total_later: InitVar[bool] = False

    def __post_init__(self, total_later: bool) -> None:
        self._check_fields()
        # the parts, built once; not fields, so equality, hashing and to_dict see only the fields
        object.__setattr__(self, "_shape", build(self.main, vars(self)))  # fields by name
        if self.main != "wsd" and (self.decay is not None or self.decay_shape != "cosine"):
            raise PlanError("schedule: decay and decay_shape only apply to main: wsd")
        object.__setattr__(self, "_warmup", Warmup(self.warmup, self.warmup_shape,
                                                   self.warmup_start, self.warmup_lr))
        if self.min_lr is not None and self.min_factor:
            raise PlanError("schedule: give min_lr or min_factor, not both")
        if self.min_factor > 1:
            raise PlanError(f"schedule: min_factor is a factor in [0, 1], got {self.min_factor:g}")
        if not total_later:
            self.require_total()
        self._check_range()

    def _check_fields(self) -> None:
        """Each field's own value, whatever the main."""
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise PlanError(f"schedule: unknown {name} {value!r} ({hint(value, choices)})")
        for name in _NUMBERS:
            _check_number(name, getattr(self, name))
        for name in _OPTIONAL_NUMBERS:
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name))
        for name in ("patience", "cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PlanError(f"schedule: {name} must be a whole number >= 0, got {value!r}")
        check_flag("schedule: cycle_momentum", self.cycle_momentum, PlanError)
        if self.milestones is not None:
            if not isinstance(self.milestones, (list, tuple)):
                raise PlanError(f"schedule: milestones must be a list of numbers, got {self.milestones!r}")
            for m in self.milestones:
                _check_number("milestones", m)
            if list(self.milestones) != sorted(self.milestones):
                raise PlanError(f"schedule: milestones must increase, got {list(self.milestones)}")
            object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.restarts is not None:
            self._check_restarts()

    def _check_restarts(self) -> None:
        r = self.restarts
        if self.main != "cosine":
            raise PlanError("schedule: restarts only apply to main: cosine")
        if not isinstance(r, Mapping) or set(r) - {"period", "mult"} or "period" not in r:
            raise PlanError(f"schedule: restarts must be {{period: N, mult: M}}, got {r!r}")
        _check_number("restarts.period", r["period"])
        _check_number("restarts.mult", r.get("mult", 1))
        if r["period"] <= 0 or r.get("mult", 1) < 1:
            raise PlanError("schedule: restarts need period > 0 and mult >= 1")
        object.__setattr__(self, "restarts", {"period": r["period"], "mult": r.get("mult", 1)})

    def _check_range(self) -> None:
        """Values that would make some step's factor infinite, NaN or rising without end."""
        if self.gamma > 1:
            raise PlanError(f"schedule: gamma is the factor each decay multiplies the LR by, in "
                            f"[0, 1]; got {self.gamma:g}, which would grow the LR without bound")
        check_divisors(self.div_factor, self.final_div_factor)

    def require_total(self) -> None:
        """Raise unless the schedule has the ``total`` its main needs."""
        if self._shape.needs_total and self.total is None:
            raise PlanError(f"schedule: main {self.main} needs total (the schedule's length)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> "Schedule":
        """Build from a plan file's ``schedule:`` section (or just the main's name)."""
        if isinstance(data, str):
            return cls(data, total_later=True)
        if not isinstance(data, Mapping):
            raise PlanError(f"schedule must be a mapping or a name, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                close = did_you_mean(key, names)
                raise PlanError(f"schedule: unknown field {key!r}{f' ({close})' if close else ''}")
        try:
            return cls(**data, total_later=True)
        except TypeError as exc:  # pragma: no cover - keys were checked above
            raise PlanError(f"schedule: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults, as plain data."""
        out: dict[str, Any] = {"main": self.main}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "main" and value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else (
                    dict(value) if isinstance(value, Mapping) else value)
        return out

    # -- evaluation --------------------------------------------------------------------------

    def check_base_lr(self, base_lr: float) -> None:
        """The schedule fits a plan whose lr is ``base_lr``: every LR it gives is finite and >= 0.

        ``warmup_lr`` and ``min_lr`` are relative to ``base_lr``; a ``min_lr`` above it would
        make a decay rise.
        """
        relative = [n for n in ("warmup_lr", "min_lr") if getattr(self, n) is not None]
        if relative and base_lr <= 0:
            raise PlanError(f"schedule: {' and '.join(relative)} {'is' if len(relative) == 1 else 'are'} "
                            "relative to the plan's lr, "
                            "which is 0: set lr above 0, or use warmup_start / min_factor")
        if self.min_lr is not None and self.min_lr > base_lr:
            raise PlanError(f"schedule: min_lr ({self.min_lr:g}) is above the plan's lr "
                            f"({base_lr:g}): the schedule would rise towards it; use min_lr <= lr")
        peak = self.peak_factor(base_lr)
        if not math.isfinite(peak) or not math.isfinite(base_lr * peak):
            raise PlanError(f"schedule: the LR would reach lr {base_lr:g} x {peak:g} (warmup_lr / "
                            "lr, or onecycle's max_factor / div_factor), beyond float range")

    def peak_factor(self, base_lr: float) -> float:
        """The largest factor of any step: every factor lies in ``[0, peak_factor]``."""
        peak = self._shape.peak()
        return max(peak, self.start_factor(base_lr)) if self.warmup else peak

    def start_factor(self, base_lr: float) -> float:
        """The warmup's first factor: ``warmup_start``, or ``warmup_lr`` relative to the base LR."""
        return self._warmup.start_factor(base_lr)

    def floor_factor(self, base_lr: float) -> float:
        """The schedule's lowest factor: ``min_factor``, or ``min_lr`` relative to the base LR."""
        return floor_factor(self.min_lr, self.min_factor, base_lr)

    def factor(self, step: int, *, base_lr: float, steps_per_epoch: int | None = None,
               plateau_level: int = 0) -> float:
        """The LR factor after ``step`` calls of ``scheduler.step()`` (0 = initial LR)."""
        self.require_total()
        spe = steps_per_epoch if self.unit == "epoch" and steps_per_epoch else 1
        t = step / spe if spe != 1 else step
        f = self._warmup.factor(t, base_lr) if t < self.warmup else 1.0
        return f * self._shape.factor(t, step, spe, base_lr, plateau_level)

    def onecycle_total_steps(self, spe: int) -> int:
        """``total`` in steps: the length of onecycle's cycle."""
        return int(round(self.total * spe))

    def momentum(self, step: int, steps_per_epoch: int | None = None) -> float | None:
        """The cycled momentum (or beta1) at ``step`` for onecycle, else None."""
        if not self._shape.cycles_momentum:
            return None
        self.require_total()
        spe = steps_per_epoch if self.unit == "epoch" and steps_per_epoch else 1
        return self._shape.momentum(step, spe)


def _check_number(name: str, value: Any) -> None:
    if not is_finite_number(value) or value < 0:
        raise PlanError(f"schedule: {name} must be a finite number >= 0, got {describe(value)}")


def check_group_lrs(schedule: Schedule, base_lr: float,
                    groups: Sequence[tuple[str, float, Sequence[float]]]) -> None:
    """Every group's LR stays finite at the schedule's peak.

    ``groups`` holds (name, LR, ``lr_mult`` of each stage that thaws it); a group's LR at
    any step is at most its LR x the schedule's peak factor x the largest of those.
    """
    peak = schedule.peak_factor(base_lr)
    for name, lr, mults in groups:
        mult = max([1.0, *mults])
        if not math.isfinite(float(lr) * mult * peak):
            raise PlanError(f"group {name!r}: its lr {float(lr):g} x stage lr_mult {mult:g} x the "
                            f"schedule's peak factor {peak:g} is beyond float range: lower one of them")
