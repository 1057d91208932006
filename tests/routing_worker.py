"""A small transformer-like model and hybrid plans (Muon + AdamW, SparseAdam + AdamW), with
composite_worker's data and training loops, shared by test_routing.py and by the second process that resumes
a plan-built composite and its scheduler from a file:
``python routing_worker.py CHECKPOINT START STOP OUT``."""

from __future__ import annotations

import sys

import torch
from torch import nn

from composite_worker import VOCAB, batch, lightning_fit, train  # noqa: F401  (the same data and loops)

from paramgroups import Plan

HYBRID = {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.1,
          "optimizers": {"muon": {"lr": 0.02, "momentum": 0.95}, "adamw": {"betas": [0.9, 0.95]}},
          "no_decay": True,
          "rules": [{"match": "blocks.**.weight", "modules": "Linear", "optimizer": "muon"}]}
SPARSE = {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.1,
          "optimizers": {"sparseadam": {"lr": 1e-2}},
          "rules": [{"match": "embed", "optimizer": "sparseadam"}]}
STAGED = {**HYBRID, "schedule": {"main": "cosine", "total": 4, "warmup": 1, "warmup_start": 0.1},
          "layer_decay": 0.5, "layers": "blocks.{i}",
          "rules": [*HYBRID["rules"], {"match": "blocks.1", "freeze": True},
                    {"match": "head", "lr_mult": 3.0}],
          "stages": [{"epoch": 1, "unfreeze": "blocks.1", "lr_mult": 0.5, "warmup": 1}]}


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(nn.functional.gelu(self.up(self.norm(h))))


class TinyTransformer(nn.Module):
    """embed -> (LayerNorm, Linear, Linear) blocks x2 -> LayerNorm -> head."""

    def __init__(self, sparse: bool = False, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width, sparse=sparse)
        self.blocks = nn.ModuleList(Block(width) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def model(sparse: bool = False) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(sparse)


STEPS_PER_EPOCH = 5


def staged(net: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    plan = Plan.from_dict(STAGED)
    opt = plan.optimizer(net)
    return opt, plan.scheduler(opt, steps_per_epoch=STEPS_PER_EPOCH)


def resume(checkpoint: str, start: int, stop: int, out: str) -> None:
    """Build fresh, load model, optimizer and scheduler from ``checkpoint``, train, save all."""
    net = model()
    saved = torch.load(checkpoint, weights_only=True)
    net.load_state_dict(saved["model"])
    opt, sched = staged(net)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    train(net, [opt], start, stop, [sched])
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, out)


if __name__ == "__main__":
    resume(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
