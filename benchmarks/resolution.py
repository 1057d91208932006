"""Benchmark 3: time to resolve and group N parameter tensors against R rules.

Contenders, interleaved in one process on the same model (built on the meta device):

- paramgroups: ``Plan(rules).param_groups(model)``;
- plain regex loop: one ``re.compile`` per rule, ``fullmatch`` on every parameter name, last
  rule wins (the regexes are written to select what the rules select);
- hand loop: string tests written for the model (``name.startswith``, a table per expert);
- timm's ``param_groups_layer_decay`` (synthetic model only: it has a ``group_matcher``);
- mmengine's ``DefaultOptimWrapperConstructor.add_params``, when mmengine is installed.

Models: a synthetic stack of blocks, and Switch-Transformers (transformers'
SwitchTransformersConfig, meta device) with ``**``-leading rules such as ``**.expert_4.**`` and
``**.experts.expert_7*``. Every contender's groups are checked to equal paramgroups' groups
(same parameters, same lr and weight decay) before timing. A second table times the plans that
rebuild timm's own groups against timm's helpers on timm models.

    python benchmarks/resolution.py [--sizes 1000 10000 100000] [--rules 10 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import time
from typing import Callable

import torch
from torch import nn

from _util import header, table
from paramgroups import Plan, Rule

LR, WD = 0.01, 0.05


def interleaved(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each contender, timed in turn within every round (one warmup round)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(repeat + 1):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def settings(groups: list[dict]) -> dict[int, tuple[float, float]]:
    """id(parameter) -> (lr, weight_decay): what two contenders must agree on."""
    return {id(p): (g["lr"], g.get("weight_decay", WD)) for g in groups for p in g["params"]}


def plain_regex_loop(model: nn.Module, rules: list[tuple[str, dict]]) -> list[dict]:
    """The baseline: one compiled regex per rule, fullmatch on every name, last rule wins."""
    compiled = [(re.compile(text), what) for text, what in rules]
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        lr, wd = LR, WD
        for regex, what in compiled:
            if regex.fullmatch(name):
                lr = what.get("lr", lr)
                wd = what.get("weight_decay", wd)
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


# -- synthetic blocks ---------------------------------------------------------------------


class Blocks(nn.Module):
    """``n`` parameter tensors: blocks of (attn weight, attn bias, norm weight, norm bias)."""

    def __init__(self, n: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
                                    for _ in range(n // 4))
        self.head = nn.Linear(4, 2)

    def group_matcher(self, coarse: bool = False):  # what timm models declare
        return {"stem": r"^$", "blocks": [(r"^blocks\.(\d+)", None)]}


def _block_ranges(n_blocks: int, n_rules: int) -> list[tuple[int, int]]:
    per = max(1, n_blocks // max(1, n_rules - 2))
    return [(i * per, i * per + per - 1) for i in range(n_rules - 2)]


def blocks_rules(n_blocks: int, n_rules: int) -> tuple[list[Rule], list[tuple[str, dict]]]:
    """Rules for paramgroups and the same selections as regexes for the plain loop."""
    ours, plain = [], []
    for i, (a, b) in enumerate(_block_ranges(n_blocks, n_rules)):
        ours.append(Rule(f"blocks.{{{a}..{b}}}", lr=0.001 * (i + 1), optional=True))
        plain.append((rf"blocks\.(?:{'|'.join(map(str, range(a, b + 1)))})(?:\..*)?", {"lr": 0.001 * (i + 1)}))
    ours += [Rule(kinds=["bias", "norm"], weight_decay=0.0), Rule("head", lr=0.1)]
    plain += [(r".*\.bias|.*\.norm\..*", {"weight_decay": 0.0}), (r"head(?:\..*)?", {"lr": 0.1})]
    return ours, plain


def blocks_hand(model: nn.Module, n_rules: int) -> list[dict]:
    n_blocks = len(model.blocks)
    per = max(1, n_blocks // max(1, n_rules - 2))
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        lr, wd = LR, WD
        if name.startswith("blocks."):
            i = int(name.split(".")[1]) // per
            if i < n_rules - 2:
                lr = 0.001 * (i + 1)
        if name.endswith("bias") or ".norm." in name:
            wd = 0.0
        if name.startswith("head."):
            lr = 0.1
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


# -- Switch-Transformers ------------------------------------------------------------------

SWITCH_SIZES = {1000: (4, 2, 128), 10_000: (12, 6, 416), 100_000: (12, 12, 2048)}  # layers, sparse, experts


def switch_model(n: int) -> nn.Module:
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    layers, sparse, experts = SWITCH_SIZES[n]
    cfg = SwitchTransformersConfig(num_layers=layers, num_decoder_layers=layers, num_sparse_encoder_layers=sparse,
                                   num_sparse_decoder_layers=sparse, num_experts=experts, d_model=8, d_ff=8,
                                   d_kv=4, num_heads=2, vocab_size=32)
    with torch.device("meta"):
        return SwitchTransformersForConditionalGeneration(cfg)


def _expert_lr(i: int) -> float:
    return 1e-4 * (i + 1)


def switch_rules(n_rules: int) -> tuple[list[Rule], list[tuple[str, dict]]]:
    """Even i: ``**.expert_{i}.**``; odd i: ``**.experts.expert_{i}*`` (expert i, i0-i9, ...)."""
    ours, plain = [], []
    for i in range(n_rules - 2):
        if i % 2 == 0:
            ours.append(Rule(f"**.expert_{i}.**", lr=_expert_lr(i)))
            plain.append((rf"(?:.*\.)?expert_{i}(?:\..*)?", {"lr": _expert_lr(i)}))
        else:
            ours.append(Rule(f"**.experts.expert_{i}*", lr=_expert_lr(i)))
            plain.append((rf"(?:.*\.)?experts\.expert_{i}[^.]*(?:\..*)?", {"lr": _expert_lr(i)}))
    ours += [Rule(kinds="norm", weight_decay=0.0), Rule("shared", lr=0.1)]
    plain += [(r".*layer_norm\.weight", {"weight_decay": 0.0}), (r"shared(?:\..*)?", {"lr": 0.1})]
    return ours, plain


def switch_hand(model: nn.Module, n_rules: int, experts: int) -> list[dict]:
    """A table of each expert's LR (the rules in order), then one lookup per name."""
    table_ = {}
    for e in range(experts):
        lr = LR
        for i in range(n_rules - 2):
            if e == i or (i % 2 and str(e).startswith(str(i))):
                lr = _expert_lr(i)
        table_[f"expert_{e}"] = lr
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        lr, wd = LR, WD
        parts = name.split(".")
        if len(parts) > 6 and parts[-4] == "experts":
            lr = table_[parts[-3]]
        if name.endswith("layer_norm.weight"):
            wd = 0.0
        if name.startswith("shared."):
            lr = 0.1
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


