"""The plan: rules plus plan-wide settings, and what it emits (groups, optimizers).

A :class:`Plan` is declarative and model-independent: the same plan resolves on any model
whose parameter names its rules match. Resolving it against a model gives assignments and
groups; those become ordinary ``torch.optim`` param groups and optimizers.
"""

from __future__ import annotations

import difflib
import gc
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import distributed, norms, optim
from .config import LocatedError, Locations, located, read_plan_file
from .errors import ConfigError, OptimizerError, ParamgroupsError, PlanError, PlanWarning, RuleError
from .groups import build_groups
from .inventory import inventory
from .layers import layer_ids, layer_scales
from .patterns import PatternList
from .schedules import Schedule, check_group_lrs
from .values import describe, is_finite_number
from .stages import Stage, check_stages, first_step, stage_state, stage_steps, timelines

if TYPE_CHECKING:
    from .scheduler import PlanScheduler
from .rules import (RULE_FIELDS, Resolution, Rule, check_number, located_rule_error, name_table,
                    resolve, rule_text)

EXTRA_FIELDS = {"schedule": None, "layer_decay": None, "layers": None, "no_decay": False,
                "stages": (), "bn": "freeze", "norm_trainable": False, "loraplus": None}
LORAPLUS_FIELDS = {"ratio": None, "embedding_lr": 1e-6, "weight_decay": None}  # peft's defaults
PLAN_FIELDS = ("rules", "lr", "weight_decay", "optimizer", *EXTRA_FIELDS)
NO_DECAY_KINDS = ["bias", "norm", "ndim<=1", "embedding"]
PLAN_TAG = "_paramgroups_plan"  # set on optimizers Plan.optimizer builds, read by audit()


