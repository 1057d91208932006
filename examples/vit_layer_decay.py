"""Fine-tune a timm ViT with layer-wise LR decay, AdamW and a warmup + cosine schedule.

The BEiT/MAE fine-tuning recipe: every transformer block gets the LR of the block above it
times 0.75 (the head gets the full LR, blocks.11 and the final norm 0.75x, ..., blocks.0
0.75**12x, the patch embedding, position embedding and cls token 0.75**13x), AdamW with
weight decay 0.05 except on biases, norms, pos_embed and cls_token, and a cosine schedule
after a short linear warmup, stepped every iteration. Layer ids come from timm's own
``group_matcher()``, so the scales equal timm's ``param_groups_layer_decay``.

The audit (with its ``layer`` and ``lr_scale`` columns) is printed before a few training steps
on torchvision's FakeData. To stay fast on a CPU the model is vit_tiny_patch16_224's
architecture (12 blocks, width 192) built for 32x32 images with 8x8 patches, random weights;
nothing is downloaded.

Run it:

    python examples/vit_layer_decay.py --steps 5 --batch-size 8
"""

from __future__ import annotations

import argparse

import timm
import torch
import torchvision
from torch import nn
from torchvision import transforms

from paramgroups import Plan, audit
from paramgroups.schedules import Schedule

NUM_CLASSES = 10
LR, LAYER_DECAY, WEIGHT_DECAY = 1e-3, 0.75, 0.05
IMAGE_SIZE, PATCH_SIZE = 32, 8


def make_model() -> nn.Module:
    """vit_tiny_patch16_224's architecture at 32x32 with 8x8 patches (16 tokens + cls)."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES,
                             img_size=IMAGE_SIZE, patch_size=PATCH_SIZE)


def make_plan(steps: int = 10, warmup: int = 2) -> Plan:
    """AdamW, wd 0.05 (none on biases/norms/embeddings), layer decay 0.75, warmup + cosine."""
    return Plan(
        lr=LR, weight_decay=WEIGHT_DECAY, optimizer="adamw",
        layer_decay=LAYER_DECAY,  # layers: from timm's group_matcher()
        no_decay=True,            # weight decay 0 on biases, norms, 1-d params, pos_embed, cls_token
        schedule=Schedule("cosine", unit="step", total=steps, warmup=warmup, warmup_lr=1e-6),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warmup steps (default: 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be >= 0 and less than --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = make_model()
    plan = make_plan(args.steps, args.warmup)

    print(audit(model, plan).to_table(width=None))  # full names: no wrapping to 120 columns
    optimizer = plan.optimizer(model)
    scheduler = plan.scheduler(optimizer)  # the schedule counts steps: step() every iteration

    def group_of(name: str) -> dict:
        param = model.get_parameter(name)
        return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))

    head, first = group_of("head.weight"), group_of("blocks.0.attn.qkv.weight")

    data = torchvision.datasets.FakeData(
        size=args.steps * args.batch_size, image_size=(3, IMAGE_SIZE, IMAGE_SIZE),
        num_classes=NUM_CLASSES, transform=transforms.ToTensor(), random_offset=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    print()
    for step, (images, labels) in enumerate(loader):
        lr_head, lr_first = head["lr"], first["lr"]
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        print(f"step {step}  lr head {lr_head:.4g}  lr blocks.0 {lr_first:.4g}  "
              f"ratio {lr_first / lr_head:.6f}  loss {loss.item():.4f}")
    print(f"blocks.0 / head = 0.75**12 = {LAYER_DECAY ** 12:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
