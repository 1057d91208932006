"""Holding the running statistics of frozen norm layers.

``requires_grad=False`` stops a BatchNorm's affine parameters, but in ``model.train()`` its
running mean and variance keep moving, so a "frozen" backbone still changes. A held norm layer
stays in eval mode whatever ``model.train()`` says: its statistics neither update nor are used
from the batch. Holding replaces nothing in the module's parameters or buffers, so state-dict
keys never change, and it works under ``torch.compile`` (the mode is a guarded attribute).

Which layers are held: every module with running statistics (``running_mean``/``running_var``)
whose *governing* parameters are all frozen: those of the smallest module that contains the
layer (the layer itself included) and has parameters. For an affine BatchNorm that is its own
weight and bias. A layer without any (``affine=False`` BatchNorm, tracked InstanceNorm without
affine) follows the block it sits in: a ``Sequential(conv, BatchNorm2d(affine=False))`` is held
when the conv is frozen, and one directly under a model root is held only when the whole model
is frozen. A model with no parameters holds nothing. One rule, on names, serves the live model
(:func:`sync`) and checkpoint diffs (:func:`held_names`).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn

_HELD = "_paramgroups_held"


def has_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` keeps running statistics (BatchNorm, tracked InstanceNorm, ...)."""
    return getattr(module, "running_mean", None) is not None or getattr(module, "running_var", None) is not None


class _HeldTrain:
    """Stands in for a held module's ``train()``: it keeps eval mode. A plain class (not a
    bound method) so models with held layers pickle, deep-copy and ``torch.save`` as usual."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)  # children follow too, as in eval()


def hold(module: nn.Module) -> None:
    """Keep ``module`` in eval mode until :func:`release`."""
    if not getattr(module, _HELD, False):
        object.__setattr__(module, _HELD, True)
        object.__setattr__(module, "train", _HeldTrain(module))
    nn.Module.train(module, False)


def release(module: nn.Module, training: bool) -> None:
    """Give ``module`` back its own ``train()``, in mode ``training``."""
    if getattr(module, _HELD, False):
        object.__delattr__(module, "train")
        object.__delattr__(module, _HELD)
    nn.Module.train(module, training)


def is_held(module: nn.Module) -> bool:
    return bool(getattr(module, _HELD, False))


def held_names(frozen: Mapping[str, bool], layers: Iterable[str]) -> set[str]:
    """Which of the module names ``layers`` are held, given ``{parameter name: frozen}``:
    those whose governing module (see the module docstring) has only frozen parameters."""
    below: dict[str, bool] = {}  # module name -> every parameter in its subtree is frozen
    for name, is_frozen in frozen.items():
        module = name
        while module:
            module = module.rpartition(".")[0]
            below[module] = below.get(module, True) and is_frozen
    held = set()
    for layer in layers:
        scope = layer
        while scope not in below and scope:
            scope = scope.rpartition(".")[0]
        if below.get(scope, False):
            held.add(layer)
    return held


class Holds:
    """The layers with running statistics of one model and the parameters that govern each
    (see the module docstring), found once: :meth:`sync` then looks at those parameters only,
    never walks the model, so a stage boundary in a training loop costs about what a
    hand-written ``requires_grad`` flip does."""

    def __init__(self, model: nn.Module):
        self.model = model
        named = list(model.named_parameters(remove_duplicate=False))
        owners: set[str] = set()  # every module name above some parameter ("" when any)
        for name, _ in named:
            while name:
                name = name.rpartition(".")[0]
                owners.add(name)
        scopes = []
        for layer, module in model.named_modules():
            if has_running_stats(module):
                scope = layer
                while scope not in owners and scope:
                    scope = scope.rpartition(".")[0]
                scopes.append((module, scope if scope in owners else None))
        governing: dict[str, list[nn.Parameter]] = {s: [] for _, s in scopes if s is not None}
        for name, param in named:
            while name:
                name = name.rpartition(".")[0]
                if name in governing:
                    governing[name].append(param)
        self.layers = [(module, tuple(governing[s]) if s is not None else ())
                       for module, s in scopes]

    def sync(self) -> None:
        """Hold each layer whose governing parameters are all frozen; release the held ones
        that no longer qualify (others keep the mode the user gave them)."""
        for module, params in self.layers:
            if params and not any(p.requires_grad for p in params):
                if module.training or not is_held(module):  # already held: nothing to do
                    hold(module)
            elif is_held(module):
                release(module, self.model.training)


def sync(model: nn.Module) -> None:
    """:meth:`Holds.sync` for ``model`` once (a loop that syncs often keeps a :class:`Holds`)."""
    Holds(model).sync()
