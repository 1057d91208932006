"""Wrapper modules and canonical names.

Canonical names drop wrapper segments (``module.`` from DDP, ``_orig_mod.`` from
torch.compile, FSDP and activation-checkpoint wrappers, PEFT's ``base_model.model.`` and
``.base_layer``), so a plan written for a bare model means the same on a wrapped one. A wrapper
is known by its class, so a user's own child called ``module`` keeps its name.
"""

from __future__ import annotations

import sys
from typing import Iterable

from torch import nn

WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
DDP_SEGMENT = "module"  # a wrapper segment only below (Distributed)DataParallel: users name modules so too
TUNER_LAYER = ("peft.tuners.tuners_utils", "BaseTunerLayer")  # every PEFT method's layer


def canonical_name(name: str, ddp: frozenset[str] = frozenset()) -> str:
    """Drop wrapper segments from a name whose model is not at hand (a checkpoint key):
    ``module._orig_mod.fc.weight`` -> ``fc.weight``.

    Only the name can tell, so ``_orig_mod``, ``_fsdp_wrapped_module`` and
    ``_checkpoint_wrapped_module`` always go; ``module`` only where its parent's raw name is in
    ``ddp`` (see :func:`saved_ddp_prefixes`). A model's own names go through
    :func:`wrapped_children` and :func:`strip_wrappers`, which look at what each module is.
    """
    if "module" not in name and "_orig_mod" not in name:  # every wrapper segment has one of these
        return name
    kept, raw = [], ""
    for seg in name.split("."):
        if seg not in WRAPPER_SEGMENTS and not (seg == DDP_SEGMENT and raw in ddp):
            kept.append(seg)
        raw = f"{raw}.{seg}" if raw else seg
    return ".".join(kept)


# Wrappers whose classes live in modules torch does not import by itself: (module, class,
# the attribute the wrapped module is registered under).
_LAZY_WRAPPERS = (
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    ("torch.distributed.algorithms._checkpoint.checkpoint_wrapper", "ActivationWrapper",
     "_checkpoint_wrapped_module"),  # CheckpointWrapper and OffloadWrapper
    ("torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel",
     "_fsdp_wrapped_module"),  # FSDP1; FSDP2 (fully_shard) adds no wrapper module
    ("peft.peft_model", "PeftModel", "base_model"),  # PeftModel -> LoraModel (a BaseTuner) -> model
    ("peft.tuners.tuners_utils", "BaseTuner", "model"),
    (*TUNER_LAYER, "base_layer"),  # a LoRA (IA3, LoHa, ...) layer around the model's own layer
)


def loaded(module: str, name: str) -> type | None:
    """Class ``name`` of ``module`` if that module was imported: a class never imported can
    have no instances, so it is not imported here (importing torch._dynamo or peft costs seconds)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def wrapper_types() -> dict[type, str]:
    """The real wrapper classes, each with the attribute its wrapped module is under
    (the lazy ones only once their module is imported, see :func:`loaded`)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    types: dict[type, str] = {DataParallel: "module", DistributedDataParallel: "module"}
    for module, cls, attr in _LAZY_WRAPPERS:
        found = loaded(module, cls)
        if found is not None:
            types[found] = attr
    return types


def wrapped_attr(module: nn.Module, types: dict[type, str]) -> str | None:
    """The attribute ``module`` wraps a module under, if it is a real wrapper."""
    for cls, attr in types.items():
        if isinstance(module, cls) and isinstance(module._modules.get(attr), nn.Module):
            return attr
    return None


def wrapped_children(model: nn.Module) -> frozenset[str]:
    """Raw names of the modules that real wrappers in ``model`` wrap (``module`` under a DDP
    root, ``layer1._checkpoint_wrapped_module``): the only segments canonical names drop.

    A wrapper is known by its class (DDP, DataParallel, torch.compile's OptimizedModule,
    activation-checkpoint wrappers, FSDP1, PeftModel, PEFT's tuner models and layers), so a
    user's own child called ``module`` or ``_orig_mod`` keeps its name.
    """
    types = wrapper_types()
    out = set()
    for name, module in model.named_modules():
        attr = wrapped_attr(module, types)
        if attr is not None:
            out.add(f"{name}.{attr}" if name else attr)
    return frozenset(out)


def strip_wrappers(name: str, wrapped: frozenset[str]) -> str:
    """``name`` (raw, from the model) without its :func:`wrapped_children` segments."""
    if not wrapped:
        return name
    kept, raw = [], ""
    for seg in name.split("."):
        raw = f"{raw}.{seg}" if raw else seg
        if raw not in wrapped:
            kept.append(seg)
    return ".".join(kept)


def saved_ddp_prefixes(keys: Iterable[str]) -> frozenset[str]:
    """A state dict saved from a DDP-wrapped model has every key under ``module.``."""
    keys = list(keys)
    return frozenset({""}) if keys and all(k.startswith("module.") for k in keys) else frozenset()


def unwrap(model: nn.Module) -> nn.Module:
    """The model under its real wrappers (see :func:`wrapped_children`), used for model-level
    hooks such as ``no_weight_decay()``; a user's own child called ``module`` is no wrapper."""
    types = wrapper_types()
    while (attr := wrapped_attr(model, types)) is not None:
        model = model._modules[attr]
    return model
