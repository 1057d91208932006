"""The plan's fields, declared once: default, parser, dependencies and plan-file form.

Both ways of making a plan, ``Plan(...)`` keywords and a plan file's mapping
(``Plan.from_dict`` / ``Plan.load``), go through :func:`parse`: fields are parsed in the order
of :data:`FIELDS`, each after the fields it ``needs`` (``layers`` reads ``layer_decay``, the rules
read the optimizer), then every other key is an option of the optimizer. An error says where:
the field (and rule or stage) it is about, and, for a plan file, the line. :func:`to_dict`
writes the plan-file form from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

from . import optim
from .config import Locations
from .errors import ConfigError, OptimizerError, ParamgroupsError, PlanError, RuleError
from .patterns import PatternList
from .rules import RULE_FIELDS, Rule
from .schedules import Schedule
from .stages import Stage, check_stages
from .values import check_flag, check_number, describe, hint

LORAPLUS_FIELDS = {"ratio": None, "embedding_lr": 1e-6, "weight_decay": None}  # peft's defaults


class OptimizerChoice(NamedTuple):
    """The optimizer as the plan names it (``"adamw"``, a class) and the class it resolves to."""

    spec: str | type
    cls: type


@dataclass(frozen=True)
class Field:
    """One plan field. ``parse(value, *needed)`` checks a given value and returns the plan's
    value, given the parsed values of the fields named in ``needs`` (earlier in
    :data:`FIELDS`; ``"locations"`` is where the plan was written). ``write`` gives the
    plan-file form; ``to_dict`` leaves a field at its default out unless ``always``."""

    name: str
    default: Any
    parse: Callable[..., Any]
    needs: tuple[str, ...] = ()
    write: Callable[[Any], Any] = lambda value: value
    always: bool = False


def _optimizer(spec: Any) -> OptimizerChoice:
    return OptimizerChoice(spec, optim.optimizer_class(spec))


def _optimizer_text(choice: OptimizerChoice) -> str:
    spec = choice.spec
    return spec if isinstance(spec, str) else f"{spec.__module__}:{spec.__qualname__}"


def _number(name: str) -> Callable[[Any], float | None]:
    return lambda value: check_number(name, value, PlanError)


def _flag(name: str) -> Callable[[Any], bool]:
    return lambda value: check_flag(name, value, PlanError)


def _weight_decay(value: Any) -> float:
    return check_number("weight_decay", value, PlanError, optional=False)


def _schedule(value: Any, lr: float | None, optimizer: OptimizerChoice) -> Schedule | None:
    schedule = value if isinstance(value, Schedule) or value is None else Schedule.from_dict(value)
    if schedule is not None:
        try:
            base_lr = lr if lr is not None else optim.default_lr(optimizer.cls)
        except OptimizerError:  # no lr at all: building the optimizer says so
            base_lr = None
        if base_lr is not None:
            schedule.check_base_lr(base_lr)
    return schedule


def _layers(value: Any, layer_decay: float | None) -> Any:
    if value is None:
        return None
    if layer_decay is None:
        raise PlanError("layers is set but layer_decay is not: give layer_decay too")
    ok = (isinstance(value, str) or (isinstance(value, list) and value and all(
        isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
        for v in value)))
    if not ok:
        raise PlanError("layers must be a pattern with {i} (blocks.{i}) or a non-empty list of "
                        f"patterns, got {describe(value)}")
    for pattern in [value] if isinstance(value, str) else value:
        if not (isinstance(pattern, str) and "{i}" in pattern):
            PatternList(pattern)  # bad patterns fail at load
    return value


def _stages(value: Any, loc: Locations) -> tuple[Stage, ...]:
    """The stages; an invalid one is named (``stage 1: ...``) at the line of ``stages``."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise PlanError(f"stages must be a list of stages, got {type(value).__name__}")
    stages = []
    for i, item in enumerate(value):
        try:
            stages.append(item if isinstance(item, Stage) else Stage.from_dict(item))
        except ParamgroupsError as exc:
            raise exc.at(stage=i, line=loc.line("stages")) from None
    check_stages(stages)
    return tuple(stages)


def _bn(value: Any) -> str:
    if value not in ("freeze", "train"):
        raise PlanError(f"bn must be 'freeze' (hold the statistics of frozen norm layers) or "
                        f"'train' (torch's behaviour), got {value!r}")
    return value


