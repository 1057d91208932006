"""LoRA+ fine-tuning of a tiny Llama with PEFT and a paramgroups plan, on the CPU.

A Llama built from a small ``LlamaConfig`` (random weights, nothing downloaded) gets LoRA
adapters from peft's ``get_peft_model`` (r=4 on q_proj and v_proj), which freezes the base.
The plan (the same settings as ``examples/plans/loraplus.yaml``) gives LoRA+ learning rates
(``lora_B`` at 16x the LR of ``lora_A``) and no weight decay on norms, biases and embeddings;
it names no freezing, so the base stays as peft froze it. The audit is printed, then the
loss of a few AdamW steps on random token ids.

Run it:

    python examples/lora_llama.py --steps 3
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from paramgroups import Plan, audit

VOCAB, SEQ = 128, 16


def make_model() -> torch.nn.Module:
    """A 2-layer Llama (width 32) with LoRA r=4 on q_proj and v_proj; the base frozen by peft."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(base, lora)


def make_plan() -> Plan:
    """AdamW at 2e-4, LoRA+ ratio 16, weight decay 0.01 except on norms, biases and embeddings."""
    return Plan(lr=2e-4, weight_decay=0.01, optimizer="adamw", loraplus={"ratio": 16}, no_decay=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps (default: 3)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.batch_size < 1:
        # lora_B starts at zero, so lora_A gets no gradient before the second step
        parser.error("--steps must be >= 2 and --batch-size >= 1")
    return args


def train(model: torch.nn.Module, plan: Plan, steps: int, batch_size: int) -> None:
    """``steps`` AdamW steps on random token ids; only the adapters train."""
    optimizer = plan.optimizer(model)  # the plan freezes nothing: the base stays as peft left it
    model.train()
    for step in range(steps):
        ids = torch.randint(0, VOCAB, (batch_size, SEQ))
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = make_model()
    plan = make_plan()
    print(audit(model, plan).to_table(width=None))
    train(model, plan, args.steps, args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