class Plan:
    """Rules, plan-wide defaults and the optimizer they are meant for.

    ``lr=None`` means the optimizer's own default. ``weight_decay`` is the default for every
    parameter no rule gives one. ``schedule`` is a :class:`Schedule` (or its dict form).
    ``layer_decay`` scales each parameter's LR by ``decay ** (max_layer - layer)`` with layer
    ids from ``layers`` (see :mod:`paramgroups.layers`). ``no_decay=True`` adds a last rule
    that sets weight decay 0 on biases, norms, 1-d parameters and embeddings. ``stages``
    freeze and thaw parameters over the run (:class:`Stage`). Norm layers whose parameters are
    all frozen keep their running statistics (``bn="freeze"``; ``bn="train"`` is torch's
    behaviour); ``norm_trainable=True`` keeps norm parameters trainable in frozen blocks.
    ``loraplus={"ratio": 16}`` (``embedding_lr``, default 1e-6; ``weight_decay``, default the
    plan's) adds LoRA+ rules after the rules: every trainable parameter gets the LR and weight
    decay peft's ``create_loraplus_optimizer`` gives it (lora_B and 1-d: ``lr_mult`` ratio).
    Extra keyword arguments are options of the optimizer (``momentum=0.9``), validated.
    """

    def __init__(self, rules: Iterable[Rule | Mapping[str, Any]] = (), *, lr: float | None = None,
                 weight_decay: float = 0.0, optimizer: str | type = "sgd",
                 schedule: Schedule | Mapping[str, Any] | str | None = None,
                 layer_decay: float | None = None, layers: str | Sequence[Any] | None = None,
                 no_decay: bool = False, stages: Sequence[Stage | Mapping[str, Any]] = (),
                 bn: str = "freeze", norm_trainable: bool = False,
                 loraplus: Mapping[str, float] | None = None, **optimizer_options: Any):
        extras = {"schedule": schedule, "layer_decay": layer_decay, "layers": layers,
                  "no_decay": no_decay, "stages": stages, "bn": bn, "norm_trainable": norm_trainable,
                  "loraplus": loraplus}
        self._init(rules, lr, weight_decay, optimizer, optimizer_options, Locations(None), extras)

    @classmethod
    def progressive(cls, groups: Sequence[str | Sequence[str]], every: float = 1,
                    **plan_options: Any) -> "Plan":
        """Top-down unfreezing: ``groups[0]`` trains from the start, group k thaws at epoch
        ``k * every``; parameters in no group stay frozen (list ``"**"`` last to thaw the rest).
        """
        if isinstance(groups, str) or not groups:
            raise PlanError("progressive needs a non-empty list of groups (patterns or lists)")
        check_number("every", every, PlanError)
        rules = [Rule("**", freeze=True), Rule(groups[0], freeze=False),
                 *plan_options.pop("rules", ())]
        stages = [Stage(epoch=k * every, unfreeze=g) for k, g in enumerate(groups) if k]
        stages += list(plan_options.pop("stages", ()))
        return cls(rules, stages=stages, **plan_options)

    def _init(self, rules: Iterable[Any], lr: Any, weight_decay: Any, optimizer: Any,
              options: dict[str, Any], loc: Locations, extras: dict[str, Any]) -> None:
        self._loc = loc
        for name, default in EXTRA_FIELDS.items():
            with located(loc, name):
                setattr(self, name, getattr(self, f"_parse_{name}")(extras.get(name, default)))
        self.optimizer_spec = optimizer
        with located(loc, "optimizer"):
            self.optimizer_class = optim.optimizer_class(optimizer)
        with located(loc, "lr"):
            self.lr = check_number("lr", lr, PlanError)
        if self.schedule is not None:
            with located(loc, "schedule"):
                try:
                    base_lr = self.base_lr
                except OptimizerError:  # no lr at all: building the optimizer says so
                    base_lr = None
                if base_lr is not None:
                    self.schedule.check_base_lr(base_lr)
        with located(loc, "weight_decay"):
            if weight_decay is None:
                raise PlanError("weight_decay must be a number, got None")
            self.weight_decay = check_number("weight_decay", weight_decay, PlanError)
        self.optimizer_options = {}
        for key, value in options.items():
            with located(loc, key):
                self._check_plan_option(key)
                self.optimizer_options[key] = optim.check_option_value(self.optimizer_class, key, value)
        self.rules = [self._rule(i, r) for i, r in enumerate(rules)]

    # -- construction --------------------------------------------------------------------

    @staticmethod
    def _parse_schedule(value: Any) -> Schedule | None:
        return value if isinstance(value, Schedule) or value is None else Schedule.from_dict(value)

    @staticmethod
    def _parse_layer_decay(value: Any) -> float | None:
        return check_number("layer_decay", value, PlanError)

    def _parse_layers(self, value: Any) -> Any:
        if value is None:
            return None
        if self.layer_decay is None:
            raise PlanError("layers is set but layer_decay is not: give layer_decay too")
        ok = (isinstance(value, str) or (isinstance(value, list) and value and all(
            isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
            for v in value)))
        if not ok:
            raise PlanError("layers must be a pattern with {i} (blocks.{i}) or a non-empty list of "
                            f"patterns, got {describe(value)}")
        for pattern in [value] if isinstance(value, str) else value:
            if isinstance(pattern, str) and "{i}" in pattern:
                continue
            PatternList(pattern)  # bad patterns fail at load
        return value

    @staticmethod
    def _parse_no_decay(value: Any) -> bool:
        return _flag("no_decay", value)

    @staticmethod
    def _parse_norm_trainable(value: Any) -> bool:
        return _flag("norm_trainable", value)

    @staticmethod
    def _parse_loraplus(value: Any) -> dict[str, float | None] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise PlanError(f"loraplus must be a mapping (ratio: 16, embedding_lr: 1e-6, "
                            f"weight_decay: 0.0), got {describe(value)}")
        for key in value:
            if key not in LORAPLUS_FIELDS:
                close = difflib.get_close_matches(str(key), LORAPLUS_FIELDS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(LORAPLUS_FIELDS)}"
                raise PlanError(f"loraplus: unknown field {key!r} ({hint})")
        if value.get("ratio") is None:
            raise PlanError("loraplus needs ratio, the LR of lora_B over lora_A (LoRA+ suggests 16)")
        out = {**LORAPLUS_FIELDS, **value}
        return {k: check_number(f"loraplus {k}", v, PlanError) for k, v in out.items()}

    @staticmethod
    def _parse_bn(value: Any) -> str:
        if value not in ("freeze", "train"):
            raise PlanError(f"bn must be 'freeze' (hold the statistics of frozen norm layers) or "
                            f"'train' (torch's behaviour), got {value!r}")
        return value

    @staticmethod
    def _parse_stages(value: Any) -> tuple[Stage, ...]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise PlanError(f"stages must be a list of stages, got {type(value).__name__}")
        stages = []
        for i, item in enumerate(value):
            try:
                stages.append(item if isinstance(item, Stage) else Stage.from_dict(item))
            except PlanError as exc:
                raise PlanError(f"stage {i}: {exc}") from None
        check_stages(stages)
        return tuple(stages)

    def _check_plan_option(self, key: str) -> None:
        if not isinstance(key, str):
            raise ConfigError(f"plan keys must be strings, got {key!r}")
        if key == "params":
            raise PlanError("'params' is not a plan field: the plan finds the parameters itself")
        if not optim.takes(self.optimizer_class, key):
            raise OptimizerError(_unknown(key, PLAN_FIELDS, self.optimizer_class))

    def _rule(self, index: int, rule: Rule | Mapping[str, Any]) -> Rule:
        line = self._loc.line("rules", index)
        try:
            if isinstance(rule, Rule):
                built = rule
            elif isinstance(rule, Mapping):
                built = self._rule_from_mapping(index, rule)
            else:
                raise RuleError(f"a rule must be a mapping of fields, got {rule!r}")
            for key, value in built.options.items():
                self._check_rule_option(key)
                built.options[key] = optim.check_option_value(self.optimizer_class, key, value)
            return built
        except LocatedError as exc:
            raise exc.error from None
        except ParamgroupsError as exc:
            raise located_rule_error(exc, index, self._loc.source, line) from None

    def _check_rule_option(self, key: Any) -> None:
        if not isinstance(key, str):
            raise RuleError(f"rule keys must be strings, got {key!r}")
        if key not in RULE_FIELDS and not optim.takes(self.optimizer_class, key):
            raise RuleError(_unknown(key, RULE_FIELDS, self.optimizer_class))

    def _rule_from_mapping(self, index: int, data: Mapping[str, Any]) -> Rule:
        for key in data:
            try:
                self._check_rule_option(key)
            except RuleError as exc:  # point at the key's own line
                line = self._loc.line("rules", index, key)
                raise LocatedError(located_rule_error(exc, index, self._loc.source, line)) from None
        return Rule(**data, source=self._loc.source, line=self._loc.line("rules", index))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None,
                  locations: Locations | None = None) -> "Plan":
        """Build a plan from the mapping a plan file parses to."""
        loc = locations or Locations(source)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{loc.prefix()}a plan must be a mapping of fields, got {type(data).__name__}")
        fields = dict(data)
        rules = fields.pop("rules", None)
        if rules is None:
            rules = []
        if not isinstance(rules, list):
            raise ConfigError(f"{loc.prefix('rules')}rules must be a list of rules, got {type(rules).__name__}")
        plan = cls.__new__(cls)
        extras = {k: fields.pop(k) for k in EXTRA_FIELDS if k in fields}
        plan._init(rules, fields.pop("lr", None), fields.pop("weight_decay", 0.0),
                   fields.pop("optimizer", "sgd"), fields, loc, extras)
        return plan

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a YAML, TOML or JSON plan file."""
        data, loc = read_plan_file(path)
        if data is None:
            data = {}
        return cls.from_dict(data, locations=loc)

    def to_dict(self) -> dict[str, Any]:
        """The plan-file form; ``Plan.from_dict(plan.to_dict())`` gives an equal plan."""
        spec = self.optimizer_spec
        out: dict[str, Any] = {
            "optimizer": spec if isinstance(spec, str) else f"{spec.__module__}:{spec.__qualname__}",
        }
        if self.lr is not None:
            out["lr"] = self.lr
        out["weight_decay"] = self.weight_decay
        out.update(self.optimizer_options)
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_dict()
        if self.layer_decay is not None:
            out["layer_decay"] = self.layer_decay
        if self.layers is not None:
            out["layers"] = self.layers
        if self.no_decay:
            out["no_decay"] = True
        if self.stages:
            out["stages"] = [st.to_dict() for st in self.stages]
        if self.bn != "freeze":
            out["bn"] = self.bn
        if self.norm_trainable:
            out["norm_trainable"] = True
        if self.loraplus is not None:
            out["loraplus"] = {k: v for k, v in self.loraplus.items() if v is not None}
        out["rules"] = [r.to_dict() for r in self.rules]
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Plan({self.to_dict()!r})"

    # -- resolution ----------------------------------------------------------------------

    @property
    def base_lr(self) -> float:
        """The plan's lr, or the optimizer's own default when the plan leaves it unset."""
        return self.lr if self.lr is not None else optim.default_lr(self.optimizer_class)

    @property
    def all_rules(self) -> list[Rule]:
        """The rules, then the ``loraplus`` rules, then the ``no_decay`` shorthand's rule."""
        rules = [*self.rules, *self._loraplus_rules()]
        if self.no_decay:
            rules.append(Rule(kinds=NO_DECAY_KINDS, weight_decay=0.0, optional=True))
        return rules

    def _loraplus_rules(self) -> list[Rule]:
        """peft's four LoRA+ groups as rules: A (the rest), B (``lora_B`` and 1-d parameters:
        LR x ratio), B without decay (names with "bias", or inside a LayerNorm, as transformers'
        ``get_parameter_names(model, ALL_LAYERNORM_LAYERS)`` decides) and embedding LoRA."""
        if self.loraplus is None:
            return []
        ratio, embedding_lr, wd = (self.loraplus[k] for k in ("ratio", "embedding_lr", "weight_decay"))
        decay = {} if wd is None else {"weight_decay": wd}
        group_b = ["lora_B", "ndim<=1"]
        return [*([Rule(optional=True, **decay)] if decay else []),
                Rule(kinds=group_b, lr_mult=ratio, optional=True),
                Rule("re:.*bias.*", kinds=group_b, weight_decay=0.0, optional=True),
                Rule(within="LayerNorm", kinds=group_b, weight_decay=0.0, optional=True),
                Rule("**.lora_embedding_{A,B}", within="Embedding", lr=embedding_lr, lr_mult=1.0,
                     optional=True, **decay)]

    def resolve(self, model: nn.Module, *, strict: bool = True) -> Resolution:
        """Resolve the rules against ``model``: assignments, groups and problems."""
        with _gc_paused(), self._in_file():  # many small objects, no cycles: GC only costs time
            return self._resolve(model, strict)

    @contextmanager
    def _in_file(self) -> Iterator[None]:
        """Errors found against a model still name the plan file (and the line when known)."""
        try:
            yield
        except ParamgroupsError as exc:
            source = self._loc.source
            if source is None or str(exc).startswith(source):
                raise
            text = str(exc)
            stage = re.match(r"stage (\d+):", text)
            key: tuple = ("stages", int(stage.group(1))) if stage else next(
                ((k,) for k in ("layers", "layer_decay", "schedule") if text.startswith(k)), ())
            raise type(exc)(f"{self._loc.prefix(*key)}{text}") from None

    def _resolve(self, model: nn.Module, strict: bool) -> Resolution:
        records = inventory(model)
        covers, index = name_table(records)
        layers = scales = None
        if self.layer_decay is not None:
            layers = layer_ids(model, records, self.layers, covers, index)
            scales = layer_scales(layers, self.layer_decay)
        rules = self.all_rules
        res = resolve(records, rules, base_lr=self.base_lr, base_weight_decay=self.weight_decay,
                      strict=strict, layers=layers, scales=scales, covers=covers, index=index)
        # norm_trainable overrides the plan's own freezing, never the model's (a PEFT base norm)
        keep = [self.norm_trainable and "norm" in a.record.kinds and a.record.is_float
                and a.frozen_by != "model" for a in res.assignments]
        frozen = [a.frozen and not k for a, k in zip(res.assignments, keep)]
        events, start = timelines(records, self.stages, frozen, keep, res.covers, res.index)
        for a, ev, fr in zip(res.assignments, events, start):
            if fr != a.frozen:  # norm_trainable, or a stage at time 0
                at_zero = [i for i, _ in ev if self.stages[i].when == 0]
                a.frozen_by = f"stage {at_zero[-1]}" if fr and at_zero else None
            a.events, a.frozen = ev, fr
        res.groups = build_groups(res.assignments, self.rule_texts(rules), self._stage_texts())
        check_group_lrs(self.schedule or Schedule(), self.base_lr, [
            (g.name, g.lr, [self.stages[i].lr_mult for i, act in g.events if act == "thaw"])
            for g in res.groups])
        if not optim.takes(self.optimizer_class, "weight_decay"):
            wd = sorted({g.weight_decay for g in res.groups if g.weight_decay})
            if wd:
                raise OptimizerError(f"optimizer {self.optimizer_class.__name__} does not take "
                                     f"weight_decay, but the plan gives {wd[0]:g}")
        return res

    def rule_texts(self, rules: Sequence[Rule]) -> list[tuple[str, bool]]:
        """Short names of ``rules`` (``self.all_rules``) for group names and messages: each rule's
        own (:func:`rules.rule_text`), then ``loraplus`` and ``no_decay`` for the shorthands'."""
        loraplus = len(rules) - len(self.rules) - self.no_decay
        shorthand = ["loraplus"] * loraplus + ["no_decay"] * self.no_decay
        return [rule_text(r) for r in self.rules] + [(name, False) for name in shorthand]

    def _stage_texts(self) -> list[tuple[str, str]]:
        out = []
        for st in self.stages:
            what = st.unfreeze if st.unfreeze is not None else st.freeze
            when = f"epoch {st.epoch:g}" if st.epoch is not None else f"step {st.step}"
            out.append((what if isinstance(what, str) else ",".join(what), when))
        return out

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Plain torch param-group dicts (also what DeepSpeed and other engines take)."""
        return self._torch_groups(self.resolve(model))

    def _torch_groups(self, res: Resolution) -> list[dict[str, Any]]:
        res.check_conflicts()
        with_wd = optim.takes(self.optimizer_class, "weight_decay")
        return [g.to_torch(with_weight_decay=with_wd) for g in res.groups]

    def apply(self, model: nn.Module) -> Resolution:
        """Set ``requires_grad`` as the plan says at step 0 and hold the statistics of norm
        layers whose parameters are all frozen (unless ``bn="train"``); return the resolution."""
        res = self.resolve(model)
        for a in res.assignments:
            if a.record.is_float:
                a.record.param.requires_grad_(not a.frozen)
                if a.frozen:
                    a.record.param.grad = None  # a zero gradient would still carry decay/momentum
        if self.bn == "freeze":
            norms.sync(model)
        return res

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Apply the freeze masks and build the optimizer from the plan's groups.

        Given a ``DistributedDataParallel`` model, it records what DDP registered, so a
        stage that thaws (or freezes) parameters behind DDP's back is an error at the next
        forward, with the fix (:func:`paramgroups.resync_ddp`), never a silent desync.
        """
        if distributed.is_ddp(model):
            distributed.watch(model)
        res = self.apply(model)
        opt = self.build_optimizer(res)
        setattr(opt, PLAN_TAG, Binding(self, res, model))
        return opt

    def build_optimizer(self, res: Resolution) -> torch.optim.Optimizer:
        """The optimizer for a resolution (no freeze masks applied); errors say why not.

        On CUDA parameters it uses the fused implementation where the optimizer has one, else
        foreach; on the CPU, foreach. ``fused``/``foreach`` in the plan override both.
        """
        with self._in_file():
            return self._build_optimizer(res)

    def _build_optimizer(self, res: Resolution) -> torch.optim.Optimizer:
        res.check_conflicts()
        cls = self.optimizer_class
        if not any(not a.frozen or any(e[1] == "thaw" for e in a.events) for a in res.assignments):
            raise PlanError("the plan freezes every parameter (by its rules, or as the model gave "
                            "them) and no stage thaws any: nothing would train (thaw something with "
                            "freeze: false, or add a stage that thaws it)")
        if len(res.groups) > 1 and _single_group(cls):
            raise OptimizerError(f"optimizer {cls.__name__} takes one param group, but this plan "
                                 f"makes {len(res.groups)} ({', '.join(g.name for g in res.groups)})")
        defaults = dict(self.optimizer_options, lr=self.base_lr)
        if optim.takes(cls, "weight_decay"):
            defaults["weight_decay"] = self.weight_decay
        defaults.update(optim.implementation(cls, self.optimizer_options, res.records))
        try:
            opt = cls(self._torch_groups(res), **defaults)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise OptimizerError(f"optimizer {cls.__name__} rejected the plan's settings: {exc}") from None
        setattr(opt, PLAN_TAG, Binding(self, res, None))  # audit() tells plan-built ones apart
        return opt


    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int | None = None
                  ) -> "PlanScheduler":
        """The LR scheduler for ``optimizer`` (built by this plan): a torch ``LRScheduler``.

        Call its ``step()`` once per epoch, or once per iteration when ``steps_per_epoch`` is
        given or the schedule counts steps. A plan without a schedule keeps LRs constant. An
        optimizer wrapped by accelerate or Lightning is unwrapped: the scheduler steps the
        wrapped optimizer, whose ``param_groups`` list the wrapper shares.
        """
        from .scheduler import PlanScheduler

        optimizer = _unwrap(optimizer)
        binding = getattr(optimizer, PLAN_TAG, None)
        if self.stages and (binding is None or binding.plan is not self or binding.model is None):
            raise PlanError("a plan with stages needs the optimizer from plan.optimizer(model) "
                            "of this same plan: its groups follow the stages")
        for message in self.warnings(steps_per_epoch):
            warnings.warn(message, PlanWarning, stacklevel=2)
        with self._in_file():
            (self.schedule or Schedule()).require_total()
            return PlanScheduler(optimizer, self.schedule or Schedule(), base_lr=self.base_lr,
                                 steps_per_epoch=steps_per_epoch, binding=binding)

    def warnings(self, steps_per_epoch: int | None = None) -> list[str]:
        """What in this plan probably is not meant, for a scheduler stepped as given: a stage
        warmup stepped once per epoch spends the stage's whole first epoch at ``warmup_start``
        (LR 0 by default)."""
        unit = (self.schedule or Schedule()).unit
        if steps_per_epoch is not None or unit == "step":
            return []
        return [f"stage {i} warms up over {st.warmup:g} epoch(s) but the scheduler steps once per "
                f"epoch: epoch {st.epoch:g} trains at {st.warmup_start:g} x its LR"
                f"{' (nothing moves)' if st.warmup_start == 0 else ''}; pass steps_per_epoch to "
                f"ramp per iteration"
                for i, st in enumerate(self.stages) if st.epoch is not None and st.warmup > 0]

    def stage_state_at(self, res: Resolution, epoch: float | None = None,
                       steps_per_epoch: int | None = None) -> list[tuple[bool, float]]:
        """(frozen, stage LR factor) of each group at the first step of ``epoch`` (default 0)."""
        steps, warmups, k = self._stage_clock(epoch, steps_per_epoch)
        return [stage_state(g.events, self.stages, g.frozen, k, steps, warmups) for g in res.groups]

    def frozen_by_at(self, res: Resolution, epoch: float | None = None,
                     steps_per_epoch: int | None = None) -> list[str | None]:
        """Per assignment, who froze it as of ``epoch``: the last stage that froze it, else the
        rule or the model (``Assignment.frozen_by``); ``None`` when it is trainable then."""
        steps, _, k = self._stage_clock(epoch, steps_per_epoch)
        out = []
        for a in res.assignments:
            done = [(i, action) for i, action in a.events if steps[i] <= k]
            if not done:
                out.append(a.frozen_by if a.frozen else None)
            else:
                out.append(f"stage {done[-1][0]}" if done[-1][1] == "freeze" else None)
        return out

    def _stage_clock(self, epoch: float | None, steps_per_epoch: int | None
                     ) -> tuple[list[int], list[int], int]:
        """Each stage's step and warmup in scheduler steps, and the step of ``epoch``."""
        if epoch is None:  # step 0: only stages at time 0 can have acted
            steps, warmups = stage_steps(self.stages, "step", steps_per_epoch or 1)
            return steps, warmups, 0
        schedule = self.schedule or Schedule()
        steps, warmups = stage_steps(self.stages, schedule.unit, steps_per_epoch)
        return steps, warmups, _step_of(epoch, steps_per_epoch)

    def factor_at(self, epoch: float, steps_per_epoch: int | None = None) -> float:
        """The schedule's LR factor at the first step of ``epoch`` (plateau: no reductions).

        The scheduler steps once per epoch without ``steps_per_epoch`` and once per iteration
        with it; a schedule in steps without ``steps_per_epoch`` reads ``epoch`` as a step.
        """
        schedule = self.schedule or Schedule()
        step = _step_of(epoch, steps_per_epoch)
        with self._in_file():  # a total left to a trainer: the error names the plan file
            return schedule.factor(step, base_lr=self.base_lr, steps_per_epoch=steps_per_epoch)


