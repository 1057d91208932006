"""DDP with staged unfreezing, two processes on the CPU (gloo)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ddp_worker

pytestmark = [pytest.mark.slow,  # every test starts two processes
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="this torch build has no gloo backend for torch.distributed")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(scenario: str, tmp_path: Path) -> list[str]:
    mp.spawn(ddp_worker.run, args=(2, free_port(), scenario, str(tmp_path)), nprocs=2, join=True)
    return [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]


def test_resync_keeps_ranks_identical_through_stages(tmp_path):
    assert run_two("synced", tmp_path) == ["same=True moved=True all_trainable=True"] * 2


def test_thaw_without_resync_is_an_error_not_a_silent_desync(tmp_path):
    for result in run_two("no_resync_after_thaw", tmp_path):
        assert result.startswith("error: 4 parameter(s) were thawed after DistributedDataParallel")
        assert "model = paramgroups.resync_ddp(model)" in result


def test_freezing_what_ddp_registered_is_an_error_with_the_fix(tmp_path):
    for result in run_two("frozen_after_wrap", tmp_path):
        assert result.startswith("error: ") and "Expected to have finished reduction" in result
        assert "resync_ddp" in result


NO_FSDP1 = pytest.mark.skipif(not torch.cuda.is_available(),
                              reason="FSDP1 (FullyShardedDataParallel) needs a CUDA device in this torch")


@pytest.mark.parametrize("scenario", ["ddp_groups", "fsdp2_groups",
                                      pytest.param("fsdp1_orig_params", marks=NO_FSDP1)])
def test_wrapped_models_build_identical_groups_and_steps_on_all_ranks(tmp_path, scenario):
    results = run_two(scenario, tmp_path)
    assert not results[0].startswith(("error", "crash")), results[0]
    assert results[0] == results[1]
    layout, names, _ = eval(results[0])  # noqa: S307 - our own repr of plain data
    net = ddp_worker.stagenet.Net()
    plan = ddp_worker._wrapper_plan()
    assert names == [(n, tuple(p.shape)) for n, p in net.named_parameters()]  # global shapes
    assert layout == [(g["name"], len(g["params"])) for g in plan.param_groups(net)]


@NO_FSDP1
def test_fsdp1_without_orig_params_is_refused(tmp_path):
    for result in run_two("fsdp1_flat", tmp_path):
        assert result.startswith("error: ") and "use_orig_params=True" in result, result
