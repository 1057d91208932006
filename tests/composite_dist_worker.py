"""Two-process (gloo, CPU) runs of a Muon + AdamW CompositeOptimizer under DDP and FSDP2,
started by test_composite.py; each rank writes what it saw to ``OUT/rank{N}.txt``."""

from __future__ import annotations

import os
import traceback
import warnings

import torch
import torch.distributed as dist
from torch import nn

import composite_worker as cw

STEPS = 3


def _loss(net: nn.Module, step: int, rank: int) -> torch.Tensor:
    ids, targets = cw.batch(100 * rank + step)  # each rank its own data
    return nn.functional.cross_entropy(net(ids).flatten(0, 1), targets.flatten())


def _reference() -> dict[str, torch.Tensor]:
    """One process, one composite, the gradient of both ranks' mean loss."""
    net = cw.model()
    opt = cw.composite(net)
    for step in range(STEPS):
        opt.zero_grad()
        ((_loss(net, step, 0) + _loss(net, step, 1)) / 2).backward()
        opt.step()
    return dict(net.named_parameters())


def _train(model: nn.Module, opt: torch.optim.Optimizer, rank: int) -> None:
    for step in range(STEPS):
        opt.zero_grad()
        _loss(model, step, rank).backward()
        opt.step()


def _report(params: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> str:
    ref = _reference()
    diff = max((params[n] - p).abs().max().item() for n, p in ref.items())
    kinds = sorted({type(v).__name__ for s in opt.state_dict()["state"].values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.ndim})
    digest = sum(p.double().sum().item() for p in params.values())
    return f"diff={diff:.1e} digest={digest!r} state={','.join(kinds)}"


def ddp(rank: int) -> str:
    from torch.nn.parallel import DistributedDataParallel as DDP

    net = cw.model()
    model = DDP(net)
    opt = cw.composite(net)
    _train(model, opt, rank)
    return _report(dict(net.named_parameters()), opt)


def fsdp2(rank: int) -> str:
    from torch.distributed.fsdp import fully_shard

    net = cw.model()
    for block in net.blocks:
        fully_shard(block)
    fully_shard(net)
    opt = cw.composite(net)  # Muon sees DTensor matrices sharded by rows
    _train(net, opt, rank)
    return _report({n: p.full_tensor() for n, p in net.named_parameters()}, opt)


SCENARIOS = {"ddp": ddp, "fsdp2": fsdp2}


def run(rank: int, world: int, port: int, scenario: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP2's note on the view a Sequential returns
            result = SCENARIOS[scenario](rank)
    except Exception:  # noqa: BLE001 - reported to the test as text
        result = "crash: " + traceback.format_exc()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(result)
    dist.destroy_process_group()
