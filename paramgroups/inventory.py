"""The inventory: one record per parameter of a model, under its canonical name.

Canonical names drop wrapper segments (``module.`` from DDP, ``_orig_mod.`` from
torch.compile, FSDP and activation-checkpoint wrappers, PEFT's ``base_model.model.`` and
``.base_layer``), so a plan written for a bare model means the same on a wrapped one. Tied
weights appear once, under their first name, with the other names as aliases.

Kinds (a parameter has every kind that applies; rules select by any of them):

- ``weight`` / ``bias``: by the leaf name (``*weight``, ``*bias``); a tensor of two or more
  dimensions of a module that is neither a norm nor an embedding is a ``weight`` whatever its name;
- ``norm``: the parameters of a normalization layer (:func:`is_norm`);
- ``embedding``: of an ``nn.Embedding``/``EmbeddingBag``, or named by the model's no-decay list;
- ``ndim<=1``: scalars and vectors;
- ``matrix``: a 2-D ``weight`` that is not a ``norm``, an ``embedding`` or a ``head``: what
  Muon takes (linear layers, ``nn.MultiheadAttention``'s ``in_proj_weight``; not a 4-D
  convolution, not a 3-D fused mixture-of-experts tensor);
- ``head``: every parameter of the model's output layer (:func:`_output_layers`): a transformers
  model's ``get_output_embeddings()``, a timm model's ``get_classifier()``, otherwise the last
  ``nn.Linear`` in module order (torchvision's ``fc``, VGG's ``classifier.6``). A tied
  ``lm_head.weight`` is the input embedding's tensor: one record, ``embedding`` and ``head``;
- ``lora_A`` / ``lora_B`` / ``adapter``: the active adapters' parameters of a PEFT model.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from abc import ABC
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import ModelError

WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
DDP_SEGMENT = "module"  # a wrapper segment only below (Distributed)DataParallel: users name modules so too
KINDS = ("weight", "bias", "norm", "embedding", "ndim<=1", "matrix", "head", "lora_A", "lora_B", "adapter")
_TUNER_LAYER = ("peft.tuners.tuners_utils", "BaseTunerLayer")  # every PEFT method's layer
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# Look-alikes outside torch are known by a class (or base class) name that ends in ``Norm`` or
# ``Norm1d/2d/3d`` (plus a variant tag, as timm's EvoNorm2dB0): timm's RmsNorm, torchvision's
# FrozenBatchNorm2d, transformers' LlamaRMSNorm/T5LayerNorm. A class whose name only contains
# "Norm" (LayerNormLSTMCell) is some other layer.
_NORM_NAME = re.compile(r".*Norm(?:[123]d\w*)?")
# timm's usual no_weight_decay() tokens (parameter leaf names), for models other than timm's
# that declare no list. A model with a list, and any timm model, is taken at its word, as
# timm's optimizer factory takes it: these are not added (timm decays a 2-D head.pos_embed).
NO_DECAY_TOKENS = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token",
                             "absolute_pos_embed", "relative_position_bias_table", "mask_token"})
_WILDCARD = re.compile(r"[*?\[]")


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
    # the class names (bases and mixins too) of the owner and every module above it
    enclosing: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def is_float(self) -> bool:
        """Only floating-point (and complex) parameters can be optimized."""
        return self.dtype.is_floating_point or self.dtype.is_complex

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


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
    (*_TUNER_LAYER, "base_layer"),  # a LoRA (IA3, LoHa, ...) layer around the model's own layer
)


def _loaded(module: str, name: str) -> type | None:
    """Class ``name`` of ``module`` if that module was imported: a class never imported can
    have no instances, so it is not imported here (importing torch._dynamo or peft costs seconds)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _adapter_kinds(layer: nn.Module) -> dict[int, frozenset[str]]:
    """The kinds of the active adapters' parameters of a PEFT tuner layer, by tensor id:
    ``adapter`` for each (every entry of its ``adapter_layer_names``), plus ``lora_A`` or
    ``lora_B`` for LoRA's two matrices. Inactive adapters (``add_adapter``) get none."""
    active = layer.active_adapters
    active = [active] if isinstance(active, str) else active
    out: dict[int, frozenset[str]] = {}
    for attr in getattr(layer, "adapter_layer_names", ()):
        container = getattr(layer, attr, None)
        kinds = _ADAPTER_KINDS.get(attr, _ADAPTER_KINDS[None])
        for adapter in active if isinstance(container, (nn.ModuleDict, nn.ParameterDict)) else ():
            item = container[adapter] if adapter in container else None
            params = item.parameters() if isinstance(item, nn.Module) else (item,) if item is not None else ()
            out.update((id(p), kinds) for p in params)
    return out


