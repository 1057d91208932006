"""The LR scheduler a plan emits: a torch ``LRScheduler`` whose LRs are closed forms.

Every group's LR at step ``k`` is ``group base LR x schedule.factor(k) x stage factor(k)``,
and its frozen state is a function of ``k`` too, so a resumed run gets the same LRs and the
same frozen set as an uninterrupted one. Only ``plateau`` keeps history (its reductions), and
that history is in ``state_dict()`` too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from . import norms
from .errors import PlanError
from .schedules import Schedule
from .stages import stage_state, stage_steps


class PlanScheduler(LRScheduler):
    """Steps a plan's :class:`Schedule` over an optimizer's groups.

    Call ``step()`` once per epoch, or once per iteration when ``steps_per_epoch`` is given
    (or the schedule's unit is ``step``); a ``plateau`` schedule takes ``step(metric)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, *, base_lr: float,
                 steps_per_epoch: int | None = None, last_epoch: int = -1, binding: Any = None):
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or
                                            not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise PlanError(f"steps_per_epoch must be a whole number >= 1, got {steps_per_epoch!r}")
        if base_lr <= 0 and (schedule.warmup_lr is not None or schedule.min_lr is not None):
            raise PlanError("warmup_lr and min_lr are relative to the plan's lr, which is 0")
        self.schedule = schedule
        self.plan_base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.plateau_level = 0
        self.best: float | None = None
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.momentum_key = self._momentum_key(optimizer)
        self._binding = binding
        stages = binding.plan.stages if binding is not None else ()
        self._stage_steps = stage_steps(stages, schedule.unit, steps_per_epoch)
        super().__init__(optimizer, last_epoch)

    def stage_state(self, step: int | None = None) -> list[tuple[bool, float]]:
        """(frozen, stage LR factor) per group at ``step`` (default: the current step)."""
        k = self.last_epoch if step is None else step
        if self._binding is None:
            return [(False, 1.0)] * len(self.optimizer.param_groups)
        stages = self._binding.plan.stages
        steps, warmups = self._stage_steps
        return [stage_state(g.events, stages, g.frozen, max(k, 0), steps, warmups)
                for g in self._binding.resolution.groups]

    def _apply_stages(self) -> None:
        """Flip ``requires_grad`` and norm holds to the current step's frozen set."""
        if self._binding is None or not self._binding.plan.stages:
            return
        changed = False
        for group, (frozen, _) in zip(self._binding.resolution.groups, self.stage_state()):
            for a in group.members:
                param = a.record.param
                if param.requires_grad == frozen:
                    param.requires_grad_(not frozen)
                    changed = True
                if frozen and param.grad is not None:  # a zeroed gradient still moves it
                    param.grad = None  # (momentum, weight decay) under zero_grad(set_to_none=False)
        if changed and self._binding.plan.bn == "freeze":
            norms.sync(self._binding.model)

    def _momentum_key(self, optimizer: torch.optim.Optimizer) -> str | None:
        if self.schedule.momentum(0) is None:
            return None
        group = optimizer.param_groups[0]
        if "betas" in group:
            return "betas"
        if group.get("momentum", 0):
            return "momentum"
        return None

    def factor(self, step: int | None = None) -> float:
        """The schedule factor at ``step`` (default: the current step)."""
        k = self.last_epoch if step is None else step
        return self.schedule.factor(max(k, 0), base_lr=self.plan_base_lr,
                                    steps_per_epoch=self.steps_per_epoch,
                                    plateau_level=self.plateau_level)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor()
        return [base * f * stage for base, (_, stage) in zip(self.base_lrs, self.stage_state())]

    def step(self, metric: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        """Advance one step; a ``plateau`` schedule also takes the metric to watch."""
        if metric is not None:
            if self.schedule.main != "plateau":
                raise PlanError(f"step(metric) is for plateau schedules; this one is {self.schedule.main}")
            self._observe(float(metric))
        super().step()
        self._set_momentum()
        self._apply_stages()

    def _set_momentum(self) -> None:
        if self.momentum_key is None:
            return
        m = self.schedule.momentum(self.last_epoch, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            if self.momentum_key == "betas":
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m

    def _observe(self, metric: float) -> None:
        """ReduceLROnPlateau's bookkeeping: count bad epochs, reduce after ``patience``."""
        s = self.schedule
        if self.best is None or self._better(metric, self.best):
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
        """Plain data only (loads with ``torch.load(weights_only=True)``)."""
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("optimizer", "schedule", "_binding")}
        state["schedule"] = self.schedule.to_dict()
        state["frozen_groups"] = [i for i, (f, _) in enumerate(self.stage_state()) if f]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = dict(state_dict)
        saved.pop("frozen_groups", None)  # derived from the step; kept for readers of checkpoints
        schedule = saved.pop("schedule", None)
        if schedule is not None and schedule != self.schedule.to_dict():
            raise PlanError(f"the saved scheduler ran another schedule ({schedule}); "
                            f"this one is {self.schedule.to_dict()}")
        if len(saved.get("base_lrs", self.base_lrs)) != len(self.base_lrs):
            raise PlanError(f"the saved scheduler had {len(saved['base_lrs'])} groups; this optimizer "
                            f"has {len(self.base_lrs)}: was it built from another plan?")
        self.__dict__.update(saved)
        self._apply_stages()
