"""The inventory: one record per parameter of a model, under its canonical name.

Canonical names drop wrapper segments (:mod:`paramgroups.wrappers`), so a plan written for a
bare model means the same on a wrapped one. Tied weights appear once, under their first name,
with the other names as aliases. Each record carries its kinds (:mod:`paramgroups.kinds`).

The inventory is one walk of the module tree, as ``named_parameters`` walks it, that also
notes which records each module name covers, so the name table
(:class:`~paramgroups.names.NameTable`) needs no second pass over the names.
"""

from __future__ import annotations

from abc import ABC
from functools import lru_cache
from typing import Sequence

import torch
from torch import nn

from .errors import ModelError
from .kinds import (KINDS, adapter_kinds, as_head, class_names, is_norm, is_timm_model, kind_set,
                    no_decay_matcher, output_parameters)
from .wrappers import (TUNER_LAYER, canonical_name, loaded, saved_ddp_prefixes, strip_wrappers, unwrap,
                       wrapped_children, wrapper_types)

# the inventory's names that other modules import from here
__all__ = ["KINDS", "Inventory", "ParamRecord", "canonical_name", "inventory", "is_norm", "is_timm_model",
           "saved_ddp_prefixes", "strip_wrappers", "unwrap", "wrapped_children"]


class ParamRecord:
    """Everything paramgroups knows about one parameter, independent of any plan.

    ``module_classes`` are the owning module's class and its nn.Module bases; ``enclosing``
    the class names (bases and mixins too) of the owner and every module above it; ``is_float``
    whether it can be optimized (floating point or complex, read once: resolution asks it of
    every record). ``shape``, ``numel``, ``dtype`` and ``device`` are read from the parameter
    when asked for.
    """

    __slots__ = ("index", "name", "aliases", "module", "module_classes", "kinds", "param", "owner", "enclosing",
                 "is_float")

    def __init__(self, index: int, name: str, aliases: list[str], module: str, module_classes: tuple[str, ...],
                 kinds: frozenset[str], param: nn.Parameter, owner: nn.Module,
                 enclosing: frozenset[str] = frozenset()):
        self.index = index
        self.name = name
        self.aliases = aliases
        self.module = module
        self.module_classes = module_classes
        self.kinds = kinds
        self.param = param
        self.owner = owner
        self.enclosing = enclosing
        dtype = param.dtype
        self.is_float = dtype.is_floating_point or dtype.is_complex  # only these can be optimized

    @property
    def module_class(self) -> str:
        return self.module_classes[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.param.dtype

    @property
    def device(self) -> torch.device:
        return self.param.device

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def __repr__(self) -> str:
        return (f"ParamRecord(index={self.index}, name={self.name!r}, aliases={self.aliases!r}, "
                f"module={self.module!r}, module_class={self.module_class!r}, kinds={sorted(self.kinds)!r}, "
                f"shape={self.shape!r}, dtype={self.dtype}, device={self.device})")


class Inventory(list):
    """The records of a model (a list, in ``named_parameters`` order) and ``covers``: every
    parameter name and every module name above one, mapped to the indices of the records
    under it (a ``range`` for a module's own subtree; more where tied weights have aliases)."""

    covers: dict[str, Sequence[int]]


@lru_cache(maxsize=None)
def _enclosing(outer: frozenset[str], cls: type) -> frozenset[str]:
    """``outer`` plus the names of ``cls`` and its bases (PEFT's ``LoraLayer`` mixin too); one
    shared set per path of classes, so records of a big model hold a handful of sets."""
    return outer | {c.__name__ for c in cls.__mro__ if c not in (object, nn.Module, ABC)}


# (wrapper classes, tuner class) -> (module class, classes above it) -> :func:`_class_info`:
# one table per set of imported wrapper classes, kept across models (it holds classes only)
_INFO: dict[tuple, dict[tuple[type, frozenset[str]], tuple]] = {}


def _class_info(cls: type, outer: frozenset[str], types: dict[type, str], tuner: type | None
                ) -> tuple[tuple[str, ...], bool, bool, tuple[str, ...], frozenset[str]]:
    """What the walk asks of every module of class ``cls`` below modules of classes ``outer``,
    once per pair: the attributes a wrapper of this class may wrap a module under, whether it
    is a PEFT tuner layer, whether it is an ``nn.Linear`` outside any tuner layer, its class
    names, and the classes of it and above it."""
    attrs = tuple(attr for wrapper, attr in types.items() if issubclass(cls, wrapper))
    return (attrs, tuner is not None and issubclass(cls, tuner),
            issubclass(cls, nn.Linear) and TUNER_LAYER[1] not in outer, class_names(cls), _enclosing(outer, cls))


def _merge(a: Sequence[int] | None, b: Sequence[int]) -> Sequence[int]:
    """The indices of ``a`` and ``b`` under one name (a wrapper and the module it wraps)."""
    if a is None:
        return b
    if isinstance(a, range) and isinstance(b, range) and a.start <= b.stop and b.start <= a.stop:
        return range(min(a.start, b.start), max(a.stop, b.stop))
    return sorted({*a, *b})


def _flat_parameter(model: nn.Module, param: nn.Parameter) -> ModelError:
    raw = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is param)
    return ModelError(
        f"{raw} is a FlatParameter: FSDP without use_orig_params=True flattens each wrapped "
        f"module's parameters into one tensor, so per-parameter groups are impossible. Wrap "
        f"with FullyShardedDataParallel(..., use_orig_params=True), or use FSDP2 (fully_shard)")


