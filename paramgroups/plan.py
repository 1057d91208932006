"""The plan: rules plus plan-wide settings, and what it emits (param groups, optimizers,
the scheduler).

A :class:`Plan` is declarative and model-independent: the same plan resolves on any model
whose parameter names its rules match. Its fields are declared, parsed and written in
:mod:`paramgroups.plan_fields`; resolving it against a model (:mod:`paramgroups.resolution`)
gives assignments and groups, which become ordinary ``torch.optim`` param groups and optimizers.
"""

from __future__ import annotations

import gc
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import distributed, norms, optim, plan_fields, resolution
from .composite import CompositeOptimizer
from .config import Locations, read_plan_file
from .errors import ConfigError, OptimizerError, ParamgroupsError, PlanError, PlanWarning
from .resolution import Resolution
from .rules import Rule, rule_text
from .schedules import Schedule
from .stages import Stage
from .values import check_number, hint

if TYPE_CHECKING:
    from .scheduler import PlanScheduler

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

    Several optimizers: a rule's ``optimizer`` routes its parameters to another optimizer
    (``Rule("blocks.**.weight", optimizer="muon")``); ``optimizers`` gives each optimizer its
    own defaults (``{"muon": {"lr": 0.02, "momentum": 0.95}}``). A parameter's LR is the last
    ``lr`` a rule sets, else its optimizer's ``lr`` under ``optimizers``, else the plan's ``lr``,
    else its optimizer's own default; the same for ``weight_decay`` and every option. The plan's
    top-level options (``momentum=0.9``) are options of ``optimizer`` (checked against it) and
    also apply to every other optimizer that takes them (never an error there); the plan's
    ``weight_decay`` likewise. A rule's option must be taken by the optimizer of every parameter
    it touches (an error at load for a rule that routes, at resolve otherwise). The schedule
    scales every group alike: its absolute LRs (``warmup_lr``, ``min_lr``) are relative to
    :attr:`base_lr`, the plan's own, for Muon's groups too. Names are
    :func:`paramgroups.optim.optimizer_name`'s: ``"AdamW"`` and ``torch.optim.AdamW`` are
    ``"adamw"``.
    ``_locations`` is where the values were written (:meth:`from_dict` passes a plan file's).
    """

    def __init__(self, rules: Iterable[Rule | Mapping[str, Any]] = (), *, lr: float | None = None,
                 weight_decay: float = 0.0, optimizer: str | type = "sgd",
                 schedule: Schedule | Mapping[str, Any] | str | None = None,
                 layer_decay: float | None = None, layers: str | Sequence[Any] | None = None,
                 no_decay: bool = False, stages: Sequence[Stage | Mapping[str, Any]] = (),
                 bn: str = "freeze", norm_trainable: bool = False,
                 loraplus: Mapping[str, float] | None = None,
                 optimizers: Mapping[str | type, Mapping[str, Any]] | None = None,
                 _locations: Locations | None = None, **optimizer_options: Any):
        given = {"rules": rules, "lr": lr, "weight_decay": weight_decay, "optimizer": optimizer,
                 "optimizers": optimizers,
                 "schedule": schedule, "layer_decay": layer_decay, "layers": layers,
                 "no_decay": no_decay, "stages": stages, "bn": bn, "norm_trainable": norm_trainable,
                 "loraplus": loraplus, **optimizer_options}
        self._loc = _locations or Locations(None)
        values, self.optimizer_options = plan_fields.parse(given, self._loc)
        self.optimizer_spec, self.optimizer_class = values.pop("optimizer")
        self.optimizers: dict[str, dict[str, Any]] = values.pop("optimizers")
        self.rules: list[Rule] = values.pop("rules")
        self.lr: float | None = values.pop("lr")
        self.weight_decay: float = values.pop("weight_decay")
        self.schedule: Schedule | None = values.pop("schedule")
        self.layer_decay: float | None = values.pop("layer_decay")
        self.layers: str | list | None = values.pop("layers")
        self.no_decay: bool = values.pop("no_decay")
        self.stages: tuple[Stage, ...] = values.pop("stages")
        self.bn: str = values.pop("bn")
        self.norm_trainable: bool = values.pop("norm_trainable")
        self.loraplus: dict[str, float | None] | None = values.pop("loraplus")
        self.default_optimizer: str = plan_fields.optimizer_name(self.optimizer_spec, {})
        known = {self.default_optimizer: self.optimizer_class}
        for name in [*self.optimizers, *(r.optimizer for r in self.rules if r.optimizer)]:
            plan_fields.optimizer_name(name, known)
        self.optimizer_classes: dict[str, type] = known

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None,
                  locations: Locations | None = None) -> "Plan":
        """Build a plan from the mapping a plan file parses to: the keyword call with the
        mapping's fields, errors located where ``locations`` says they were written."""
        loc = locations or Locations(source)
        if not isinstance(data, Mapping):
            raise loc.locate(ConfigError(f"a plan must be a mapping of fields, got {type(data).__name__}"))
        for key in data:
            if not isinstance(key, str) or key == "_locations":
                raise loc.locate(ConfigError(f"plan keys must be strings naming plan fields or "
                                             f"optimizer options, got {key!r}"))
        return cls(**data, _locations=loc)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a YAML, TOML or JSON plan file."""
        data, loc = read_plan_file(path)
        return cls.from_dict({} if data is None else data, locations=loc)

    def to_dict(self) -> dict[str, Any]:
        """The plan-file form; ``Plan.from_dict(plan.to_dict())`` gives an equal plan."""
        values = {name: getattr(self, name) for name in plan_fields.NAMES if name != "optimizer"}
        values["optimizer"] = plan_fields.OptimizerChoice(self.optimizer_spec, self.optimizer_class)
        return plan_fields.to_dict(values, self.optimizer_options)

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
    def locations(self) -> Locations:
        """Where the plan's values were written (lines of a plan file's keys)."""
        return self._loc

    def optimizer_class_of(self, name: str) -> type:
        """The class of the optimizer the plan names ``name`` (its ``optimizer``, a key of
        ``optimizers`` or a rule's ``optimizer``, as :func:`optim.optimizer_name` writes it)."""
        cls = self.optimizer_classes.get(name)
        if cls is None:
            raise OptimizerError(f"the plan has no optimizer {name!r}; "
                                 f"{hint(name, self.optimizer_classes, what='its optimizers are')}")
        return cls

    def base_lr_of(self, name: str) -> float:
        """The LR of a parameter of optimizer ``name`` that no rule gives one: its ``lr`` under
        ``optimizers``, else the plan's ``lr``, else that optimizer's own default."""
        lr = self.optimizers.get(name, {}).get("lr", self.lr)
        return lr if lr is not None else optim.default_lr(self.optimizer_class_of(name))

    def base_weight_decay_of(self, name: str) -> float:
        """The weight decay of a parameter of optimizer ``name`` that no rule gives one: its
        ``weight_decay`` under ``optimizers``, else the plan's (for another optimizer than the
        plan's own only when it takes weight_decay; else 0)."""
        own = self.optimizers.get(name, {})
        if "weight_decay" in own:
            return own["weight_decay"]
        if name == self.default_optimizer or optim.takes(self.optimizer_class_of(name), "weight_decay"):
            return self.weight_decay
        return 0.0

    def optimizer_defaults(self, name: str) -> dict[str, Any]:
        """The constructor options of optimizer ``name`` (before the implementation choice):
        the plan's top-level options it takes, then its own under ``optimizers``, then its base
        ``lr`` and ``weight_decay`` (when it takes it). Merged with a group's own options
        (``Group.options``, ``lr``, ``weight_decay``) they are what the group steps with."""
        cls = self.optimizer_class_of(name)
        own = name == self.default_optimizer
        out = {k: v for k, v in self.optimizer_options.items() if own or optim.takes(cls, k)}
        out.update(self.optimizers.get(name, {}))
        out["lr"] = self.base_lr_of(name)
        if optim.takes(cls, "weight_decay"):
            out["weight_decay"] = self.base_weight_decay_of(name)
        return out

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
        with _gc_paused():  # many small objects, no cycles: GC only costs time
            try:
                return resolution.resolve(self, model, strict=strict)
            except ParamgroupsError as exc:
                raise self._loc.locate(exc) from None

    @contextmanager
    def _in_file(self) -> Iterator[None]:
        """Errors of the schedule found when it runs (a total left to a trainer) name the
        plan file's schedule line, as the plan's own errors do."""
        try:
            yield
        except ParamgroupsError as exc:
            raise self._loc.locate(exc.at(field="schedule")) from None

    def rule_texts(self, rules: Sequence[Rule]) -> list[tuple[str, bool]]:
        """Short names of ``rules`` (``self.all_rules``) for group names and messages: each rule's
        own (:func:`rules.rule_text`), then ``loraplus`` and ``no_decay`` for the shorthands'."""
        loraplus = len(rules) - len(self.rules) - self.no_decay
        shorthand = ["loraplus"] * loraplus + ["no_decay"] * self.no_decay
        return [rule_text(r) for r in self.rules] + [(name, False) for name in shorthand]

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Plain torch param-group dicts (also what DeepSpeed and other engines take)."""
        return self._torch_groups(self.resolve(model))

    def _torch_groups(self, res: Resolution) -> list[dict[str, Any]]:
        """The groups as torch dicts; with several optimizers each says its own under
        ``"optimizer"`` (a single optimizer's groups stay plain)."""
        res.check_conflicts()
        several = len(res.optimizers) > 1
        takes_wd = {name: optim.takes(self.optimizer_class_of(name), "weight_decay") for name in res.optimizers}
        return [g.to_torch(with_weight_decay=takes_wd[g.optimizer], with_optimizer=several)
                for g in res.groups]

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
        try:
            return self._build_optimizer(res)
        except ParamgroupsError as exc:
            raise self._loc.locate(exc) from None

    def _build_optimizer(self, res: Resolution) -> torch.optim.Optimizer:
        res.check_conflicts()
        if not any(not a.frozen or any(e[1] == "thaw" for e in a.events) for a in res.assignments):
            raise PlanError("the plan freezes every parameter (by its rules, or as the model gave "
                            "them) and no stage thaws any: nothing would train (thaw something with "
                            "freeze: false, or add a stage that thaws it)")
        built = {}
        for name in res.optimizers:
            cls = self.optimizer_class_of(name)
            groups = [g for g in res.groups if g.optimizer == name]
            if len(groups) > 1 and _single_group(cls):
                raise OptimizerError(f"optimizer {cls.__name__} takes one param group, but this plan "
                                     f"makes {len(groups)} ({', '.join(g.name for g in groups)})")
            defaults = self.optimizer_defaults(name)
            records = res.records if len(res.optimizers) == 1 else [
                res.records[i] for g in groups for i in g.indices]
            defaults.update(optim.implementation(cls, defaults, records))
            built[name] = (cls, defaults)
        groups = self._torch_groups(res)
        if len(built) > 1:
            opt: torch.optim.Optimizer = CompositeOptimizer.build(groups, built)
        else:
            ((cls, defaults),) = built.values()
            try:
                opt = cls(groups, **defaults)
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
        try:
            return PlanScheduler(optimizer, self.schedule or Schedule(), base_lr=self.base_lr,
                                 steps_per_epoch=steps_per_epoch, binding=binding)
        except ParamgroupsError as exc:
            raise self._loc.locate(exc) from None

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
