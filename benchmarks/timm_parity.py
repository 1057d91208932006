"""Benchmark 5: timm parity across timm's model zoo (a correctness sweep, run by hand).

For every model in ``timm.list_models()`` (or the names given), built on the meta device with
``pretrained=False``, compares per parameter (by ``id(param)``):

- ``Plan(lr=1e-3, weight_decay=0.05, optimizer="adamw", layer_decay=0.75, no_decay=True)``
  against ``timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05,
  layer_decay=0.75)``: LR (timm's group lr times its ``lr_scale``) and weight decay;
- ``Plan(lr=1e-3, weight_decay=0.05, optimizer="adamw", no_decay=True)`` against
  ``timm.optim.param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())``:
  weight decay.

Values must be equal, not close. Models that cannot be built on the meta device are skipped
and counted by reason. Prints each mismatch, then models checked, mismatches, skipped, time.

    python benchmarks/timm_parity.py [NAME_OR_GLOB ...] [--limit N]
"""

from __future__ import annotations

import argparse
import collections
import logging
import time
import warnings

import torch

from _util import header
from paramgroups import Plan

LR, WD, DECAY = 1e-3, 0.05, 0.75


def _timm_settings(model: torch.nn.Module) -> tuple[dict[int, tuple[float, float]], dict[int, float]]:
    """Per parameter id: (lr, wd) from create_optimizer_v2 with layer decay; wd without it."""
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    opt = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WD, layer_decay=DECAY)
    with_layers = {id(p): (g["lr"] * g.get("lr_scale", 1.0), g["weight_decay"])
                   for g in opt.param_groups for p in g["params"]}
    declared = getattr(model, "no_weight_decay", lambda: set())()
    plain = {id(p): g["weight_decay"] for g in param_groups_weight_decay(
        model, WD, no_weight_decay_list=declared) for p in g["params"]}
    return with_layers, plain


def _plan_settings(model: torch.nn.Module, **layers: float) -> dict[int, tuple[float, float]]:
    """Per parameter id: (lr, wd) from the plan, with ``layer_decay=...`` when given."""
    plan = Plan(lr=LR, weight_decay=WD, optimizer="adamw", no_decay=True, **layers)
    return {id(p): (g["lr"], g["weight_decay"]) for g in plan.param_groups(model) for p in g["params"]}


def mismatches(model: torch.nn.Module) -> list[str]:
    """Parameters whose LR or weight decay differs from timm's, with both values."""
    names = {id(p): n for n, p in model.named_parameters()}
    ref_layers, ref_plain = _timm_settings(model)
    out = []
    for what, ref, layers in (("layer_decay", ref_layers, {"layer_decay": DECAY}),
                              ("no_decay", {k: (LR, wd) for k, wd in ref_plain.items()}, {})):
        try:
            got = _plan_settings(model, **layers)
        except Exception as exc:  # a plan that cannot resolve a timm model is a mismatch, not a skip
            out.append(f"{what}: plan raised {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        out.extend(f"{what} {names[pid]}: timm (lr, wd) {want}, plan {got.get(pid)}"
                   for pid, want in ref.items() if got.get(pid) != want)
    return out


def build(name: str) -> torch.nn.Module:
    """The timm model ``name`` on the meta device, no weights."""
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names or globs (default: all of timm.list_models())")
    parser.add_argument("--limit", type=int, default=None, help="check only the first N models")
    args = parser.parse_args()
    names = sorted({n for pat in args.models for n in timm.list_models(pat)}) if args.models \
        else timm.list_models()
    names = names[:args.limit]
    logging.disable(logging.WARNING)  # timm warns on models without layer grouping
    warnings.simplefilter("ignore")
    header(f"timm parity: {len(names)} models, timm {timm.__version__}")
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    bad: dict[str, list[str]] = {}
    start = time.perf_counter()
    for done, name in enumerate(names):
        if done and done % 100 == 0:
            print(f"# {done}/{len(names)} after {time.perf_counter() - start:.0f} s", flush=True)
        try:
            model = build(name)
        except Exception as exc:
            skipped[f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"].append(name)
            continue
        found = mismatches(model)
        if found:
            bad[name] = found
            print(f"MISMATCH {name}: {len(found)} parameters, e.g. {found[0]}", flush=True)
    took = time.perf_counter() - start
    for reason, which in sorted(skipped.items(), key=lambda kv: -len(kv[1])):
        print(f"skipped {len(which)}: {reason} ({', '.join(which[:5])}{', ...' if len(which) > 5 else ''})")
    checked = len(names) - sum(map(len, skipped.values()))
    print(f"models checked: {checked}  mismatches: {len(bad)}  skipped: {len(names) - checked}  "
          f"time: {took:.0f} s")


if __name__ == "__main__":
    main()
