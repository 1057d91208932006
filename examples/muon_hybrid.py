"""Muon for the hidden matrices, AdamW for the rest: a tiny Llama trained with one plan file.

The plan is ``examples/plans/muon_transformer.yaml``: rule ``kinds: matrix`` routes the
attention and MLP projections to ``torch.optim.Muon`` (lr 0.02, momentum 0.95), and the token
embedding, ``lm_head`` and the RMSNorm weights stay on the plan's AdamW (lr 3e-4, betas
(0.9, 0.95)). The script adds a schedule to it (2 warmup steps, then cosine to the last
step), prints the audit (who steps what, the optimizer state each keeps), then trains on one
fixed batch of random token ids (the loss falls as the model learns it by heart).
``plan.optimizer`` returns one ``torch.optim.Optimizer`` over both (a
``CompositeOptimizer``), so the loop is the usual one and ``plan.scheduler`` sets the LR of
every group of both optimizers; each step prints the loss and the two LRs.

A Llama built from a small ``LlamaConfig`` (random weights, nothing downloaded). Run it
(CPU, a few seconds):

    python examples/muon_hybrid.py --steps 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from paramgroups import Plan, audit

RECIPE = Path(__file__).resolve().parent / "plans" / "muon_transformer.yaml"
VOCAB, SEQ = 128, 16


def make_model() -> torch.nn.Module:
    """A 2-layer Llama, width 32, untied embeddings."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def make_plan(steps: int) -> Plan:
    """The recipe, with a schedule stepped every iteration: 2 warmup steps, then cosine."""
    data = yaml.safe_load(RECIPE.read_text())
    data["schedule"] = {"main": "cosine", "unit": "step", "total": steps, "warmup": 2}
    return Plan.from_dict(data, source=str(RECIPE))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps (default: 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.steps < 3 or args.batch_size < 1:  # the warmup takes 2 steps
        parser.error("--steps must be >= 3 and --batch-size >= 1")
    return args


def train(model: torch.nn.Module, plan: Plan, steps: int, batch_size: int) -> list[float]:
    """``steps`` steps of Muon + AdamW on one batch of random token ids; the losses."""
    optimizer = plan.optimizer(model)
    scheduler = plan.scheduler(optimizer)
    ids = torch.randint(0, VOCAB, (batch_size, SEQ))
    model.train()
    losses = []
    for step in range(steps):
        lrs = {g["optimizer"]: g["lr"] for g in optimizer.param_groups}
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}  lr muon {lrs['muon']:.3g}  adamw {lrs['adamw']:.3g}")
    return losses


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = make_model()
    plan = make_plan(args.steps)
    print(audit(model, plan, name="tiny Llama").to_table(width=None))
    print()
    train(model, plan, args.steps, args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
