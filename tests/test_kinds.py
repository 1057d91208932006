"""Kinds `matrix` and `head` (issue 13): what Muon takes, and the model's output layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule
from paramgroups.inventory import KINDS, inventory


def of_kind(model: nn.Module, kind: str) -> list[str]:
    return [r.name for r in inventory(model) if kind in r.kinds]


def llama(tied: bool) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


LLAMA_MATRICES = [f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def test_kinds_are_known_to_rules():
    assert {"matrix", "head"} <= set(KINDS)
    assert Rule(kinds=["matrix", "head"]).kinds == ["matrix", "head"]


def test_resnet18_head_is_fc_and_it_has_no_matrix(resnet18_meta):
    recs = {r.name: r for r in inventory(resnet18_meta)}
    assert of_kind(resnet18_meta, "head") == ["fc.weight", "fc.bias"]
    assert of_kind(resnet18_meta, "matrix") == []  # convolutions are 4-D, fc is the head
    assert recs["fc.weight"].kinds == {"weight", "head"}
    assert recs["fc.bias"].kinds == {"bias", "head", "ndim<=1"}
    assert recs["conv1.weight"].kinds == {"weight"}
    assert recs["layer4.1.bn2.weight"].kinds == {"weight", "norm", "ndim<=1"}


def test_vgg_head_is_the_last_linear():
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None)
    assert of_kind(model, "head") == ["classifier.6.weight", "classifier.6.bias"]
    assert of_kind(model, "matrix") == ["classifier.0.weight", "classifier.3.weight"]


def test_timm_vit_matrices_and_classifier():
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    assert of_kind(model, "head") == ["head.weight", "head.bias"]
    assert of_kind(model, "matrix") == [f"blocks.{i}.{m}.weight" for i in range(2)
                                        for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    recs = {r.name: r for r in inventory(model)}
    assert recs["patch_embed.proj.weight"].kinds == {"weight"}  # a 4-D convolution
    assert recs["pos_embed"].kinds == {"embedding"}  # 3-D, declared no-decay: not a matrix


def test_timm_model_with_a_reset_classifier_has_no_head():
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert of_kind(model, "head") == []  # not the last block's mlp.fc2
    assert "blocks.0.mlp.fc2.weight" in of_kind(model, "matrix")


def test_timm_distilled_model_has_both_heads():
    import timm

    with torch.device("meta"):
        model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1)
    assert of_kind(model, "head") == ["head.weight", "head.bias", "head_dist.weight", "head_dist.bias"]


@pytest.mark.parametrize("tied", [False, True])
def test_llama_lm_head_embeddings_and_matrices(tied):
    model = llama(tied)
    recs = {r.name: r for r in inventory(model)}
    assert of_kind(model, "matrix") == LLAMA_MATRICES
    assert [n for n in recs if recs[n].kinds & {"norm"}] == [
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight"]
    if tied:  # one tensor, one record: both kinds, the head's name an alias
        assert "lm_head.weight" not in recs
        assert recs["model.embed_tokens.weight"].aliases == ["lm_head.weight"]
        assert recs["model.embed_tokens.weight"].kinds == {"weight", "embedding", "head"}
        assert of_kind(model, "head") == of_kind(model, "embedding") == ["model.embed_tokens.weight"]
    else:
        assert recs["model.embed_tokens.weight"].kinds == {"weight", "embedding"}
        assert recs["lm_head.weight"].kinds == {"weight", "head"}
        assert of_kind(model, "head") == ["lm_head.weight"]


def test_transformers_base_model_has_no_head_and_a_classifier_falls_back_to_the_last_linear():
    import transformers

    base = llama(False).model  # LlamaModel: no output layer, so not the last down_proj
    assert of_kind(base, "head") == []
    assert of_kind(base, "matrix") == [n.removeprefix("model.") for n in LLAMA_MATRICES]
    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, num_labels=3)
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(config)
    assert model.get_output_embeddings() is None
    assert of_kind(model, "head") == ["classifier.weight", "classifier.bias"]
    assert "bert.pooler.dense.weight" in of_kind(model, "matrix")


def test_plain_mlp_head_is_its_last_linear_and_attention_in_proj_is_a_matrix():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    assert of_kind(model, "head") == ["4.weight", "4.bias"]
    assert of_kind(model, "matrix") == ["0.weight", "2.weight"]
    attention = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 2))
    assert of_kind(attention, "matrix") == ["0.in_proj_weight", "0.out_proj.weight"]
    assert of_kind(attention, "head") == ["1.weight", "1.bias"]


def test_embedding_and_3d_tensors_are_not_matrices():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.experts = nn.Parameter(torch.zeros(3, 4, 4))  # fused mixture-of-experts weights
            self.out = nn.Linear(4, 10)

    recs = {r.name: r for r in inventory(Net())}
    assert recs["emb.weight"].kinds == {"weight", "embedding"}
    assert recs["experts"].kinds == {"weight"}
    assert recs["out.weight"].kinds == {"weight", "head"}


def test_head_under_wrappers_and_lora_adapters():
    peft = pytest.importorskip("peft")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["0", "2"]))
    recs = {r.name: r for r in inventory(wrapped)}
    assert of_kind(wrapped, "head") == ["2.weight", "2.bias"]  # the base layer, not lora_B
    assert recs["2.lora_B.default.weight"].kinds == {"weight", "matrix", "adapter", "lora_B"}
    assert recs["0.weight"].kinds == {"weight", "matrix"}


def test_rules_route_matrices_and_heads():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    res = Plan([Rule(kinds="matrix", lr=0.02), Rule(kinds="head", lr=0.001)], lr=0.1).resolve(model)
    assert {a.record.name: a.lr for a in res.assignments} == {
        "0.weight": 0.02, "0.bias": 0.1, "1.weight": 0.1, "1.bias": 0.1, "2.weight": 0.001, "2.bias": 0.001}


def test_without_a_linear_the_head_is_the_last_module_holding_a_matrix():
    class Proj(nn.Module):
        def __init__(self, n: int, m: int):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(n, m))
            self.bias = nn.Parameter(torch.zeros(n))

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Proj(4, 4), nn.LayerNorm(4), Proj(2, 4))
    assert of_kind(model, "head") == ["3.weight", "3.bias"]
    assert of_kind(model, "matrix") == ["1.weight"]
    assert of_kind(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)), "head") == []  # fully convolutional


def test_a_module_rebuilt_from_a_checkpoint_has_the_models_head(resnet18_meta):
    from paramgroups.models import module_from_shapes

    shapes = {k: (tuple(v.shape), v.dtype) for k, v in resnet18_meta.state_dict().items()}
    for order in (list(shapes), sorted(shapes)):  # safetensors keeps its keys sorted
        rebuilt = module_from_shapes({k: shapes[k] for k in order}, "resnet18.pt")
        assert sorted(of_kind(rebuilt, "head")) == ["fc.bias", "fc.weight"]
        assert of_kind(rebuilt, "matrix") == []


def test_a_root_holding_matrices_is_no_head():
    class Cell(nn.Module):  # a recurrent cell: its matrices are hidden weights
        def __init__(self):
            super().__init__()
            self.weight_ih = nn.Parameter(torch.zeros(8, 2))
            self.weight_hh = nn.Parameter(torch.zeros(8, 2))
            self.ln = nn.LayerNorm(8)

    assert of_kind(Cell(), "head") == []
    assert of_kind(Cell(), "matrix") == ["weight_ih", "weight_hh"]
