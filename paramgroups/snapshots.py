"""Snapshots of a model's tensors, to verify afterwards what a training run changed."""

from __future__ import annotations

import torch
from torch import nn

from .inventory import canonical_name


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer, under canonical names."""
    return {canonical_name(k): v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of two same-shape tensors (inf when shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if a.dtype == torch.bool or not (a.is_floating_point() or a.is_complex()):
        return float((a.to(torch.int64) - b.to(torch.int64)).abs().max().item()) if a.numel() else 0.0
    return float((a.double() - b.double()).abs().max().item()) if a.numel() else 0.0


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{name: max abs difference}`` of every tensor that differs from the snapshot."""
    now = snapshot(model)
    out = {}
    for name, old in before.items():
        new = now.get(name)
        if new is None:
            out[name] = float("inf")
            continue
        if not torch.equal(old, new):
            out[name] = max_abs_diff(old, new)
    return out
