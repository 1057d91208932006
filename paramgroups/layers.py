"""Layer ids for layer-wise learning-rate decay: ``lr_scale = decay ** (max_id - id)``.

Ids come from one of three sources:

- timm's ``model.group_matcher()`` (when no ``layers`` is given), exactly as timm's
  ``param_groups_layer_decay`` computes them, so every LR equals timm's; a timm model
  without one gets timm's fallback, ``auto_group_layers`` (runs of 12 tensors, then the
  head named by ``pretrained_cfg["classifier"]``);
- a pattern with a numbered slot, ``blocks.{i}``, with BEiT's convention: parameters before
  the first block get 0, block i gets i + 1, everything after the last block the last id;
- an ordered list of patterns, one id each in order; a parameter no pattern selects gets
  the last id (as timm treats names its matcher misses).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from torch import nn

from .errors import PlanError, Where
from .inventory import ParamRecord, is_timm_model, unwrap
from .names import NameTable
from .patterns import PatternList

LAYERS, DECAY = Where(field="layers"), Where(field="layer_decay")  # what each error is about


def _slot_regex(pattern: str) -> re.Pattern[str]:
    """``blocks.{i}`` -> a regex capturing the block number; ``*`` and ``**`` allowed."""
    if pattern.count("{i}") != 1:
        raise PlanError(f"layers pattern {pattern!r} needs exactly one {{i}} slot", where=LAYERS)
    out = []
    for piece in re.split(r"(\{i\}|\*\*|\*)", pattern):
        out.append({"{i}": r"(\d+)", "**": r".*", "*": r"[^.]*"}.get(piece, re.escape(piece)))
    return re.compile("".join(out))


def _slot_ids(records: list[ParamRecord], pattern: str) -> list[int]:
    regex = _slot_regex(pattern)
    found: list[int | None] = []
    for rec in records:
        parts = rec.name.split(".")
        block = None
        for depth in range(1, len(parts) + 1):
            m = regex.fullmatch(".".join(parts[:depth]))
            if m:
                block = int(m.group(1))
                break
        found.append(block)
    blocks = [b for b in found if b is not None]
    if not blocks:
        raise PlanError(f"layers pattern {pattern!r} matches no module of the model", where=LAYERS)
    last = max(blocks) + 2
    ids, seen_block = [], False
    for block in found:
        if block is not None:
            seen_block = True
            ids.append(block + 1)
        else:
            ids.append(last if seen_block else 0)
    return ids


def _list_ids(records: list[ParamRecord], patterns: Sequence[str | Sequence[str]],
              table: NameTable) -> list[int]:
    ids = [len(patterns) - 1] * len(records)
    assigned = [False] * len(records)
    for layer, pattern in enumerate(patterns):
        hit = table.select(PatternList(pattern))
        if not hit:
            raise PlanError(f"layers[{layer}] {pattern!r} matches no parameter", where=LAYERS)
        for i in hit:
            if not assigned[i]:
                ids[i], assigned[i] = layer, True
    return ids


def _timm_ids(model: nn.Module, records: list[ParamRecord]) -> list[int]:
    inner = unwrap(model)
    if callable(getattr(inner, "group_matcher", None)):
        from timm.models import group_parameters

        layer_map = group_parameters(inner, inner.group_matcher(coarse=False), reverse=True)
    elif is_timm_model(inner):
        # a timm model without a matcher: timm's own fallback, runs of 12 tensors then the head
        from timm.optim import auto_group_layers

        layer_map = auto_group_layers(inner)
    else:
        raise PlanError("layer_decay needs layers (a pattern such as 'blocks.{i}' or a list of "
                        f"patterns), or a timm model; {type(inner).__name__} has no group_matcher() "
                        "and no pretrained_cfg", where=DECAY)
    layer_max = max(layer_map.values())
    return [layer_map.get(rec.name, layer_max) for rec in records]


def layer_ids(model: nn.Module, records: list[ParamRecord],
              layers: str | Sequence[str | Sequence[str]] | None, table: NameTable) -> list[int]:
    """One layer id per record, from ``layers`` (a plan's, checked when it was parsed) or,
    when it is None, from timm's matcher. ``table`` is the model's :class:`NameTable`."""
    if layers is None:
        return _timm_ids(model, records)
    if isinstance(layers, str):
        if "{i}" in layers:
            return _slot_ids(records, layers)
        return _list_ids(records, [layers], table)
    return _list_ids(records, layers, table)


def layer_scales(ids: list[int], decay: float) -> list[float]:
    """``decay ** (max_id - id)`` per id, computed as timm does.

    timm takes any decay; one whose scales leave float range on this model (the first
    layer's ``decay ** max_id`` overflows, or underflows to 0 from a decay above 0) would
    give it an infinite or vanished LR, so it is an error naming ``layer_decay``.
    """
    top = max(ids)
    try:
        scales = [float(decay) ** (top - i) for i in range(top + 1)]
    except OverflowError:
        scales = [math.inf]
    if not math.isfinite(scales[0]) or (decay > 0 and scales[0] == 0):
        raise PlanError(f"layer_decay {decay:g} over {top + 1} layers gives the first layer a scale "
                        f"of {decay:g}**{top}, beyond float range: use a decay closer to 1", where=DECAY)
    return [scales[i] for i in ids]
