"""Snapshots of a model's tensors, to verify afterwards what a training run changed."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .inventory import canonical_name, saved_ddp_prefixes, strip_wrappers, wrapped_children
from .models import NORM_BUFFERS
from .norms import held_names
from .timeline import Timeline


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer, under canonical names."""
    wrapped = wrapped_children(model)
    return {strip_wrappers(k, wrapped): v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)}


CHUNK = 1 << 20  # elements compared at a time: a few MB of temporaries, whatever the tensor


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of two same-shape tensors (inf when shapes differ).

    NaN at the same place on both sides counts as equal (as do equal infinities); NaN on one
    side only makes the result NaN. The tensors are compared :data:`CHUNK` elements at a time
    in double precision, so a multi-GB tensor costs no multi-GB copies.
    """
    if a.shape != b.shape:
        return float("inf")
    if a.is_complex() or b.is_complex():
        wide = torch.complex128
    elif a.is_floating_point() or b.is_floating_point():
        wide = torch.float64
    else:  # integers and bools
        wide = torch.int64
    x, y = a.reshape(-1), b.reshape(-1)
    out = 0.0
    for start in range(0, x.numel(), CHUNK):
        u, v = x[start:start + CHUNK].to(wide), y[start:start + CHUNK].to(wide)
        d = (u - v).abs()
        if wide != torch.int64:
            d.masked_fill_((u == v) | (u.isnan() & v.isnan()), 0)
        worst = float(d.max())
        if math.isnan(worst):
            return worst
        out = max(out, worst)
    return out


def _differs(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """``max_abs_diff`` of tensors that differ in shape, dtype or value (NaN equals NaN), or None."""
    if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b):
        return None
    d = max_abs_diff(a, b)
    return d if d != 0 or a.dtype != b.dtype else None


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{name: max abs difference}`` of every tensor that differs from the snapshot."""
    now = snapshot(model)
    out = {}
    for name, old in before.items():
        new = now.get(name)
        if new is None:
            out[name] = float("inf")
            continue
        d = _differs(old, new)
        if d is not None:
            out[name] = d
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
        d = _differs(before[a[name]], after[b[name]])
        if d is not None:
            out[name] = d
    return out, len(names)


def frozen_names(plan, model: nn.Module, names: Iterable[str], at: float | None = None,
                 steps_per_epoch: int | None = None) -> set[str]:
    """Which of ``names`` the plan says are frozen: at epoch ``at``, or for the whole run.

    Norm running statistics count as frozen when the plan holds frozen norm layers
    (``bn="freeze"``) and holds theirs: by the rule of :mod:`paramgroups.norms`, also for layers
    without parameters of their own.
    """
    res = plan.resolve(model)
    timeline = Timeline.of(plan, res, steps_per_epoch)
    if at is None:
        frozen = {a.record.index for a, never in zip(res.assignments, timeline.never_trains()) if never}
    else:
        state = timeline.frozen(timeline.step_of(at))
        frozen = {a.record.index for a in res.assignments if a.group is None or state[a.group]}
    param_frozen = {n: rec.index in frozen for rec in res.records for n in rec.names}
    out = {n for n, f in param_frozen.items() if f}
    if plan.bn == "freeze":
        stats = {n: n.rpartition(".")[0] for n in names if n.rpartition(".")[2] in NORM_BUFFERS}
        held = held_names(param_frozen, set(stats.values()))
        out |= {n for n, layer in stats.items() if layer in held}
    return out & set(names)
