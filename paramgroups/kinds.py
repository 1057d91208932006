"""Kinds: what a parameter is, besides its name; rules select by them (``kinds: matrix``).

A parameter has every kind that applies:

- ``weight`` / ``bias``: by the leaf name (``*weight``, ``*bias``); a tensor of two or more
  dimensions of a module that is neither a norm nor an embedding is a ``weight`` whatever its
  name (fused mixture-of-experts tensors, transformers 5's ``experts.gate_up_proj``);
- ``norm``: the parameters of a normalization layer (:func:`is_norm`);
- ``embedding``: of an ``nn.Embedding``/``EmbeddingBag``, or named by the model's no-decay list
  (:func:`no_decay_matcher`: ``pos_embed``, ``cls_token``);
- ``ndim<=1``: scalars and vectors;
- ``matrix``: a 2-D ``weight`` that is not a ``norm``, an ``embedding`` or a ``head``: what
  Muon takes (linear layers, ``nn.MultiheadAttention``'s ``in_proj_weight``; not a 4-D
  convolution, not a 3-D fused mixture-of-experts tensor);
- ``head``: every parameter of the model's output layer (:func:`output_parameters`: a transformers
  model's ``get_output_embeddings()``, a timm model's ``get_classifier()``, otherwise the last
  ``nn.Linear`` in module order, or without one the last module holding a ``matrix``). A tied
  ``lm_head.weight`` is the input embedding's tensor: one record, ``embedding`` and ``head``;
- ``lora_A`` / ``lora_B`` / ``adapter``: the active adapters' parameters of a PEFT model.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache

from torch import nn

from .wrappers import loaded

KINDS = ("weight", "bias", "norm", "embedding", "ndim<=1", "matrix", "head", "lora_A", "lora_B", "adapter")
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
_PRETRAINED = ("transformers.modeling_utils", "PreTrainedModel")
_ADAPTER_KINDS = {None: frozenset({"adapter"}), "lora_A": frozenset({"adapter", "lora_A"}),
                  "lora_B": frozenset({"adapter", "lora_B"})}


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: a torch norm class or a subclass of one
    (timm's BatchNormAct2d), or a look-alike whose class or a base class is named ``*Norm``,
    ``*Norm1d``/``2d``/``3d``."""
    return _is_norm_class(type(module))


@lru_cache(maxsize=None)
def _is_norm_class(cls: type) -> bool:
    return issubclass(cls, _NORM_TYPES) or any(_NORM_NAME.fullmatch(n) for n in class_names(cls))


@lru_cache(maxsize=None)
def class_names(cls: type) -> tuple[str, ...]:
    """The names of ``cls`` and its ``nn.Module`` bases (below ``nn.Module`` itself)."""
    return tuple(c.__name__ for c in cls.__mro__ if issubclass(c, nn.Module) and c is not nn.Module
                 ) or ("Module",)


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


@dataclass(frozen=True)
class NoDecay:
    """The parameter names a model exempts from weight decay: last segments (``leaves``),
    full names (``names``) and ``fnmatch`` globs on the full name (``globs``)."""

    leaves: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    globs: tuple[str, ...] = ()

    def __call__(self, name: str) -> bool:
        return (name.rpartition(".")[2] in self.leaves or name in self.names
                or any(fnmatch.fnmatch(name, p) for p in self.globs))


def no_decay_matcher(model: nn.Module) -> NoDecay:
    """Which parameter names the model exempts from weight decay, as timm decides.

    A declared list is matched as timm's optimizer factory matches it: ``fnmatch`` on the full
    name (``blocks.*.pos_embed``). A timm model that declares none exempts nothing; any other
    model that declares none exempts the names whose last segment is in :data:`NO_DECAY_TOKENS`.
    """
    declared = no_decay_tokens(model)
    if declared is None and not is_timm_model(model):
        return NoDecay(leaves=NO_DECAY_TOKENS)
    declared = declared or frozenset()
    literal = frozenset(p for p in declared if not _WILDCARD.search(p))
    return NoDecay(names=literal, globs=tuple(sorted(declared - literal)))


@lru_cache(maxsize=None)
def kind_set(cls: type, end: str, ndim: int, named_embedding: bool) -> frozenset[str]:
    """The kinds of a parameter of a ``cls`` module whose leaf name ends in ``end`` (``bias``,
    ``weight`` or neither), of ``ndim`` (3: three or more); one shared frozenset per
    combination, so records of a big model hold a handful of sets. ``head`` depends on the
    module instance, not its class: :func:`as_head` adds it outside this cache."""
    norm = _is_norm_class(cls)
    embedding = issubclass(cls, (nn.Embedding, nn.EmbeddingBag)) or named_embedding
    if not end and ndim >= 2 and not norm and not embedding:
        end = "weight"
    matrix = end == "weight" and ndim == 2 and not norm and not embedding
    flags = ((end, bool(end)), ("norm", norm), ("embedding", embedding), ("ndim<=1", ndim <= 1),
             ("matrix", matrix))
    return frozenset(kind for kind, on in flags if on)


@lru_cache(maxsize=None)
def as_head(kinds: frozenset[str]) -> frozenset[str]:
    """``kinds`` of a parameter of the output layer: ``head``, and no longer ``matrix``."""
    return kinds - {"matrix"} | {"head"}


def output_parameters(model: nn.Module, last_linear: nn.Module | None,
                      last_matrix: nn.Module | None) -> list[nn.Parameter]:
    """The parameters of the output layer of ``model`` (already unwrapped): the kind ``head``.

    - a transformers model: ``get_output_embeddings()`` (``lm_head``); when it has none, a base
      model (``model.base_model is model``: ``LlamaModel``, ``BertModel``) has no output layer,
      and a task model (``BertForSequenceClassification``) falls back to the last ``nn.Linear``;
    - a timm model: ``get_classifier()`` (both heads of a distilled model); a reset head
      (``nn.Identity``, no parameters) is no output layer, not a reason to look elsewhere;
    - any other model: the last ``nn.Linear`` in module order, ``last_linear`` (``fc`` of a
      torchvision ResNet, ``classifier.6`` of a VGG, ``heads.head`` of a torchvision ViT); a
      model without one (a module tree rebuilt from a checkpoint has no classes; custom layers)
      falls back to the own parameters of ``last_matrix``, the last module below the root that
      holds a ``matrix``. A model whose output is a convolution (a fully convolutional
      network) has none by this rule: select such a layer by name.

    The inventory's walk finds ``last_linear`` (a PEFT adapter's own ``lora_A``/``lora_B``
    layers do not count; the ``base_layer`` they wrap does) and ``last_matrix``.
    """
    pretrained = loaded(*_PRETRAINED)
    if pretrained is not None and isinstance(model, pretrained):
        found = _call(model, "get_output_embeddings")
        if isinstance(found, nn.Module):
            return list(found.parameters())
        if model.base_model is model:
            return []
    elif is_timm_model(model) and callable(getattr(model, "get_classifier", None)):
        found = _call(model, "get_classifier")
        found = found if isinstance(found, (tuple, list)) else [found]
        return [p for m in found if isinstance(m, nn.Module) for p in m.parameters()]
    if last_linear is not None:
        return list(last_linear.parameters())
    return [] if last_matrix is None else [p for p in last_matrix._parameters.values() if p is not None]


def _call(model: nn.Module, method: str) -> object:
    """``model.method()``, or None when the model's own hook fails (it must not break the audit)."""
    try:
        return getattr(model, method)()
    except Exception:
        return None


def adapter_kinds(layer: nn.Module) -> dict[int, frozenset[str]]:
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
