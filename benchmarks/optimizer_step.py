"""Benchmark 1: AdamW step time on the GPU by param-group layout, as ratios to the memory floor.

The floor is bytes over bandwidth: AdamW reads parameter, gradient and two moments and writes
parameter and two moments (7 tensors of the parameters' size), over the device-to-device copy
bandwidth measured in the same run. Layouts: one group, layer-decay groups (timm's for ViT, a
paramgroups plan for ResNet), one group per parameter; implementations: torch's default
(foreach), fused=True, and what plan.optimizer(model) builds. Needs CUDA; prints why not otherwise.

    python benchmarks/optimizer_step.py [--dtype fp32 bf16] [--iters 50]
"""

from __future__ import annotations

import argparse
import sys

from _util import header, table


def bandwidth(torch, n_bytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * a.numel() * 4 * 20 / (start.elapsed_time(end) / 1e3)


def step_ms(torch, opt, params, iters: int) -> float:
    for p in params:
        p.grad = torch.randn_like(p)
    for _ in range(5):
        opt.step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        opt.step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def layouts(name: str, model):
    from timm.optim import param_groups_layer_decay

    from paramgroups import Plan

    params = list(model.parameters())
    out = {"1 group": [{"params": params}],
           "1 group per parameter": [{"params": [p]} for p in params]}
    if name.startswith("vit"):
        out["layer decay (timm)"] = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
        plan = Plan(lr=1e-3, weight_decay=0.05, optimizer="adamw", layer_decay=0.75, no_decay=True)
    else:
        plan = Plan(lr=1e-3, weight_decay=0.05, optimizer="adamw", layer_decay=0.75, no_decay=True,
                    layers=["conv1", "bn1", "layer1", "layer2", "layer3", "layer4.0", "layer4.1", "layer4.2", "fc"])
        out["layer decay (plan groups, torch optimizer)"] = plan.param_groups(model)
    return out, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    import timm
    import torch
    import torchvision

    if not torch.cuda.is_available():
        print("optimizer_step.py needs a CUDA device; none is available here.", file=sys.stderr)
        raise SystemExit(2)
    header(f"optimizer step on {torch.cuda.get_device_name()}: median ms, ratio to the memory floor")
    bw = bandwidth(torch)
    rows = []
    for dtype_name in args.dtype:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for name in ("vit_base_patch16_224", "resnet50"):
            model = (timm.create_model(name, pretrained=False) if name.startswith("vit")
                     else torchvision.models.resnet50(weights=None)).to("cuda", dtype)
            params = list(model.parameters())
            floor_ms = 7 * sum(p.numel() * p.element_size() for p in params) / bw * 1e3
            groups, plan = layouts(name, model)
            for layout, pg in groups.items():
                for impl, kw in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
                    opt = torch.optim.AdamW(pg, lr=1e-3, **kw)
                    ms = step_ms(torch, opt, params, args.iters)
                    rows.append([name, dtype_name, f"{layout} ({len(pg)})", impl, ms, ms / floor_ms])
            opt = plan.optimizer(model)
            ms = step_ms(torch, opt, params, args.iters)
            rows.append([name, dtype_name, f"plan.optimizer ({len(opt.param_groups)})",
                         "fused" if opt.defaults.get("fused") else "foreach", ms, ms / floor_ms])
            rows.append([name, dtype_name, "floor (7 x bytes / copy bandwidth)", "-", floor_ms, 1.0])
    table(rows, ["model", "dtype", "layout (groups)", "implementation", "ms", "x floor"])
    print(f"# copy bandwidth {bw / 1e12:.2f} TB/s")


if __name__ == "__main__":
    main()
