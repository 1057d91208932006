"""Benchmark 3: time to resolve and group N parameter tensors against R rules.

Compares paramgroups (Plan.param_groups) with timm's param_groups_layer_decay and with a
hand-written loop (the usual `if "layer4" in name` chain) on the same synthetic model, built
on the meta device. Prints a table; ratios are to the hand-written loop measured in this run.

    python benchmarks/resolution.py [--sizes 1000 10000 100000] [--rules 10 100]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from _util import header, median_time, table
from paramgroups import Plan, Rule


class Blocks(nn.Module):
    """``n`` parameter tensors: blocks of (attn weight, attn bias, norm weight, norm bias)."""

    def __init__(self, n: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
                                    for _ in range(n // 4))
        self.head = nn.Linear(4, 2)

    def group_matcher(self, coarse: bool = False):  # what timm models declare
        return {"stem": r"^$", "blocks": [(r"^blocks\.(\d+)", None)]}


def rules_for(n_blocks: int, n_rules: int) -> list[Rule]:
    per = max(1, n_blocks // max(1, n_rules - 2))
    rules = [Rule(f"blocks.{{{i * per}..{i * per + per - 1}}}", lr=0.001 * (i + 1), optional=True)
             for i in range(n_rules - 2)]
    return rules + [Rule(kinds=["bias", "norm"], weight_decay=0.0), Rule("head", lr=0.1)]


def hand_written(model: nn.Module, n_rules: int) -> list[dict]:
    n_blocks = len(model.blocks)
    per = max(1, n_blocks // max(1, n_rules - 2))
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        lr, wd = 0.01, 0.05
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--rules", type=int, nargs="+", default=[10, 100])
    args = ap.parse_args()
    from timm.optim import param_groups_layer_decay

    header("resolution: resolve + group N tensors against R rules (median seconds)")
    rows = []
    for n in args.sizes:
        with torch.device("meta"):
            model = Blocks(n)
        repeat = 3 if n >= 100_000 else 5
        timm_s = median_time(lambda: param_groups_layer_decay(model, layer_decay=0.75), repeat=repeat)
        for r in args.rules:
            plan = Plan(rules_for(len(model.blocks), r), lr=0.01, weight_decay=0.05)
            ours = median_time(lambda: plan.param_groups(model), repeat=repeat)
            hand = median_time(lambda: hand_written(model, r), repeat=repeat)
            rows.append([n, r, ours, hand, timm_s, ours / hand, ours / timm_s, ours / (n * r) * 1e9])
    table(rows, ["tensors", "rules", "paramgroups s", "hand loop s", "timm layer-decay s",
                 "x hand", "x timm", "ns per tensor*rule"])


if __name__ == "__main__":
    main()
