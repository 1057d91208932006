"""The LR scheduler a plan emits: a torch ``LRScheduler`` whose LRs are closed forms.

Every group's LR at step ``k`` is ``group base LR x schedule.factor(k) x stage factor(k)``
(the :class:`~paramgroups.timeline.Timeline` answers both factors and the frozen flags),
and its frozen state is a function of ``k`` too, so a resumed run gets the same LRs and the
same frozen set as an uninterrupted one. Only ``plateau`` keeps history (its reductions), and
that history is in ``state_dict()`` too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from . import norms
from .errors import PlanError
from .schedules import Schedule, check_group_lrs
from .timeline import GroupState, Timeline, Track
from .values import check_count

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Binding


_EPOCH_REFUSED = ("torch's deprecated scheduler.step(epoch) is not supported: call step() once per "
                  "epoch (or per iteration), the scheduler counts the steps itself.")


# This process's own, derived from the plan: never in state_dict(), never taken from one.
_NOT_SAVED = ("optimizer", "schedule", "timeline", "_params", "_holds", "_applied")


class PlanScheduler(LRScheduler):
    """Steps a plan's :class:`Schedule` over an optimizer's groups.

    Call ``step()`` once per epoch, or once per iteration when ``steps_per_epoch`` is given
    (or the schedule's unit is ``step``); a ``plateau`` schedule takes ``step(metric)``.
    ``binding`` is what a plan-built optimizer remembers (plan, resolution, model): with it,
    the plan's stages freeze and thaw the groups over the run.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, *, base_lr: float,
                 steps_per_epoch: int | None = None, last_epoch: int = -1, binding: "Binding | None" = None):
        if steps_per_epoch is not None:
            check_count("steps_per_epoch", steps_per_epoch, PlanError)
        schedule.check_base_lr(base_lr)
        self.timeline = _timeline(optimizer, schedule, base_lr, steps_per_epoch, binding)
        stages = self.timeline.stages
        check_group_lrs(schedule, base_lr, [
            (t.name, t.lr, [stages[j].lr_mult for j, act in t.events if act == "thaw"])
            for t in self.timeline.groups])
        self.timeline.clock  # stages this scheduler cannot place on its steps fail here, not later
        self.schedule = schedule
        self.plan_base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.plateau_level = 0
        self.best = math.inf if schedule.mode == "min" else -math.inf  # as ReduceLROnPlateau
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.momentum_keys = self._momentum_keys(optimizer)
        staged = binding is not None and bool(stages)
        self._params = tuple(tuple(a.record.param for a in g.members)
                             for g in binding.resolution.groups) if staged else ()
        self._holds = (norms.Holds(binding.model) if staged and binding.plan.bn == "freeze"
                       else None)  # the norm layers to hold, found once
        self._applied: tuple[bool, ...] | None = None  # the frozen flags last set on the parameters
        super().__init__(optimizer, last_epoch)

    def stage_state(self, step: int | None = None) -> list[GroupState]:
        """Every group at ``step`` (default: the current step): frozen, stage factor, LR."""
        k = max(self.last_epoch if step is None else step, 0)
        return self.timeline.state(k, self.plateau_level)

    def _apply_stages(self, force: bool = False) -> None:
        """Flip ``requires_grad`` of the groups whose frozen state changed since the last call
        (every group when ``force``: at the start and after a resume) and re-hold norm layers."""
        if not self._params:
            return
        flags = self.timeline.frozen(max(self.last_epoch, 0))
        applied = self._applied
        if flags is applied and not force:
            return  # the same quiet stretch: already applied
        changed = False
        for i, (params, frozen) in enumerate(zip(self._params, flags)):
            if not force and applied is not None and frozen == applied[i]:
                continue
            for param in params:
                if param.requires_grad == frozen:
                    param.requires_grad_(not frozen)
                    changed = True
                if frozen and param.grad is not None:  # a zeroed gradient still moves it
                    param.grad = None  # (momentum, weight decay) under zero_grad(set_to_none=False)
        self._applied = flags
        if changed and self._holds is not None:
            self._holds.sync()

    def _momentum_keys(self, optimizer: torch.optim.Optimizer) -> list[str | None]:
        """Per group, what onecycle cycles: beta1 of a group with ``betas``, the momentum of a
        group whose momentum is above 0; a group with neither is left alone."""
        cycles = self.schedule.main == "onecycle" and self.schedule.cycle_momentum
        return ["betas" if cycles and "betas" in g else "momentum" if cycles and g.get("momentum", 0)
                else None for g in optimizer.param_groups]

    def factor(self, step: int | None = None) -> float:
        """The schedule factor at ``step`` (default: the current step)."""
        k = self.last_epoch if step is None else step
        return self.timeline.factor(max(k, 0), self.plateau_level)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        k = max(self.last_epoch, 0)
        f = self.timeline.factor(k, self.plateau_level)
        return [base * f * stage for base, stage in zip(self.base_lrs, self.timeline.stage_factors(k))]

    def step(self, metric: float | torch.Tensor | None = None, epoch: int | None = None, *,
             metrics: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        """Advance one step; a ``plateau`` schedule also takes the metric to watch
        (``step(loss)`` or ``step(metrics=loss)``, as torch's ``ReduceLROnPlateau``).

        torch's deprecated ``step(epoch)`` is refused: the scheduler counts its own steps
        (a resumed run restores the count from ``state_dict()``). The first steps run torch's
        own ``step`` (its warnings about the call order); later ones set what it sets
        (``last_epoch``, ``_step_count``, the groups' LRs, tensor LRs in place, ``_last_lr``)
        without its per-call bookkeeping, which costs as much as the LRs themselves.
        """
        if epoch is not None:
            raise PlanError(_EPOCH_REFUSED)
        metric = metrics if metric is None else metric
        if metric is not None:
            if self.schedule.main != "plateau":
                raise PlanError(f"step(metric) is for plateau schedules; this one is "
                                f"{self.schedule.main}. {_EPOCH_REFUSED}")
            if isinstance(metric, int) and not isinstance(metric, bool):
                raise PlanError(f"step({metric}) looks like an epoch number: {_EPOCH_REFUSED} A "
                                f"plateau schedule takes the metric as a float: step(float(value))")
            self._observe(float(metric))
        if self._step_count <= 1:  # torch's own step: it warns here about the call order
            super().step()
        else:  # what torch's step does next, without its bookkeeping for get_lr() warnings
            self._step_count += 1
            self.last_epoch += 1
            self._last_lr = _set_lrs(self.optimizer.param_groups, self.get_lr())
        self._set_momentum()
        self._apply_stages()

    def _set_momentum(self) -> None:
        if not any(self.momentum_keys):
            return
        m = self.schedule.momentum(self.last_epoch, self.steps_per_epoch)
        for key, group in zip(self.momentum_keys, self.optimizer.param_groups):
            if key == "betas":
                group["betas"] = (m, *group["betas"][1:])
            elif key == "momentum":
                group["momentum"] = m

    def _observe(self, metric: float) -> None:
        """ReduceLROnPlateau's bookkeeping: count bad epochs, reduce after ``patience``."""
        s = self.schedule
        if self._better(metric, self.best):  # a NaN is never better: a bad epoch, as in torch
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > s.patience:
            floor = s.floor_factor(self.plan_base_lr)
            if s.gamma ** self.plateau_level > floor:
                self.plateau_level += 1
            self.cooldown_counter = s.cooldown
            self.num_bad_epochs = 0

    def _better(self, a: float, best: float) -> bool:
        s = self.schedule
        if s.mode == "min":
            return a < (best * (1 - s.threshold) if s.threshold_mode == "rel" else best - s.threshold)
        return a > (best * (1 + s.threshold) if s.threshold_mode == "rel" else best + s.threshold)

    def state_dict(self) -> dict[str, Any]:
        """Plain data only (loads with ``torch.load(weights_only=True)``).

        Besides the step and plateau history it holds what the run was built from (schedule,
        stages, group names, ``steps_per_epoch``), so a resume into another plan is refused.
        """
        state = {k: v for k, v in self.__dict__.items() if k not in _NOT_SAVED}
        state.update(self._fingerprint())
        state["frozen_groups"] = [i for i, f in enumerate(self.timeline.frozen(max(self.last_epoch, 0))) if f]
        return state

    def _fingerprint(self) -> dict[str, Any]:
        return {"schedule": self.schedule.to_dict(), "stages": [st.to_dict() for st in self.timeline.stages],
                "groups": [None if g.get("name") is None else str(g["name"])
                           for g in self.optimizer.param_groups],
                "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved run; a PlanError says what differs if it ran another plan."""
        saved = dict(state_dict)
        saved.pop("frozen_groups", None)  # derived from the step; kept for readers of checkpoints
        mine = self._fingerprint()
        for key in mine:
            if key in saved and saved[key] != mine[key]:
                raise PlanError(f"cannot resume: {_difference(key, saved[key], mine[key])}")
            saved.pop(key, None)
        if len(saved.get("base_lrs", self.base_lrs)) != len(self.base_lrs):
            raise PlanError(f"cannot resume: the saved scheduler had {len(saved['base_lrs'])} groups; "
                            f"this optimizer has {len(self.base_lrs)}: was it built from another plan?")
        for key in (*_NOT_SAVED, "_stage_steps"):  # this process's own (older versions saved _stage_steps)
            saved.pop(key, None)
        self.__dict__.update(saved)
        self._apply_stages(force=True)


def _set_lrs(groups: list[dict[str, Any]], lrs: list[Any]) -> list[Any]:
    """Set each group's LR as torch's ``LRScheduler.step`` does (a tensor LR is filled in place)
    and return the LRs as ``get_last_lr()`` gives them (tensors copied)."""
    tensors = False
    for group, lr in zip(groups, lrs):
        old = group["lr"]
        if old.__class__ is float or not isinstance(old, torch.Tensor):
            group["lr"] = lr
        else:
            old.fill_(lr)
            tensors = True
    return [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in groups] if tensors else lrs


def _timeline(optimizer: torch.optim.Optimizer, schedule: Schedule, base_lr: float,
              steps_per_epoch: int | None, binding: "Binding | None") -> Timeline:
    """The timeline of the optimizer's groups (their LRs as the scheduler starts them); with a
    plan's binding, its stages and resolved groups give each group's frozen state over time."""
    stages = binding.plan.stages if binding is not None else ()
    resolved = binding.resolution.groups if stages else [None] * len(optimizer.param_groups)
    tracks = [Track(g.get("name", str(i)), g.get("initial_lr", g["lr"]), r.frozen if r else False,
                    r.events if r else ())
              for i, (g, r) in enumerate(zip(optimizer.param_groups, resolved))]
    return Timeline(stages, schedule, base_lr, tracks, binding.resolution.assignments if stages else (),
                    steps_per_epoch)


def _difference(key: str, saved: Any, mine: Any) -> str:
    """What differs between a saved run's ``key`` (its fingerprint) and this scheduler's."""
    if key == "schedule":
        return f"the saved scheduler ran another schedule ({saved}); this one is {mine}"
    if key == "steps_per_epoch":
        return (f"the saved scheduler stepped with steps_per_epoch={saved}; this one has {mine}: "
                "pass the same steps_per_epoch")
    what = {"stages": "stage", "groups": "group"}[key]
    if len(saved) != len(mine):
        return (f"the saved scheduler had {len(saved)} {what}s; this plan has {len(mine)}: "
                "was it built from another plan?")
    i = next(i for i, (a, b) in enumerate(zip(saved, mine)) if a != b)
    return f"{what} {i} differs: saved {saved[i]!r}, this plan {mine[i]!r}"
