"""Learning-rate schedules as closed forms: the LR factor is a pure function of the step.

A :class:`Schedule` is a warmup followed by a main shape. Each main shape is one small class
with a closed form (``factor(t)``), like torch's one-class-per-schedule layout; tests compare
them step by step with torch's own (recursive) schedulers. Positions are in the schedule's
unit (epochs or steps); with ``steps_per_epoch`` an epoch-based schedule is evaluated at
fractional epochs, except that step-wise decays (``step``, ``multistep``) change on the first
step of their epoch.

``total`` may be left to a trainer when the schedule comes from a plan file (``from_dict``):
the "needs total" error then comes when an LR is asked for.
"""

from __future__ import annotations

import bisect
import difflib
import math
from dataclasses import InitVar, dataclass, fields
from typing import Any, Mapping, Sequence

from .errors import PlanError
from .values import describe, is_finite_number

MAINS = ("constant", "step", "multistep", "exponential", "cosine", "poly", "linear", "onecycle",
         "plateau", "wsd")
WARMUP_SHAPES = ("linear", "constant", "exponential", "cosine", "1-sqrt")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")  # wsd's decay, as transformers' get_wsd_schedule
NEEDS_TOTAL = ("cosine", "poly", "linear", "onecycle", "wsd")
UNITS = ("epoch", "step")
CONTINUOUS = ("exponential", "cosine", "poly", "linear")


def _anneal(start: float, end: float, pct: float, how: str) -> float:
    if how == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


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
    return max(t - _cycle_start(n, period, mult), 0.0), period * _power(mult, n)


def _power(base: float, n: int) -> float:
    try:
        return base ** n
    except OverflowError:
        return math.inf


def _cycle_start(n: int, period: float, mult: float) -> float:
    return n * period if mult == 1 else period * (_power(mult, n) - 1) / (mult - 1)


