"""Staged freezing under DistributedDataParallel, without silent desynchronisation.

DDP registers the parameters that require gradients when it wraps the model, and only those
are all-reduced. A parameter thawed later trains on each rank's own gradient (the ranks drift
apart silently); one frozen later makes DDP fail with "Expected to have finished reduction"
(unless ``find_unused_parameters=True``). paramgroups records what each DDP wrapper
registered, checks it before every forward, and :func:`resync_ddp` re-wraps the module when
a stage changed the trainable set::

    for epoch in range(epochs):
        model = paramgroups.resync_ddp(model)   # a new DDP wrapper only when a stage changed it
        for batch in loader:
            ...
            optimizer.step()
            scheduler.step()
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import PlanError
from .inventory import strip_wrappers, wrapped_children

_REGISTERED = "_paramgroups_registered"
_DDP_KWARGS = ("device_ids", "output_device", "dim", "broadcast_buffers", "process_group",
               "find_unused_parameters", "gradient_as_bucket_view", "static_graph")


def is_ddp(model: Any) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def watch(ddp: nn.Module) -> None:
    """Record what ``ddp`` registered (the parameters trainable now) and check it per forward."""
    if getattr(ddp, _REGISTERED, None) is not None:
        return
    object.__setattr__(ddp, _REGISTERED, {id(p) for p in ddp.module.parameters() if p.requires_grad})
    ddp.register_forward_pre_hook(_check_hook)


def mismatch(ddp: nn.Module) -> tuple[list[str], list[str]]:
    """(thawed but not registered, registered but frozen) parameter names of a watched DDP."""
    registered = getattr(ddp, _REGISTERED, None)
    if registered is None:
        return [], []
    thawed, frozen = [], []
    wrapped = wrapped_children(ddp.module)
    for name, p in ddp.module.named_parameters():
        if p.requires_grad and id(p) not in registered:
            thawed.append(strip_wrappers(name, wrapped))
        elif not p.requires_grad and id(p) in registered and not ddp.find_unused_parameters:
            frozen.append(strip_wrappers(name, wrapped))
    return thawed, frozen


def _check_hook(ddp: nn.Module, args: Any) -> None:
    thawed, frozen = mismatch(ddp)
    if thawed:
        raise PlanError(
            f"{len(thawed)} parameter(s) were thawed after DistributedDataParallel wrapped the "
            f"model ({', '.join(thawed[:3])}{', ...' if len(thawed) > 3 else ''}): DDP does not "
            f"synchronise them, so the ranks would drift apart. Re-wrap after the stage "
            f"boundary: model = paramgroups.resync_ddp(model)")
    if frozen:
        raise PlanError(
            f"{len(frozen)} parameter(s) that DistributedDataParallel registered are frozen now "
            f"({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}): DDP would fail with "
            f"'Expected to have finished reduction'. Re-wrap: model = paramgroups.resync_ddp(model), "
            f"or apply the plan before wrapping (plan.apply(model); model = DDP(model))")


def resync_ddp(model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
    """``model`` itself when its DDP wrapper registered exactly the trainable parameters,
    else a new ``DistributedDataParallel`` around the same module (same device ids, buffers,
    bucket size, unused-parameter and static-graph settings, overridden by ``ddp_kwargs``;
    communication hooks are not carried over). Anything but a DDP is returned unchanged.

    The optimizer and scheduler keep working: they hold the parameters, not the wrapper.
    Every rank must call it at the same point (it is collective when it re-wraps).
    """
    if not is_ddp(model):
        return model
    watch(model)
    thawed, frozen = mismatch(model)
    if not thawed and not frozen:
        return model
    from torch.nn.parallel import DistributedDataParallel

    kwargs = {k: getattr(model, k) for k in _DDP_KWARGS if hasattr(model, k)}
    kwargs["process_group"] = getattr(model, "process_group", None)
    if hasattr(model, "bucket_bytes_cap"):  # DDP keeps bucket_cap_mb in bytes
        kwargs["bucket_cap_mb"] = model.bucket_bytes_cap / 2**20
    kwargs.update(ddp_kwargs)
    fresh = DistributedDataParallel(model.module, **kwargs)
    watch(fresh)
    return fresh
