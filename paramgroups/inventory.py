"""The inventory: one record per parameter of a model, under its canonical name.

Canonical names drop wrapper segments (``module.`` from DDP, ``_orig_mod.`` from
torch.compile, FSDP and activation-checkpoint wrappers), so a plan written for a bare model
means the same on a wrapped one. Tied weights appear once, under their first name, with the
other names as aliases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

import torch
from torch import nn

from .errors import ModelError

WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
DDP_SEGMENT = "module"  # a wrapper segment only below (Distributed)DataParallel: users name modules so too
KINDS = ("weight", "bias", "norm", "embedding", "ndim<=1")
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_NORM_NAME = re.compile(r"(?i).*(batch|layer|group|instance|rms)_?norm.*")
# timm's usual no_weight_decay() tokens, used when the model does not declare its own.
NO_DECAY_TOKENS = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token",
                             "absolute_pos_embed", "relative_position_bias_table", "mask_token"})


@dataclass
class ParamRecord:
    """Everything paramgroups knows about one parameter, independent of any plan."""

    index: int
    name: str
    aliases: list[str]
    module: str
    module_class: str
    module_classes: tuple[str, ...]  # the owning module's class and its nn.Module bases
    kinds: frozenset[str]
    shape: tuple[int, ...]
    numel: int
    dtype: torch.dtype
    device: torch.device
    param: nn.Parameter = field(repr=False)
    owner: nn.Module = field(repr=False)

    @property
    def is_float(self) -> bool:
        """Only floating-point (and complex) parameters can be optimized."""
        return self.dtype.is_floating_point or self.dtype.is_complex

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


def canonical_name(name: str, ddp: frozenset[str] = frozenset()) -> str:
    """Drop wrapper segments from a dotted name: ``module._orig_mod.fc.weight`` -> ``fc.weight``.

    ``_orig_mod``, ``_fsdp_wrapped_module`` and ``_checkpoint_wrapped_module`` always go;
    ``module`` only where its parent's raw name is in ``ddp`` (see :func:`ddp_prefixes`), so a
    user's own submodule called ``module`` keeps its name.
    """
    if "module" not in name and "_orig_mod" not in name:  # every wrapper segment has one of these
        return name
    kept, raw = [], ""
    for seg in name.split("."):
        if seg not in WRAPPER_SEGMENTS and not (seg == DDP_SEGMENT and raw in ddp):
            kept.append(seg)
        raw = f"{raw}.{seg}" if raw else seg
    return ".".join(kept)


def ddp_prefixes(model: nn.Module) -> frozenset[str]:
    """Raw names of the (Distributed)DataParallel wrappers in ``model`` ("" for the root)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return frozenset(n for n, m in model.named_modules()
                     if isinstance(m, (DataParallel, DistributedDataParallel)))


def saved_ddp_prefixes(keys: Iterable[str]) -> frozenset[str]:
    """A state dict saved from a DDP-wrapped model has every key under ``module.``."""
    keys = list(keys)
    return frozenset({""}) if keys and all(k.startswith("module.") for k in keys) else frozenset()


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch's or a look-alike by class name)."""
    return _is_norm_class(type(module))


@lru_cache(maxsize=None)
def _is_norm_class(cls: type) -> bool:
    return issubclass(cls, _NORM_TYPES) or bool(_NORM_NAME.fullmatch(cls.__name__))


def no_decay_tokens(model: nn.Module) -> frozenset[str]:
    """Names the model declares exempt from weight decay (timm's ``no_weight_decay()``)."""
    fn = getattr(model, "no_weight_decay", None)
    declared: Iterable[str] = ()
    if callable(fn):
        try:
            declared = fn() or ()
        except Exception:  # a model's own hook failing must not break the audit
            declared = ()
    return NO_DECAY_TOKENS | frozenset(declared)


def _kinds(leaf: str, module: nn.Module, param: torch.Tensor, names: list[str],
           tokens: frozenset[str]) -> frozenset[str]:
    kinds = set()
    if leaf.endswith("bias"):
        kinds.add("bias")
    elif leaf.endswith("weight"):
        kinds.add("weight")
    if is_norm(module):
        kinds.add("norm")
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or any(
        n in tokens or n.rsplit(".", 1)[-1] in tokens for n in names
    ):
        kinds.add("embedding")
    if param.ndim <= 1:
        kinds.add("ndim<=1")
    return frozenset(kinds)


def _mro_names(module: nn.Module) -> tuple[str, ...]:
    return _class_names(type(module))


@lru_cache(maxsize=None)
def _class_names(cls: type) -> tuple[str, ...]:
    return tuple(c.__name__ for c in cls.__mro__ if issubclass(c, nn.Module) and c is not nn.Module
                 ) or ("Module",)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP / torch.compile wrappers, used for model-level hooks."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def inventory(model: nn.Module) -> list[ParamRecord]:
    """One :class:`ParamRecord` per distinct parameter tensor, in ``named_parameters`` order."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    tokens = no_decay_tokens(unwrap(model))
    ddp = ddp_prefixes(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    records: list[ParamRecord] = []
    by_id: dict[int, ParamRecord] = {}
    for raw, param in model.named_parameters(remove_duplicate=False):
        if type(param).__name__ == "FlatParameter" or raw.rpartition(".")[2] == "_flat_param":
            raise ModelError(
                f"{raw} is a FlatParameter: FSDP without use_orig_params=True flattens each wrapped "
                f"module's parameters into one tensor, so per-parameter groups are impossible. Wrap "
                f"with FullyShardedDataParallel(..., use_orig_params=True), or use FSDP2 (fully_shard)")
        name = canonical_name(raw, ddp)
        rec = by_id.get(id(param))
        if rec is not None:
            if name != rec.name and name not in rec.aliases:
                rec.aliases.append(name)
            continue
        owner_raw, _, leaf = raw.rpartition(".")
        owner = modules[owner_raw]
        rec = ParamRecord(
            index=len(records), name=name, aliases=[], module=canonical_name(owner_raw, ddp),
            module_class=type(owner).__name__, module_classes=_mro_names(owner),
            kinds=_kinds(leaf, owner, param, [name], tokens), shape=tuple(param.shape),
            numel=param.numel(), dtype=param.dtype, device=param.device, param=param, owner=owner,
        )
        by_id[id(param)] = rec
        records.append(rec)
    if not records:
        raise ModelError(f"the model ({type(model).__name__}) has no parameters")
    return records


def module_names(records: list[ParamRecord]) -> dict[str, list[int]]:
    """Every name a pattern is tried on, mapped to the records it covers.

    A parameter name covers its record; a module name covers every record below it. Aliases
    of tied weights contribute their own names and modules.
    """
    covers: dict[str, list[int]] = {}
    for rec in records:
        for name in rec.names:
            end = -1
            while True:
                end = name.find(".", end + 1)
                prefix = name if end < 0 else name[:end]
                lst = covers.setdefault(prefix, [])
                if not lst or lst[-1] != rec.index:
                    lst.append(rec.index)
                if end < 0:
                    break
    return covers


def owners(records: list[ParamRecord]) -> list[nn.Module]:
    """The distinct modules that own the records' parameters, in model order."""
    return list({id(r.owner): r.owner for r in records}.values())
