"""Two-process DDP scenarios (gloo, CPU) started by test_distributed.py."""

from __future__ import annotations

import os
import traceback

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import stagenet

import paramgroups
from paramgroups import Plan


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
    model = DDP(net, bucket_cap_mb=1)
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    if paramgroups.resync_ddp(model).bucket_bytes_cap != 2**20:
        return "resync lost bucket_cap_mb"
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


def _digest(model, plan) -> str:
    """Group layout and a checksum of the parameters after two steps, to compare ranks."""
    opt = plan.optimizer(model)
    layout = [(g["name"], len(g["params"])) for g in opt.param_groups]
    for step in range(2):
        x, y = stagenet.batch(100 * dist.get_rank() + step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    total = sum(float(p.detach().full_tensor().double().sum()) if hasattr(p, "full_tensor")
                else float(p.detach().double().sum()) for p in model.parameters())
    names = [(a.record.name, a.record.shape) for a in plan.resolve(model).assignments]
    return repr((layout, names, round(total, 10)))


def _wrapper_plan() -> Plan:
    from paramgroups import Rule

    return Plan([Rule("stem", freeze=True), Rule("fc", lr=0.5), Rule(kinds=["bias", "norm"], weight_decay=0)],
                lr=0.05, weight_decay=1e-3, optimizer="adamw")


def ddp_groups(rank: int) -> str:
    net = stagenet.Net()
    plan = _wrapper_plan()
    plan.apply(net)
    return _digest(DDP(net), plan)


def fsdp2_groups(rank: int) -> str:
    from torch.distributed.fsdp import fully_shard

    net = stagenet.Net()
    plan = _wrapper_plan()
    plan.apply(net)
    for block in (net.stem, net.layer1, net.layer2):
        fully_shard(block)
    fully_shard(net)
    return _digest(net, plan)


def fsdp1_flat(rank: int) -> str:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = FSDP(stagenet.Net(), use_orig_params=False)
    _wrapper_plan().param_groups(model)
    return "no error"


def fsdp1_orig_params(rank: int) -> str:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    net = stagenet.Net()
    plan = _wrapper_plan()
    plan.apply(net)
    return _digest(FSDP(net, use_orig_params=True), plan)


SCENARIOS.update(ddp_groups=ddp_groups, fsdp2_groups=fsdp2_groups, fsdp1_flat=fsdp1_flat,
                 fsdp1_orig_params=fsdp1_orig_params)