def _step_of(epoch: float, steps_per_epoch: int | None) -> int:
    if not is_finite_number(epoch) or epoch < 0:
        raise PlanError(f"the epoch to look at must be a finite number >= 0, got {describe(epoch)}")
    if not math.isfinite(epoch * (steps_per_epoch or 1)):
        raise PlanError(f"the epoch to look at, {epoch:g}, times {steps_per_epoch} steps per epoch "
                        "is beyond float range: look at an earlier epoch")
    return first_step(epoch, steps_per_epoch)


def _unwrap(optimizer: Any) -> Any:
    """The optimizer inside accelerate's (``.optimizer``) or Lightning's (``._optimizer``)
    wrapper, when the wrapper shares its ``param_groups`` list: stepping one steps both."""
    for _ in range(8):  # wrappers of wrappers, never a cycle
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer or (
                inner.param_groups is not optimizer.param_groups):
            return optimizer
        optimizer = inner
    return optimizer


@dataclass
class Binding:
    """What a plan-built optimizer remembers: the plan, its resolution and the model."""

    plan: Plan
    resolution: Resolution
    model: nn.Module | None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{name} must be true or false, got {value!r}")
    return value


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _single_group(cls: type) -> bool:
    return issubclass(cls, torch.optim.LBFGS)


def _unknown(key: str, fields: Sequence[str], cls: type) -> str:
    """An unknown key, with the closest of the plan's own fields and the optimizer's options."""
    valid = list(dict.fromkeys([*fields, *optim.accepted_options(cls)[0]]))
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid)}"
    return f"unknown field {key!r} (not a plan field nor an option of {cls.__name__}; {hint})"
