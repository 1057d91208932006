"""Snapshots of a model's tensors, to verify afterwards what a training run changed."""

from __future__ import annotations

import torch
from torch import nn

from typing import Callable, Iterable, Mapping

from .inventory import canonical_name, ddp_prefixes, saved_ddp_prefixes
from .models import NORM_BUFFERS


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer, under canonical names."""
    ddp = ddp_prefixes(model)
    return {canonical_name(k, ddp): v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of two same-shape tensors (inf when shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if a.is_complex():
        return float((a.to(torch.complex128) - b.to(torch.complex128)).abs().max().item()) if a.numel() else 0.0
    if a.dtype == torch.bool or not a.is_floating_point():
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


def diff_states(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> tuple[dict[str, float], int]:
    """``({canonical name: max abs difference}, tensors compared)``, one tensor at a time.

    Only the tensors that differ are in the dict; a tensor present on one side only counts as
    changed (difference ``inf``).
    """
    da, db = saved_ddp_prefixes(before), saved_ddp_prefixes(after)
    a = {canonical_name(k, da): k for k, v in before.items() if isinstance(v, torch.Tensor)}
    b = {canonical_name(k, db): k for k, v in after.items() if isinstance(v, torch.Tensor)}
    out = {}
    names = list(dict.fromkeys([*a, *b]))
    for name in progress(names):
        if name not in a or name not in b:
            out[name] = float("inf")
            continue
        x, y = before[a[name]], after[b[name]]
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            out[name] = max_abs_diff(x, y)
    return out, len(names)


def frozen_names(plan, model: nn.Module, names: Iterable[str], at: float | None = None,
                 steps_per_epoch: int | None = None) -> set[str]:
    """Which of ``names`` the plan says are frozen: at epoch ``at``, or for the whole run.

    Norm running statistics count as frozen when every parameter of their layer is (and the
    plan holds frozen norm layers, ``bn="freeze"``).
    """
    res = plan.resolve(model)
    if at is None:
        frozen = {a.record.index for a in res.assignments
                  if a.frozen and not any(action == "thaw" for _, action in a.events)}
    else:
        state = plan.stage_state_at(res, at, steps_per_epoch)
        frozen = {a.record.index for a in res.assignments if a.group is None or state[a.group][0]}
    param_frozen = {n: rec.index in frozen for rec in res.records for n in rec.names}
    out = {n for n, f in param_frozen.items() if f}
    if plan.bn == "freeze":
        by_module: dict[str, list[bool]] = {}
        for p, f in param_frozen.items():
            by_module.setdefault(p.rpartition(".")[0], []).append(f)
        for name in names:
            module, _, leaf = name.rpartition(".")
            if leaf in NORM_BUFFERS and all(by_module.get(module, [False])):
                out.add(name)
    return out & set(names)
