"""timm parity on timm's own models: every parameter's LR and weight decay equal timm's.

``Plan(lr, weight_decay, optimizer="adamw", layer_decay=0.75, no_decay=True)`` against
``timm.optim.create_optimizer_v2(model, "adamw", ..., layer_decay=0.75)``, and
``no_decay=True`` alone against ``timm.optim.param_groups_weight_decay`` with the model's
``no_weight_decay()`` (as ``create_optimizer_v2`` passes it). Models are built on the meta
device without weights. ``benchmarks/timm_parity.py`` runs the same check on the whole zoo.
"""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark
from paramgroups import Plan, audit

timm = pytest.importorskip("timm")

parity = load_benchmark("timm_parity")  # the zoo sweep's own check, on a sample
LR, WD, DECAY, build = parity.LR, parity.WD, parity.DECAY, parity.build

# Diverse families; the first line differed from timm before: a wildcard no_weight_decay()
# (xcit: 'pos_embed.*' covers a conv), built-in token names on a timm model that declares
# nothing (resnet50_clip's 2-D head.pos_embed, which timm decays), no group_matcher() (timm's
# auto_group_layers fallback).
SAMPLE = [
    "xcit_nano_12_p16_224", "resnet50_clip", "caformer_s18", "convformer_s18", "csatv2",
    "vit_relpos_small_patch16_rpn_224", "tnt_s_legacy_patch16_224", "crossvit_tiny_240",
    "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_little_patch16_reg4_gap_256",
    "swin_tiny_patch4_window7_224", "swinv2_cr_tiny_ns_224", "levit_128s", "coat_tiny",
    "mvitv2_tiny", "twins_svt_small", "pit_ti_224", "nest_tiny", "hiera_tiny_224",
    "maxvit_tiny_tf_224", "eva02_tiny_patch14_224", "cait_xxs24_224", "pvt_v2_b0",
    "resnet18", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_050", "mixer_s16_224",
    "densenet121", "regnetx_002",
]


def assert_parity(name: str) -> None:
    assert parity.mismatches(parity.build(name)) == []


@pytest.mark.parametrize("name", SAMPLE)
def test_sample_matches_timm(name: str) -> None:
    assert_parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", timm.list_models()[::10])  # all 1371 build on meta (timm 1.0.31)
def test_zoo_every_tenth_model_matches_timm(name: str) -> None:
    assert_parity(name)


def test_wildcard_no_weight_decay_covers_a_conv_under_pos_embed() -> None:
    model = build("xcit_nano_12_p16_224")
    assert model.no_weight_decay() == {"pos_embed.*", "cls_token"}
    rows = {r["name"]: r for r in audit(model, Plan(weight_decay=WD, no_decay=True)).parameters}
    conv = rows["pos_embed.token_projection.weight"]
    assert conv["shape"] == [128, 64, 1, 1] and "embedding" in conv["kinds"] and conv["weight_decay"] == 0.0
    assert rows["patch_embed.proj.0.0.weight"]["weight_decay"] == WD


def test_built_in_tokens_only_for_models_other_than_timm_that_declare_nothing() -> None:
    model = build("resnet50_clip")
    assert not hasattr(model, "no_weight_decay")
    rows = {r["name"]: r for r in audit(model, Plan(weight_decay=WD, no_decay=True)).parameters}
    pos = rows["head.pos_embed"]
    assert pos["shape"] == [50, 2048] and "embedding" not in pos["kinds"] and pos["weight_decay"] == WD

    class Own(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 4))
            self.proj = torch.nn.Linear(4, 4)

    rows = {r["name"]: r for r in audit(Own(), Plan(weight_decay=WD, no_decay=True)).parameters}
    assert (rows["pos_embed"]["weight_decay"], rows["proj.weight"]["weight_decay"]) == (0.0, WD)


def test_no_group_matcher_falls_back_to_timm_auto_grouping() -> None:
    from timm.optim import auto_group_layers

    model = build("caformer_s18")
    assert not hasattr(model, "group_matcher") and model.pretrained_cfg["classifier"] == "head.fc.fc2"
    rows = audit(model, Plan(lr=LR, layer_decay=DECAY)).parameters
    assert {r["name"]: r["layer"] for r in rows} == auto_group_layers(model)
    top = max(r["layer"] for r in rows)
    assert (top, rows[0]["lr_scale"], rows[-1]["lr_scale"]) == (top, DECAY ** top, 1.0)
