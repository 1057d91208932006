"""Benchmark 2: a ResNet-50 training step with a frozen backbone, paramgroups vs lr=0.

The common pseudo-freeze puts the backbone in a group with lr=0: autograd still computes every
backbone gradient and SGD still keeps momentum for it (and BatchNorm statistics still move). A
paramgroups plan freezes it (requires_grad=False, held norm statistics): backward stops at the
head. Each variant runs in a fresh process (CPU peak RSS) or on the GPU (peak allocated).

    python benchmarks/freezing.py [--batch 16] [--size 112] [--steps 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

from _util import child, header, table

def step_time(variant: str, device: str, batch: int, size: int, steps: int) -> dict:
    """Median time of a ResNet-50 SGD step with the backbone frozen by ``variant``, and the
    GPU's peak allocation on CUDA."""
    import statistics
    import time

    import torch
    import torchvision

    from paramgroups import Plan, Rule

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=10).to(device)
    if variant == "paramgroups":
        opt = Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], lr=0.1, optimizer="sgd",
                   momentum=0.9).optimizer(model)
    else:
        backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
        opt = torch.optim.SGD([{"params": backbone, "lr": 0.0},
                               {"params": model.fc.parameters(), "lr": 0.1}], lr=0.1, momentum=0.9)
    model.train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    header(f"freezing: ResNet-50 step, frozen backbone, batch {args.batch}, {args.size}px, {args.device}")
    res = {v: child(step_time, v, args.device, args.batch, args.size, args.steps)
           for v in ("lr=0 pseudo-freeze", "paramgroups")}
    base = res["lr=0 pseudo-freeze"]
    mem = "gpu_peak_mb" if args.device == "cuda" else "peak_rss_mb"
    table([[v, r["step_s"], r[mem], r["step_s"] / base["step_s"], r[mem] / base[mem]] for v, r in res.items()],
          ["variant", "step s (median)", f"peak {'GPU alloc' if args.device == 'cuda' else 'RSS'} MiB",
           "x time", "x memory"])


if __name__ == "__main__":
    main()
