"""Freezing and thawing parameters: one-off, and staged over a run.

One-off ``freeze``/``unfreeze`` select parameters with the same pattern language as rules.
A :class:`Stage` freezes or thaws parameters from the first step of an epoch (or a step).
Either way only ``requires_grad`` flips: parameters stay in their optimizer groups, and torch
optimizers skip parameters whose ``.grad`` is ``None`` and allocate them no state.

Staged plans group parameters by their *timeline* (which stages thaw or freeze them), so a
group's frozen state is uniform at every step and no stage ever adds or removes a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from .errors import PlanError, UnmatchedRuleError, Where
from .inventory import ParamRecord, inventory
from .names import NameTable
from .patterns import PatternList
from .values import check_number, describe, hint

STAGE_FIELDS = ("epoch", "step", "unfreeze", "freeze", "lr_mult", "warmup", "warmup_start")


@dataclass(frozen=True)
class Stage:
    """From ``epoch`` (or ``step``) on, thaw ``unfreeze`` and/or freeze ``freeze``.

    ``lr_mult`` multiplies, from then on, the LR the rules give the parameters it thaws;
    ``warmup`` (epochs, or steps for a ``step=`` stage) ramps their LR linearly from
    ``warmup_start`` times that value, on top of the plan's schedule.
    """

    epoch: float | None = None
    step: int | None = None
    unfreeze: str | tuple[str, ...] | None = None
    freeze: str | tuple[str, ...] | None = None
    lr_mult: float = 1.0
    warmup: float = 0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        if (self.epoch is None) == (self.step is None):
            raise PlanError("a stage needs exactly one of epoch or step")
        when = self.epoch if self.epoch is not None else self.step
        check_number("stage epoch" if self.epoch is not None else "stage step", when, PlanError,
                     optional=False)
        if self.step is not None and int(self.step) != self.step:
            raise PlanError(f"stage step must be a whole number, got {self.step!r}")
        if self.unfreeze is None and self.freeze is None:
            raise PlanError("a stage needs unfreeze or freeze (or both)")
        for name in ("unfreeze", "freeze"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) or (
                    isinstance(value, tuple) and value and all(isinstance(v, str) for v in value))):
                raise PlanError(f"stage {name} must be a pattern or a list of patterns, got {describe(value)}")
            if value is not None:
                PatternList(list(value) if isinstance(value, tuple) else value)  # bad patterns fail at load
        for name in ("lr_mult", "warmup", "warmup_start"):
            check_number(f"stage {name}", getattr(self, name), PlanError, optional=False)
        if self.warmup_start > 1:
            raise PlanError(f"stage warmup_start is a factor in [0, 1], got {self.warmup_start:g}")

    @property
    def when(self) -> float:
        return self.epoch if self.epoch is not None else self.step

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Stage":
        if not isinstance(data, Mapping):
            raise PlanError(f"a stage must be a mapping of fields, got {data!r}")
        unknown = [k for k in data if k not in STAGE_FIELDS]
        if unknown:
            raise PlanError(f"unknown stage field {unknown[0]!r} ({hint(unknown[0], STAGE_FIELDS, what='fields:')})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch} if self.epoch is not None else {"step": self.step}
        for name in ("unfreeze", "freeze"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value if isinstance(value, str) else list(value)
        for name, default in (("lr_mult", 1.0), ("warmup", 0), ("warmup_start", 0.0)):
            if getattr(self, name) != default:
                out[name] = getattr(self, name)
        return out


Event = tuple[int, str]  # (stage index, "thaw" | "freeze")


def check_stages(stages: Sequence[Stage]) -> None:
    """Stages count in one unit (all ``epoch=`` or all ``step=``) so their order is known."""
    units = {s.epoch is not None for s in stages}
    if len(units) > 1:
        raise PlanError("stages mix epoch= and step=: use one unit for all stages of a plan")


def stage_text(stage: Stage) -> tuple[str, str]:
    """What ``stage`` thaws (or freezes) and when, for group names: ``("layer4", "epoch 4")``."""
    what = stage.unfreeze if stage.unfreeze is not None else stage.freeze
    when = f"epoch {stage.epoch:g}" if stage.epoch is not None else f"step {stage.step}"
    return what if isinstance(what, str) else ",".join(what), when


def stage_order(stages: Sequence[Stage]) -> list[int]:
    """Stage indices in time order (stable for stages at the same time)."""
    return sorted(range(len(stages)), key=lambda i: stages[i].when)


def timelines(records: Sequence[ParamRecord], stages: Sequence[Stage], frozen: Sequence[bool],
              keep_trainable: Sequence[bool], table: NameTable
              ) -> tuple[list[tuple[Event, ...]], list[bool]]:
    """Per record: the stage events that change its frozen state, and its state at step 0.

    ``frozen`` is the state the rules give; ``keep_trainable`` marks records no stage may
    freeze (norm parameters with ``norm_trainable``). A stage that thaws a parameter that is
    already trainable, or freezes a frozen one, is no event for it. ``table`` is the model's
    :class:`NameTable`.
    """
    if not stages:
        return [()] * len(records), list(frozen)
    picks = []
    for i, stage in enumerate(stages):
        pick = {}
        for action, patterns in (("thaw", stage.unfreeze), ("freeze", stage.freeze)):
            if patterns is None:
                continue
            selection = PatternList(patterns if isinstance(patterns, str) else list(patterns))
            chosen = table.select(selection)
            if not chosen:
                raise UnmatchedRuleError(f"{action} {patterns!r} matches no parameter"
                                         f"{table.closest(selection.texts[0])}", where=Where(stage=i))
            pick[action] = chosen
        picks.append(pick)
    events: list[list[Event]] = [[] for _ in records]
    state = list(frozen)
    start = list(frozen)
    for i in stage_order(stages):
        for action in ("thaw", "freeze"):
            for idx in picks[i].get(action, ()):
                if not records[idx].is_float or keep_trainable[idx]:
                    continue
                if state[idx] == (action == "thaw"):
                    state[idx] = action == "freeze"
                    events[idx].append((i, action))
                    if stages[i].when == 0:
                        start[idx] = state[idx]
    return [tuple(e) for e in events], start


def first_step(epoch: float, steps_per_epoch: int | None) -> int:
    """The first scheduler step at or after ``epoch``: ``epoch x steps_per_epoch`` rounded up
    (a fractional epoch never acts early); without ``steps_per_epoch`` one step is one epoch."""
    return math.ceil(epoch * (steps_per_epoch or 1) - 1e-9)


def stage_steps(stages: Sequence[Stage], unit: str, steps_per_epoch: int | None
                ) -> tuple[list[int], list[int]]:
    """Scheduler steps at which each stage acts, and each stage's warmup in steps.

    The scheduler steps once per epoch (``unit="epoch"`` without ``steps_per_epoch``) or once
    per iteration; ``epoch=`` stages act on the first step of their epoch.
    """
    steps, warmups = [], []
    for st in stages:
        if st.epoch is not None:
            if unit == "step" and not steps_per_epoch:
                raise PlanError("stages in epochs need steps_per_epoch when the schedule counts steps")
            steps.append(first_step(st.epoch, steps_per_epoch))
            warmups.append(first_step(st.warmup, steps_per_epoch))
        else:
            if unit == "epoch" and not steps_per_epoch:
                raise PlanError("step= stages need a scheduler stepped every iteration: "
                                "pass steps_per_epoch, or use a schedule with unit: step")
            steps.append(int(st.step))
            warmups.append(int(round(st.warmup)))
    return steps, warmups


def stage_state(events: tuple[Event, ...], stages: Sequence[Stage], frozen_at_start: bool,
                step: int, steps_of: Sequence[int], warmup_of: Sequence[int]) -> tuple[bool, float]:
    """(frozen, LR factor from stages) of a group with ``events`` after ``step`` steps.

    ``steps_of[i]`` is the scheduler step at which stage i acts and ``warmup_of[i]`` its
    warmup in scheduler steps.
    """
    frozen, factor = frozen_at_start, 1.0
    for i, action in events:
        if steps_of[i] > step:
            break
        frozen = action == "freeze"
        if action == "thaw":
            stage = stages[i]
            factor = stage.lr_mult
            into = step - steps_of[i]
            if warmup_of[i] and into < warmup_of[i]:
                factor *= stage.warmup_start + (1 - stage.warmup_start) * into / warmup_of[i]
    return frozen, factor


def _select(model: nn.Module, patterns: tuple[str, ...]) -> list[nn.Parameter]:
    if not patterns:
        raise UnmatchedRuleError("give at least one pattern to select parameters")
    records = inventory(model)
    table = NameTable.of(records)
    selected = table.select(PatternList(list(patterns)))
    if not selected:
        raise UnmatchedRuleError(f"{list(patterns)!r} matches no parameter{table.closest(patterns[0])}")
    return [records[i].param for i in selected if records[i].is_float]


def freeze(model: nn.Module, *patterns: str) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on the parameters the patterns select; return them."""
    params = _select(model, patterns)
    for p in params:
        p.requires_grad_(False)
    return params


def unfreeze(model: nn.Module, *patterns: str) -> list[nn.Parameter]:
    """Set ``requires_grad=True`` on the parameters the patterns select; return them."""
    params = _select(model, patterns)
    for p in params:
        p.requires_grad_(True)
    return params
