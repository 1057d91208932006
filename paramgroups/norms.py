"""Holding the running statistics of frozen norm layers.

``requires_grad=False`` stops a BatchNorm's affine parameters, but in ``model.train()`` its
running mean and variance keep moving, so a "frozen" backbone still changes. A held norm layer
stays in eval mode whatever ``model.train()`` says: its statistics neither update nor are used
from the batch. Holding replaces nothing in the module's parameters or buffers, so state-dict
keys never change, and it works under ``torch.compile`` (the mode is a guarded attribute).
"""

from __future__ import annotations

from typing import Iterable

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


def sync(model: nn.Module, modules: Iterable[nn.Module]) -> None:
    """Hold each norm module whose parameters are all frozen; release the others."""
    for module in modules:
        params = list(module.parameters(recurse=False))
        if not params or not has_running_stats(module):
            continue
        if all(not p.requires_grad for p in params):
            hold(module)
        else:
            release(module, model.training)