# -- tables -------------------------------------------------------------------------------


def _mmengine(model: nn.Module) -> Callable[[], object] | None:
    if importlib.util.find_spec("mmengine") is None:
        return None
    from mmengine.optim import DefaultOptimWrapperConstructor  # pragma: no cover - not installed here

    ctor = DefaultOptimWrapperConstructor({"type": "AdamW", "lr": LR, "weight_decay": WD},
                                          {"bias_decay_mult": 0.0, "norm_decay_mult": 0.0})
    return lambda: ctor.add_params([], model)


def resolution_rows(sizes: list[int], rule_counts: list[int], repeat: int) -> list[list]:
    from timm.optim import param_groups_layer_decay

    rows = []
    for model_name in ("synthetic", "switch"):
        for n in sizes:
            if model_name == "synthetic":
                with torch.device("meta"):
                    model = Blocks(n)
            else:
                model = switch_model(n)
            tensors = sum(1 for _ in model.parameters())
            reps = max(3, repeat // 2) if tensors >= 50_000 else repeat
            for r in rule_counts:
                if model_name == "synthetic":
                    ours, plain = blocks_rules(len(model.blocks), r)
                    hand = (lambda m=model, r=r: blocks_hand(m, r))
                else:
                    ours, plain = switch_rules(r)
                    hand = (lambda m=model, r=r, e=SWITCH_SIZES[n][2]: switch_hand(m, r, e))
                plan = Plan(ours, lr=LR, weight_decay=WD)
                contenders = {"paramgroups": lambda: plan.param_groups(model),
                              "plain": lambda: plain_regex_loop(model, plain), "hand": hand}
                if model_name == "synthetic":
                    contenders["timm"] = lambda: param_groups_layer_decay(model, layer_decay=0.75)
                mm = _mmengine(model)
                if mm is not None:  # pragma: no cover - not installed here
                    contenders["mmengine"] = mm
                expected = settings(plan.param_groups(model))
                for name in ("plain", "hand"):
                    got = settings(contenders[name]())
                    if got != expected:
                        raise SystemExit(f"{model_name} {n}x{r}: {name} selects differently from paramgroups")
                t = interleaved(contenders, reps)
                ours_s = t["paramgroups"]
                rows.append([model_name, tensors, r, ours_s, t["plain"], t["hand"], t.get("timm"),
                             ours_s / t["plain"], ours_s / t["hand"],
                             ours_s / t["timm"] if "timm" in t else None])
    return rows


TIMM_MODELS = ("vit_base_patch16_224", "resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224",
               "efficientnet_b0")


def timm_rows(repeat: int) -> list[list]:
    """Plans that rebuild timm's groups vs timm's helpers, called as timm's optimizer factory does."""
    import timm
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    rows = []
    for name in TIMM_MODELS:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        tensors = sum(1 for _ in model.parameters())

        def skip() -> set:
            return model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()

        layered = Plan(lr=LR, weight_decay=WD, layer_decay=0.75, no_decay=True)
        flat = Plan(lr=LR, weight_decay=WD, no_decay=True)
        contenders = {
            "ours_ld": lambda: layered.param_groups(model),
            "timm_ld": lambda: param_groups_layer_decay(model, WD, skip(), layer_decay=0.75),
            "ours_wd": lambda: flat.param_groups(model),
            "timm_wd": lambda: param_groups_weight_decay(model, WD, skip()),
        }
        t = interleaved(contenders, repeat)
        rows.append([name, tensors, t["ours_ld"], t["timm_ld"], t["ours_ld"] / t["timm_ld"],
                     t["ours_wd"], t["timm_wd"], t["ours_wd"] / t["timm_wd"]])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000],
                    choices=sorted(SWITCH_SIZES))
    ap.add_argument("--rules", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=("resolution", "timm"), default=None)
    args = ap.parse_args()

    header("resolution: resolve + group N tensors against R rules (median seconds, interleaved)")
    if importlib.util.find_spec("mmengine") is None:
        print("# mmengine is not installed: its add_params column is skipped")
    if args.only != "timm":
        table(resolution_rows(args.sizes, args.rules, args.repeat),
              ["model", "tensors", "rules", "paramgroups s", "plain re s", "hand s", "timm ld s",
               "x plain", "x hand", "x timm"])
    if args.only != "resolution":
        print()
        print("# timm's groups: Plan(layer_decay=0.75, no_decay=True) vs param_groups_layer_decay, "
              "Plan(no_decay=True) vs param_groups_weight_decay (meta models)")
        table(timm_rows(args.repeat),
              ["model", "tensors", "Plan(ld, nd) s", "timm ld s", "x timm ld",
               "Plan(nd) s", "timm wd s", "x timm wd"])


if __name__ == "__main__":
    main()
