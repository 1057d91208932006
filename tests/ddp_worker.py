"""Two-process DDP scenarios (gloo, CPU) started by test_distributed.py."""

from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(__file__))
import stagenet  # noqa: E402

import paramgroups  # noqa: E402
from paramgroups import Plan  # noqa: E402


def run(rank: int, world: int, port: int, scenario: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    try:
        result = SCENARIOS[scenario](rank)
    except paramgroups.errors.ParamgroupsError as exc:
        result = f"error: {exc}"
    except Exception:  # noqa: BLE001 - reported to the test as text
        result = "crash: " + traceback.format_exc()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(result)
    dist.destroy_process_group()


def _train(model, opt, sched, rank: int, epochs: int, resync: bool) -> torch.nn.Module:
    for epoch in range(epochs):
        if resync:
            model = paramgroups.resync_ddp(model)
        for step in range(2):
            x, y = stagenet.batch(100 * rank + 10 * epoch + step)  # each rank its own data
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
    return model


def _plan() -> Plan:
    return Plan.progressive(["fc", "layer2", "**"], every=1, lr=0.1, momentum=0.9)


def synced(rank: int) -> str:
    """The documented flow: wrap, build, resync every epoch. Ranks must stay identical."""
    net = stagenet.Net()
    plan = _plan()
    model = DDP(net)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    before = net.layer2[0].weight.detach().clone()
    model = _train(model, opt, sched, rank, 3, resync=True)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    moved = not torch.equal(before, net.layer2[0].weight)
    return f"same={same} moved={moved} all_trainable={all(p.requires_grad for p in net.parameters())}"


def no_resync_after_thaw(rank: int) -> str:
    net = stagenet.Net()
    plan = _plan()
    model = DDP(net)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    model = paramgroups.resync_ddp(model)  # right at the start: fc only
    _train(model, opt, sched, rank, 2, resync=False)  # epoch 1 thaws layer2: must raise
    return "no error"


def frozen_after_wrap(rank: int) -> str:
    net = stagenet.Net()
    model = DDP(net)
    _plan().optimizer(model)  # freezes what DDP registered
    x, y = stagenet.batch(rank)
    model(x)
    return "no error"


SCENARIOS = {"synced": synced, "no_resync_after_thaw": no_resync_after_thaw,
             "frozen_after_wrap": frozen_after_wrap}