@dataclass(frozen=True)
class Schedule:
    """A warmup then a main schedule; see the README for every field.

    Lengths (``total``, ``warmup``, ``step_size``, ``milestones``, ``restarts.period``) are in
    ``unit``. ``warmup_start`` is a factor of each group's LR; ``warmup_lr`` and ``min_lr``
    are absolute values for the plan's base LR, turned into factors so group ratios hold.
    ``wsd`` holds 1 after the warmup, then falls to the floor over its last ``decay`` with
    ``decay_shape``. ``total_later=True`` (what ``from_dict`` passes) lets a main that needs
    ``total`` leave it unset until an LR is asked for (a trainer helper fills it in).
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
        _check_choice("main", self.main, MAINS)
        _check_choice("unit", self.unit, UNITS)
        _check_choice("warmup_shape", self.warmup_shape, WARMUP_SHAPES)
        _check_choice("decay_shape", self.decay_shape, DECAY_SHAPES)
        _check_choice("anneal", self.anneal, ("cos", "linear"))
        _check_choice("mode", self.mode, ("min", "max"))
        _check_choice("threshold_mode", self.threshold_mode, ("rel", "abs"))
        for name in ("warmup", "gamma", "min_factor", "power", "max_factor", "div_factor",
                     "final_div_factor", "threshold", "base_momentum", "max_momentum", "pct_start"):
            _check_number(name, getattr(self, name))
        for name in ("total", "step_size", "warmup_start", "warmup_lr", "min_lr", "decay"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name))
        for name in ("patience", "cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PlanError(f"schedule: {name} must be a whole number >= 0, got {value!r}")
        if not isinstance(self.cycle_momentum, bool):
            raise PlanError(f"schedule: cycle_momentum must be true or false, got {self.cycle_momentum!r}")
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
        self._check_combination()
        if not total_later:
            self.require_total()
        self._check_range()

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

    def _check_combination(self) -> None:
        needs = {"step": "step_size", "multistep": "milestones", "wsd": "decay"}
        if self.main in needs and getattr(self, needs[self.main]) is None:
            raise PlanError(f"schedule: main {self.main} needs {needs[self.main]}")
        if self.main == "step" and self.step_size <= 0:
            raise PlanError("schedule: step_size must be > 0")
        if self.main != "wsd" and (self.decay is not None or self.decay_shape != "cosine"):
            raise PlanError("schedule: decay and decay_shape only apply to main: wsd")
        if self.main == "wsd" and self.total is not None and self.warmup + self.decay > self.total:
            raise PlanError(f"schedule: wsd's warmup ({self.warmup:g}) and decay ({self.decay:g}) "
                            f"must fit in total ({self.total:g})")
        if self.total is not None and self.main in CONTINUOUS + ("onecycle",) and not self.restarts:
            if self.total <= self.warmup:
                raise PlanError(f"schedule: total ({self.total:g}) must be longer than warmup ({self.warmup:g})")
        if self.warmup_start is not None and self.warmup_lr is not None:
            raise PlanError("schedule: give warmup_start or warmup_lr, not both")
        if self.warmup_start is not None and self.warmup_start > 1:
            raise PlanError(f"schedule: warmup_start is a factor in [0, 1], got {self.warmup_start:g}")
        if self.min_lr is not None and self.min_factor:
            raise PlanError("schedule: give min_lr or min_factor, not both")
        if self.min_factor > 1:
            raise PlanError(f"schedule: min_factor is a factor in [0, 1], got {self.min_factor:g}")
        if self.main == "onecycle" and self.warmup:
            raise PlanError("schedule: onecycle has its own warm-up phase (pct_start); set warmup: 0")
        if self.main == "onecycle" and not 0 < self.pct_start < 1:
            raise PlanError(f"schedule: pct_start must be in (0, 1), got {self.pct_start:g}")
        if self.warmup and self.warmup_shape == "exponential" and not (
                (self.warmup_start or 0) > 0 or (self.warmup_lr or 0) > 0):
            raise PlanError("schedule: an exponential warmup needs a start above 0 "
                            "(set warmup_start or warmup_lr)")

    def require_total(self) -> None:
        """Raise unless the schedule has the ``total`` its main needs."""
        if self.main in NEEDS_TOTAL and self.total is None and not (self.main == "cosine" and self.restarts):
            raise PlanError(f"schedule: main {self.main} needs total (the schedule's length)")

    def _check_range(self) -> None:
        """Values that would make some step's factor infinite, NaN or rising without end."""
        if self.gamma > 1:
            raise PlanError(f"schedule: gamma is the factor each decay multiplies the LR by, in "
                            f"[0, 1]; got {self.gamma:g}, which would grow the LR without bound")
        for name in ("div_factor", "final_div_factor"):
            if getattr(self, name) <= 0:
                raise PlanError(f"schedule: {name} divides the LR: it must be > 0, got {getattr(self, name):g}")
        if self.main == "onecycle":
            start = self.max_factor / self.div_factor
            if not math.isfinite(start) or not math.isfinite(start / self.final_div_factor):
                raise PlanError(f"schedule: onecycle's LR factors (max_factor {self.max_factor:g} / "
                                f"div_factor {self.div_factor:g} / final_div_factor "
                                f"{self.final_div_factor:g}) leave float range: raise the divisors")

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
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise PlanError(f"schedule: unknown field {key!r}{hint}")
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
        if self.main == "onecycle":
            start = self.max_factor / self.div_factor
            return max(start, self.max_factor, start / self.final_div_factor)
        return max(1.0, self.start_factor(base_lr)) if self.warmup else 1.0

    def start_factor(self, base_lr: float) -> float:
        """The warmup's first factor: ``warmup_start``, or ``warmup_lr`` relative to the base LR."""
        if self.warmup_lr is not None:
            return self.warmup_lr / base_lr
        return self.warmup_start if self.warmup_start is not None else 0.0

    def floor_factor(self, base_lr: float) -> float:
        """The schedule's lowest factor: ``min_factor``, or ``min_lr`` relative to the base LR."""
        return self.min_lr / base_lr if self.min_lr is not None else self.min_factor

    def factor(self, step: int, *, base_lr: float, steps_per_epoch: int | None = None,
               plateau_level: int = 0) -> float:
        """The LR factor after ``step`` calls of ``scheduler.step()`` (0 = initial LR)."""
        self.require_total()
        spe = steps_per_epoch if self.unit == "epoch" and steps_per_epoch else 1
        t = step / spe if spe != 1 else step
        if self.main == "onecycle":
            phase, pct = self._onecycle_phase(step, spe)
            peak = self.max_factor
            points = (peak / self.div_factor, peak, peak / self.div_factor / self.final_div_factor)
            return _anneal(points[phase], points[phase + 1], pct, self.anneal)
        f = 1.0
        if t < self.warmup:
            f = warmup_factor(self.warmup_shape, self.start_factor(base_lr), t, self.warmup)
        whole = step // spe  # milestones land on the first step of their epoch
        if self.main == "step":
            f *= self.gamma ** (whole // self.step_size)
        elif self.main == "multistep":
            f *= self.gamma ** bisect.bisect_right(self.milestones, whole)
        elif self.main == "plateau":
            f *= max(self.gamma ** plateau_level, self.floor_factor(base_lr))
        elif self.main in CONTINUOUS:
            f *= self._continuous(max(t - self.warmup, 0), base_lr)
        elif self.main == "wsd":
            f *= self._wsd_decay(t, base_lr)
        return f

    def _wsd_decay(self, t: float, base_lr: float) -> float:
        """wsd after its warmup: 1, then ``decay_shape`` down to the floor over the last ``decay``."""
        floor = self.floor_factor(base_lr)
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

    def _continuous(self, t: float, base_lr: float) -> float:
        floor = self.floor_factor(base_lr)
        if self.main == "exponential":
            return self.gamma ** t
        if self.main == "cosine" and self.restarts:
            t, length = cosine_restart_position(t, self.restarts["period"], self.restarts["mult"])
            return floor + (1 - floor) * (1 + math.cos(math.pi * t / length)) / 2
        length = self.total - self.warmup
        t = min(t, length)
        if self.main == "cosine":
            return floor + (1 - floor) * (1 + math.cos(math.pi * t / length)) / 2
        if self.main == "poly":
            return floor + (1 - floor) * (1 - t / length) ** self.power
        return 1 + (floor - 1) * t / length  # linear

    def onecycle_total_steps(self, spe: int) -> int:
        return int(round(self.total * spe))

    def _onecycle_phase(self, step: int, spe: int) -> tuple[int, float]:
        """Phase (0 rising, 1 falling) and position in it of torch's two-phase OneCycleLR."""
        total = self.onecycle_total_steps(spe)
        ends = (float(self.pct_start * total) - 1, float(total - 1))
        if ends[0] <= 0 or ends[1] <= ends[0]:
            raise PlanError(f"schedule: onecycle over {total} steps with pct_start {self.pct_start:g} "
                            f"leaves a phase without steps: raise total (or steps_per_epoch) or move pct_start")
        step = min(step, total - 1)
        if step <= ends[0]:
            return 0, step / ends[0]
        return 1, (step - ends[0]) / (ends[1] - ends[0])

    def momentum(self, step: int, steps_per_epoch: int | None = None) -> float | None:
        """The cycled momentum (or beta1) at ``step`` for onecycle, else None."""
        if self.main != "onecycle" or not self.cycle_momentum:
            return None
        self.require_total()
        spe = steps_per_epoch if self.unit == "epoch" and steps_per_epoch else 1
        phase, pct = self._onecycle_phase(step, spe)
        ends = (self.max_momentum, self.base_momentum, self.max_momentum)
        return _anneal(ends[phase], ends[phase + 1], pct, self.anneal)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(choices)}"
        raise PlanError(f"schedule: unknown {name} {value!r} ({hint})")


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
