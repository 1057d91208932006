"""A tiny language model, its Muon/AdamW (or SparseAdam/AdamW) split and a deterministic
training loop, shared by test_composite.py and by the second process that resumes from a file:
``python composite_worker.py CHECKPOINT STEPS OUT``."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable

import torch
from torch import nn

from paramgroups.composite import CompositeOptimizer

VOCAB = 32


class TinyLM(nn.Module):
    """embed -> residual MLP block x2 -> LayerNorm -> head."""

    def __init__(self, sparse: bool = False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, sparse=sparse)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)) for _ in range(2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


def model(sparse: bool = False) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(sparse)


def split(net: TinyLM) -> tuple[list, list, list]:
    """The hidden matrices, the other decayed weights (embedding, head), and biases and norms."""
    matrices = [p for n, p in net.named_parameters() if n.startswith("blocks") and p.ndim == 2]
    weights = [net.embed.weight, net.head.weight]
    rest = [p for p in net.parameters() if all(p is not q for q in matrices + weights)]
    return matrices, weights, rest


def muon_adamw(net: TinyLM) -> list[tuple[str, torch.optim.Optimizer]]:
    """Muon over the matrices; AdamW in two groups (decayed weights, undecayed biases/norms)."""
    matrices, weights, rest = split(net)
    return [("muon", torch.optim.Muon(matrices, lr=0.02, momentum=0.95, weight_decay=0.1)),
            ("adamw", torch.optim.AdamW([{"params": weights}, {"params": rest, "weight_decay": 0.0}],
                                        lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1))]


def sparseadam_adamw(net: TinyLM) -> list[tuple[str, torch.optim.Optimizer]]:
    others = [p for p in net.parameters() if p is not net.embed.weight]
    return [("sparseadam", torch.optim.SparseAdam([net.embed.weight], lr=1e-2)),
            ("adamw", torch.optim.AdamW(others, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1))]


# the composite's groups: AdamW's decayed weights, Muon's matrices, AdamW's biases and norms
ORDER = [("adamw", 0), ("muon", 0), ("adamw", 1)]


def composite(net: TinyLM) -> CompositeOptimizer:
    return CompositeOptimizer(muon_adamw(net), ORDER)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (4, 8), generator=g)
    return ids, torch.roll(ids, -1, dims=1)


def train(net: nn.Module, optimizers: list, start: int, stop: int, schedulers: list = ()) -> None:
    """Steps ``start`` to ``stop - 1``: every optimizer zeroed and stepped, then every scheduler
    (test_routing.py trains its plans with this loop too)."""
    for step in range(start, stop):
        ids, targets = batch(step)
        for opt in optimizers:
            opt.zero_grad()
        nn.functional.cross_entropy(net(ids).flatten(0, 1), targets.flatten()).backward()
        for opt in optimizers:
            opt.step()
        for sched in schedulers:
            sched.step()


def lightning_fit(net: nn.Module, configure: Callable[[nn.Module], Any], root: Any) -> Any:
    """Three Lightning steps (CPU, nothing logged or saved) of ``net`` on the shared batches,
    with what ``configure(net)`` returns from ``configure_optimizers``; the trainer."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, pair: Any, _: int) -> torch.Tensor:
            ids, targets = pair
            return nn.functional.cross_entropy(self.net(ids).flatten(0, 1), targets.flatten())

        def configure_optimizers(self) -> Any:
            return configure(self.net)

    data = TensorDataset(*map(torch.cat, zip(*(batch(i) for i in range(3)))))
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Lit(), DataLoader(data, batch_size=4))
    return trainer


def resume(checkpoint: str, start: int, stop: int, out: str) -> None:
    """Build fresh, load model and optimizer from ``checkpoint``, train, save the model."""
    net = model()
    saved = torch.load(checkpoint, weights_only=True)
    net.load_state_dict(saved["model"])
    opt = composite(net)
    opt.load_state_dict(saved["optimizer"])
    train(net, [opt], start, stop)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, out)


if __name__ == "__main__":
    resume(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