def inventory(model: nn.Module) -> Inventory:
    """One :class:`ParamRecord` per distinct parameter tensor, in ``named_parameters`` order."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    bare = unwrap(model)
    no_decay = no_decay_matcher(bare)
    leaves, declared, globs = no_decay.leaves, no_decay.names, bool(no_decay.globs)
    types, tuner = wrapper_types(), loaded(*TUNER_LAYER)
    info = _INFO.setdefault((tuple(types.items()), tuner), {})
    kinds_of: dict[tuple, frozenset[str]] = {}  # (class, leaf, ndim, no-decay name) -> kinds
    adapters: dict[int, frozenset[str]] = {}  # tensor id -> adapter kinds, from the tuner layers above
    records, by_id, covers, tied = Inventory(), {}, {}, []
    last_linear = last_matrix = None
    # one walk, as torch's named_parameters(remove_duplicate=False) walks (modules in
    # named_modules order, each module's own parameters in registration order), by an explicit
    # stack of (module, canonical name, classes above it, whether a wrapper wraps it); an entry
    # (None, name, start) closes a module: the records since ``start`` are its subtree
    stack: list[tuple] = [(model, "", frozenset(), False)]
    parameter, record, append = nn.Parameter, ParamRecord, records.append
    while stack:
        owner, canon, outer, wrapped = stack.pop()
        if owner is None:
            if canon and len(records) > outer:
                known = covers.get(canon)  # set already when a wrapper and the module it wraps share it
                covers[canon] = range(outer, len(records)) if known is None else _merge(
                    known, range(outer, len(records)))
            continue
        params, children = owner._parameters, owner._modules
        if not params and not children:  # an activation, a dropout: nothing to note
            continue
        cls = type(owner)
        known = info.get((cls, outer))
        if known is None:
            known = info[cls, outer] = _class_info(cls, outer, types, tuner)
        attrs, is_tuner, is_linear, classes, outer = known
        if is_tuner:
            adapters.update(adapter_kinds(owner))
        if is_linear or (wrapped and issubclass(cls, nn.Linear)):  # a tuner layer's base_layer counts
            last_linear = owner  # the output layer of a plain model; an adapter's own Linear is none
        prefix = canon + "." if canon else ""
        first = len(records)
        for leaf, param in params.items():
            if param is None:
                continue
            if leaf == "_flat_param" or (type(param) is not parameter and type(param).__name__ == "FlatParameter"):
                raise _flat_parameter(model, param)
            name = prefix + leaf
            pid = id(param)
            rec = by_id.get(pid)
            if rec is not None:
                if name != rec.name and name not in rec.aliases:
                    rec.aliases.append(name)
                    tied.append((name, rec.index))
                continue
            ndim = param.ndim
            named = leaf in leaves or name in declared or (globs and no_decay(name))
            kinds = kinds_of.get((cls, leaf, ndim, named))
            if kinds is None:
                end = "bias" if leaf.endswith("bias") else "weight" if leaf.endswith("weight") else ""
                kinds = kinds_of[cls, leaf, ndim, named] = kind_set(cls, end, min(ndim, 3), named)
            if adapters and pid in adapters:
                kinds = kinds | adapters[pid]
            if canon and "matrix" in kinds:
                last_matrix = owner
            index = len(records)
            append(by_id.setdefault(pid, record(index, name, [], canon, classes, kinds, param, owner, outer)))
            covers[name] = (index,) if name not in covers else _merge(covers[name], (index,))
        if children:
            stack.append((None, canon, first, False))
            attr = next((a for a in attrs if isinstance(children.get(a), nn.Module)), None) if attrs else None
            if attr is None:
                stack.extend([(child, prefix + key, outer, False)
                              for key, child in reversed(children.items()) if child is not None])
            else:
                stack.extend([(child, canon, outer, True) if key == attr else (child, prefix + key, outer, False)
                              for key, child in reversed(children.items()) if child is not None])
        elif canon and len(records) > first:
            known = covers.get(canon)
            covers[canon] = range(first, len(records)) if known is None else _merge(known, range(first, len(records)))
    if not records:
        raise ModelError(f"the model ({type(model).__name__}) has no parameters")
    for name, index in tied:  # an alias is covered by its own name and every module above it
        while name:
            covers[name] = _merge(covers.get(name), (index,))
            name = name[:max(name.rfind("."), 0)]
    for param in output_parameters(bare, last_linear, last_matrix):
        rec = by_id.get(id(param))
        if rec is not None and id(param) not in adapters:  # a LoRA of the head is an adapter
            rec.kinds = as_head(rec.kinds)
    records.covers = covers
    return records