def _loraplus(value: Any) -> dict[str, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise PlanError(f"loraplus must be a mapping (ratio: 16, embedding_lr: 1e-6, "
                        f"weight_decay: 0.0), got {describe(value)}")
    for key in value:
        if key not in LORAPLUS_FIELDS:
            raise PlanError(f"loraplus: unknown field {key!r} ({hint(key, LORAPLUS_FIELDS, what='fields:')})")
    if value.get("ratio") is None:
        raise PlanError("loraplus needs ratio, the LR of lora_B over lora_A (LoRA+ suggests 16)")
    return {k: check_number(f"loraplus {k}", v, PlanError) for k, v in {**LORAPLUS_FIELDS, **value}.items()}


def _optimizers(value: Any, optimizer: OptimizerChoice, loc: Locations) -> dict[str, dict[str, Any]]:
    """Per-optimizer defaults, ``{muon: {lr: 0.02, momentum: 0.95}}``: keys are optimizer names
    (kept as :func:`optim.optimizer_name` gives them; two keys naming one class are an error),
    values options of that optimizer, each checked against it at its own line."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlanError(f"optimizers must be a mapping of optimizer names to their options "
                        f"({{muon: {{lr: 0.02, momentum: 0.95}}}}), got {describe(value)}")
    known = {optimizer_name(optimizer.spec, {}): optimizer.cls}
    out: dict[str, dict[str, Any]] = {}
    for spec, options in value.items():
        try:
            name = optimizer_name(spec, known)
            if name in out:
                raise PlanError(f"optimizers: {spec!r} names optimizer {name!r} a second time")
            if options is None:
                options = {}
            if not isinstance(options, Mapping):
                raise PlanError(f"optimizers: {name}: the options must be a mapping "
                                f"(lr: 0.02, momentum: 0.95), got {describe(options)}")
        except ParamgroupsError as exc:
            raise exc.at(line=loc.line("optimizers", spec)) from None
        cls = known[name]
        checked = {}
        for key, option in options.items():
            try:
                if key == "params" or not isinstance(key, str) or not optim.takes(cls, key):
                    valid = list(optim.accepted_options(cls)[0])
                    raise OptimizerError(f"optimizers: {name}: {key!r} is not an option of "
                                         f"{cls.__name__} ({hint(key, valid, what='valid:')})")
                checked[key] = optim.check_option_value(cls, key, option)
            except ParamgroupsError as exc:
                raise exc.at(line=loc.line("optimizers", spec, key)) from None
        out[name] = checked
    return out


def optimizer_name(spec: Any, known: dict[str, type]) -> str:
    """The plan's name for the optimizer ``spec``: :func:`optim.optimizer_name`, or the name
    already in ``known`` (name -> class) of the same class; a new one is added to ``known``."""
    name, cls = optim.optimizer_name(spec), optim.optimizer_class(spec)
    for other, klass in known.items():
        if klass is cls:
            return other
    known[name] = cls
    return name


def _rules(value: Any, optimizer: OptimizerChoice, optimizers: Mapping[str, Any],
           loc: Locations) -> list[Rule]:
    """The rules; each rule's ``optimizer`` is named as the plan names it, and its options are
    checked against that optimizer, or, when it routes nothing, against every optimizer of the
    plan (resolution checks each parameter's own)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"rules must be a list of rules, got {type(value).__name__}")
    value = list(value)
    known = {optimizer_name(optimizer.spec, {}): optimizer.cls}
    for name in optimizers:
        optimizer_name(name, known)
    routes = []  # each rule's optimizer, as the plan names it
    for i, item in enumerate(value):
        spec = item.get("optimizer") if isinstance(item, Mapping) else getattr(item, "optimizer", None)
        try:
            routes.append(None if spec is None else optimizer_name(spec, known))
        except ParamgroupsError as exc:
            raise exc.at(rule=i, line=loc.line("rules", i, "optimizer")) from None
    rules = []
    for i, (item, route) in enumerate(zip(value, routes)):
        classes = list(known.values()) if route is None else [known[route]]
        try:
            rules.append(_rule(item, i, classes, loc))
        except ParamgroupsError as exc:
            raise exc.at(rule=i) from None
        if route is not None:
            rules[-1].optimizer = route
    return rules


def _rule(item: Any, index: int, classes: list[type], loc: Locations) -> Rule:
    """Rule ``index``: a :class:`Rule`, or a mapping of its fields (an unknown key is an error
    at the key's own line); optimizer options are checked against the optimizers ``classes``
    (the rule's own, or all of the plan's when it routes nothing)."""
    if isinstance(item, Mapping):
        for key in item:
            if not isinstance(key, str):
                raise RuleError(f"rule keys must be strings, got {key!r}")
            try:
                _check_key(key, RULE_FIELDS, classes, RuleError)
            except RuleError as exc:
                raise exc.at(line=loc.line("rules", index, key)) from None
        item = Rule(**item, source=loc.source, line=loc.line("rules", index))
    elif not isinstance(item, Rule):
        raise RuleError(f"a rule must be a mapping of fields, got {item!r}")
    for key, value in item.options.items():
        _check_key(key, RULE_FIELDS, classes, RuleError)
        cls = next(c for c in classes if optim.takes(c, key))
        item.options[key] = optim.check_option_value(cls, key, value)
    return item


def _check_key(key: str, fields: tuple[str, ...], classes: list[type],
               error: type[ParamgroupsError]) -> None:
    """``key`` is one of ``fields`` or an option of one of the optimizers ``classes``; else
    ``error`` with the closest of all."""
    if key in fields or any(optim.takes(cls, key) for cls in classes):
        return
    valid = list(dict.fromkeys([*fields, *(k for cls in classes for k in optim.accepted_options(cls)[0])]))
    names = " or ".join(cls.__name__ for cls in classes)
    raise error(f"unknown field {key!r} (not a plan field nor an option of {names}; "
                f"{hint(key, valid, what='valid:')})")


FIELDS: tuple[Field, ...] = (
    Field("optimizer", "sgd", _optimizer, write=_optimizer_text, always=True),
    Field("optimizers", {}, _optimizers, needs=("optimizer", "locations"),
          write=lambda table: {name: dict(options) for name, options in table.items()}),
    Field("lr", None, _number("lr")),
    Field("weight_decay", 0.0, _weight_decay, always=True),
    Field("schedule", None, _schedule, needs=("lr", "optimizer"), write=Schedule.to_dict),
    Field("layer_decay", None, _number("layer_decay")),
    Field("layers", None, _layers, needs=("layer_decay",)),
    Field("no_decay", False, _flag("no_decay")),
    Field("stages", (), _stages, needs=("locations",), write=lambda stages: [st.to_dict() for st in stages]),
    Field("bn", "freeze", _bn),
    Field("norm_trainable", False, _flag("norm_trainable")),
    Field("loraplus", None, _loraplus, write=lambda lp: {k: v for k, v in lp.items() if v is not None}),
    Field("rules", (), _rules, needs=("optimizer", "optimizers", "locations"),
          write=lambda rules: [r.to_dict() for r in rules], always=True),
)
NAMES = tuple(f.name for f in FIELDS)


def parse(given: Mapping[str, Any], loc: Locations) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan's field values and optimizer options from ``given`` (keywords, or a plan
    file's mapping written where ``loc`` says); errors are located there."""
    values: dict[str, Any] = {"locations": loc}
    for field in FIELDS:
        try:
            values[field.name] = field.parse(given.get(field.name, field.default),
                                             *(values[n] for n in field.needs))
        except ParamgroupsError as exc:
            raise loc.locate(exc.at(field=field.name)) from None
    del values["locations"]
    cls = values["optimizer"].cls
    options = {}
    for key, value in given.items():
        if key in NAMES:
            continue
        try:
            if not isinstance(key, str):
                raise ConfigError(f"plan keys must be strings, got {key!r}")
            if key == "params":
                raise PlanError("'params' is not a plan field: the plan finds the parameters itself")
            _check_key(key, NAMES, [cls], OptimizerError)
            options[key] = optim.check_option_value(cls, key, value)
        except ParamgroupsError as exc:
            raise loc.locate(exc.at(field=key if isinstance(key, str) else None)) from None
    return values, options


def to_dict(values: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The plan-file form of field ``values`` and optimizer ``options``: fields at their
    default left out (unless always written), options after ``weight_decay``, rules last."""
    out: dict[str, Any] = {}
    for field in FIELDS:
        value = values[field.name]
        if field.always or value != field.default:
            out[field.name] = field.write(value)
        if field.name == "weight_decay":
            out.update(options)
    return out