_ADAPTER_KINDS = {None: frozenset({"adapter"}), "lora_A": frozenset({"adapter", "lora_A"}),
                  "lora_B": frozenset({"adapter", "lora_B"})}


def _wrapper_types() -> dict[type, str]:
    """The real wrapper classes, each with the attribute its wrapped module is under
    (the lazy ones only once their module is imported, see :func:`_loaded`)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    types: dict[type, str] = {DataParallel: "module", DistributedDataParallel: "module"}
    for module, cls, attr in _LAZY_WRAPPERS:
        found = _loaded(module, cls)
        if found is not None:
            types[found] = attr
    return types


def _wrapped(module: nn.Module, types: dict[type, str]) -> str | None:
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
    types = _wrapper_types()
    out = set()
    for name, module in model.named_modules():
        attr = _wrapped(module, types)
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


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: a torch norm class or a subclass of one
    (timm's BatchNormAct2d), or a look-alike whose class or a base class is named ``*Norm``,
    ``*Norm1d``/``2d``/``3d``."""
    return _is_norm_class(type(module))


@lru_cache(maxsize=None)
def _is_norm_class(cls: type) -> bool:
    return issubclass(cls, _NORM_TYPES) or any(_NORM_NAME.fullmatch(n) for n in _class_names(cls))


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` was built by timm (``timm.create_model`` gives it a ``pretrained_cfg``)."""
    return isinstance(getattr(model, "pretrained_cfg", None), dict)


def no_decay_tokens(model: nn.Module) -> frozenset[str] | None:
    """Names the model declares exempt from weight decay (timm's ``no_weight_decay()``), or
    None when it declares none (no such method, or the method fails)."""
    fn = getattr(model, "no_weight_decay", None)
    if not callable(fn):
        return None
    try:
        return frozenset(fn() or ())
    except Exception:  # a model's own hook failing must not break the audit
        return None


def no_decay_matcher(model: nn.Module) -> Callable[[str], bool]:
    """Whether a parameter name is one the model exempts from weight decay, as timm decides.

    A declared list is matched as timm's optimizer factory matches it: ``fnmatch`` on the full
    name (``blocks.*.pos_embed``). A timm model that declares none exempts nothing; any other
    model that declares none exempts the names whose last segment is in :data:`NO_DECAY_TOKENS`.
    """
    declared = no_decay_tokens(model)
    if declared is None and not is_timm_model(model):
        return lambda name: name.rpartition(".")[2] in NO_DECAY_TOKENS
    declared = declared or frozenset()
    literal = {p for p in declared if not _WILDCARD.search(p)}
    wild = sorted(declared - literal)
    return lambda name: name in literal or any(fnmatch.fnmatch(name, p) for p in wild)


def _kinds(leaf: str, module: nn.Module, param: torch.Tensor, name: str,
           no_decay: Callable[[str], bool]) -> frozenset[str]:
    """Kinds by the leaf name (``*bias``, ``*weight``), the owner's class and the shape. A matrix
    or higher (ndim >= 2) of a module that is neither a norm nor an embedding is a ``weight``
    whatever its name: fused mixture-of-experts tensors (transformers 5's Mixtral/Qwen-MoE
    ``experts.gate_up_proj``, ``experts.down_proj``) decay and are selected like any weight."""
    end = "bias" if leaf.endswith("bias") else "weight" if leaf.endswith("weight") else ""
    return _kind_set(type(module), end, min(param.ndim, 3), no_decay(name))


@lru_cache(maxsize=None)
def _kind_set(cls: type, end: str, ndim: int, named_embedding: bool) -> frozenset[str]:
    """The kinds of a parameter of a ``cls`` module whose leaf name ends in ``end`` (``bias``,
    ``weight`` or neither), of ``ndim`` (3: three or more); one shared frozenset per
    combination, so records of a big model hold a handful of sets. ``head`` depends on the
    module instance, not its class: :func:`_as_head` adds it outside this cache."""
    norm = _is_norm_class(cls)
    embedding = issubclass(cls, (nn.Embedding, nn.EmbeddingBag)) or named_embedding
    if not end and ndim >= 2 and not norm and not embedding:
        end = "weight"
    matrix = end == "weight" and ndim == 2 and not norm and not embedding
    flags = ((end, bool(end)), ("norm", norm), ("embedding", embedding), ("ndim<=1", ndim <= 1),
             ("matrix", matrix))
    return frozenset(kind for kind, on in flags if on)


@lru_cache(maxsize=None)
def _as_head(kinds: frozenset[str]) -> frozenset[str]:
    """``kinds`` of a parameter of the output layer: ``head``, and no longer ``matrix``."""
    return kinds - {"matrix"} | {"head"}


_PRETRAINED = ("transformers.modeling_utils", "PreTrainedModel")


def _output_layers(model: nn.Module, last_linear: nn.Module | None) -> list[nn.Module]:
    """The model's output layer (its parameters are of kind ``head``), as a list (empty: none).

    - a transformers model: ``get_output_embeddings()`` (``lm_head``); when it has none, a base
      model (``model.base_model is model``: ``LlamaModel``, ``BertModel``) has no output layer,
      and a task model (``BertForSequenceClassification``) falls back to the last ``nn.Linear``;
    - a timm model: ``get_classifier()`` (both heads of a distilled model); a reset head
      (``nn.Identity``, no parameters) is no output layer, not a reason to look elsewhere;
    - any other model: the last ``nn.Linear`` in module order (``fc`` of a torchvision ResNet,
      ``classifier.6`` of a VGG, ``heads.head`` of a torchvision ViT). A model whose output is
      a convolution (a fully convolutional network) or anything else has none by this rule:
      select such a layer by name.

    ``last_linear`` is that last ``nn.Linear``, found by the inventory's walk (a PEFT
    adapter's own ``lora_A``/``lora_B`` layers do not count; the ``base_layer`` they wrap does).
    Wrappers (DDP, compile, PEFT) are looked through.
    """
    model = unwrap(model)
    pretrained = _loaded(*_PRETRAINED)
    if pretrained is not None and isinstance(model, pretrained):
        found = _call(model, "get_output_embeddings")
        if isinstance(found, nn.Module):
            return [found]
        if model.base_model is model:
            return []
    elif is_timm_model(model) and callable(getattr(model, "get_classifier", None)):
        found = _call(model, "get_classifier")
        found = found if isinstance(found, (tuple, list)) else [found]
        return [m for m in found if isinstance(m, nn.Module) and next(m.parameters(), None) is not None]
    return [] if last_linear is None else [last_linear]


def _call(model: nn.Module, method: str) -> object:
    """``model.method()``, or None when the model's own hook fails (it must not break the audit)."""
    try:
        return getattr(model, method)()
    except Exception:
        return None


@lru_cache(maxsize=None)
def _enclosing(outer: frozenset[str], cls: type) -> frozenset[str]:
    """``outer`` plus the names of ``cls`` and its bases (PEFT's ``LoraLayer`` mixin too); one
    shared set per path of classes, so records of a big model hold a handful of sets."""
    return outer | {c.__name__ for c in cls.__mro__ if c not in (object, nn.Module, ABC)}


@lru_cache(maxsize=None)
def _class_names(cls: type) -> tuple[str, ...]:
    return tuple(c.__name__ for c in cls.__mro__ if issubclass(c, nn.Module) and c is not nn.Module
                 ) or ("Module",)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under its real wrappers (see :func:`wrapped_children`), used for model-level
    hooks such as ``no_weight_decay()``; a user's own child called ``module`` is no wrapper."""
    types = _wrapper_types()
    while (attr := _wrapped(model, types)) is not None:
        model = model._modules[attr]
    return model


def inventory(model: nn.Module) -> list[ParamRecord]:
    """One :class:`ParamRecord` per distinct parameter tensor, in ``named_parameters`` order."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    no_decay = no_decay_matcher(unwrap(model))
    types = _wrapper_types()
    tuner = _loaded(*_TUNER_LAYER)
    adapters: dict[int, frozenset[str]] = {}  # tensor id -> adapter kinds, from the tuner layers above
    wrapped: set[str] = set()
    enclosing: dict[str, frozenset[str]] = {}  # raw module name -> classes of it and above it
    records: list[ParamRecord] = []
    by_id: dict[int, ParamRecord] = {}
    last_linear = None
    # one walk, as torch's named_parameters(remove_duplicate=False) walks: modules in
    # named_modules order, each module's own parameters in registration order
    for owner_raw, owner in model.named_modules(remove_duplicate=False):
        attr = _wrapped(owner, types)
        if attr is not None:
            wrapped.add(f"{owner_raw}.{attr}" if owner_raw else attr)
        if tuner is not None and isinstance(owner, tuner):
            adapters.update(_adapter_kinds(owner))
        outer = enclosing[owner_raw] = _enclosing(
            enclosing.get(owner_raw.rpartition(".")[0], frozenset()) if owner_raw else frozenset(), type(owner))
        if isinstance(owner, nn.Linear) and (_TUNER_LAYER[1] not in outer or owner_raw.endswith("base_layer")):
            last_linear = owner  # the output layer of a plain model; an adapter's own Linear is none
        if not owner._parameters:
            continue
        module = strip_wrappers(owner_raw, frozenset(wrapped)) if wrapped else owner_raw
        cls = type(owner)
        for leaf, param in owner._parameters.items():
            if param is None:
                continue
            raw = f"{owner_raw}.{leaf}" if owner_raw else leaf
            if leaf == "_flat_param" or type(param).__name__ == "FlatParameter":
                raise ModelError(
                    f"{raw} is a FlatParameter: FSDP without use_orig_params=True flattens each wrapped "
                    f"module's parameters into one tensor, so per-parameter groups are impossible. Wrap "
                    f"with FullyShardedDataParallel(..., use_orig_params=True), or use FSDP2 (fully_shard)")
            name = f"{module}.{leaf}" if module else leaf
            rec = by_id.get(id(param))
            if rec is not None:
                if name != rec.name and name not in rec.aliases:
                    rec.aliases.append(name)
                continue
            kinds = _kinds(leaf, owner, param, name, no_decay)
            rec = ParamRecord(
                index=len(records), name=name, aliases=[], module=module,
                module_class=cls.__name__, module_classes=_class_names(cls),
                kinds=kinds | adapters[id(param)] if id(param) in adapters else kinds, shape=tuple(param.shape),
                numel=param.numel(), dtype=param.dtype, device=param.device, param=param, owner=owner,
                enclosing=outer,
            )
            by_id[id(param)] = rec
            records.append(rec)
    if not records:
        raise ModelError(f"the model ({type(model).__name__}) has no parameters")
    for layer in _output_layers(model, last_linear):
        for param in layer.parameters():
            rec = by_id.get(id(param))
            if rec is not None and id(param) not in adapters:  # a LoRA of the head is an adapter
                rec.kinds = _as_head(rec.kinds)
    return records
