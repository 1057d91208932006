"""Hugging Face models by type (hf:TYPE), save_pretrained folder, config.json and sharded index,
built offline on meta with the network blocked; factories found in the working folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")

from safetensors import safe_open  # noqa: E402

from paramgroups.hf_models import parse_config_overrides  # noqa: E402
from paramgroups.models import build_model  # noqa: E402

from conftest import audit_json, one_line_error, run_cli as run  # noqa: E402


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: any connection fails the test


def tiny_gpt2() -> "transformers.PreTrainedModel":
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)  # lm_head.weight is tied to transformer.wte.weight


def tiny_llama(**kw) -> "transformers.PreTrainedModel":
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=64,
                                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, **kw)
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama_sharded")
    tiny_llama().to(torch.bfloat16).save_pretrained(path, max_shard_size="8KB")
    return path


def file_shapes(*files: Path) -> dict[str, list[int]]:
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            out.update({k: list(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


# -- save_pretrained folders, config.json, sharded indexes ---------------------------------


def test_folder_audits_the_saved_tensors_names_and_shapes_tied_weights_included(capsys, gpt2_dir):
    saved = file_shapes(gpt2_dir / "model.safetensors")
    assert "lm_head.weight" not in saved  # save_pretrained writes a tied weight once
    for spec in (gpt2_dir, gpt2_dir / "config.json"):
        params = audit_json(capsys, spec)["parameters"]
        assert {p["name"]: p["shape"] for p in params} == saved
        assert [(p["name"], p["aliases"]) for p in params if p["aliases"]] == [
            ("transformer.wte.weight", ["lm_head.weight"])]
        assert {p["module"] for p in params} >= {"Embedding", "LayerNorm", "Conv1D"}  # real classes
    model = build_model(str(gpt2_dir))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_config_overrides_apply_to_a_config_file(capsys, gpt2_dir):
    params = audit_json(capsys, gpt2_dir / "config.json", "--config", "num_hidden_layers=1")["parameters"]
    assert sorted({p["name"].split(".")[2] for p in params if p["name"].startswith("transformer.h.")}) == ["0"]
    err = one_line_error(*run(capsys, "inspect", gpt2_dir, "--config", "n_layers=1"))
    assert err == (f"paramgroups: error: {gpt2_dir / 'config.json'}: config has no key 'n_layers'; "
                   f"did you mean n_layer, num_hidden_layers?\n")


def test_sharded_index_reads_every_shard_header(capsys, sharded_dir):
    shards = sorted(sharded_dir.glob("model-*.safetensors"))
    assert len(shards) >= 2
    index = sharded_dir / "model.safetensors.index.json"
    params = audit_json(capsys, index)["parameters"]
    saved = file_shapes(*shards)
    assert {p["name"]: p["shape"] for p in params} == saved
    assert len(saved) == 2 * 9 + 3  # 9 tensors per layer, embed_tokens, norm, lm_head
    assert {p["dtype"] for p in params} == {"bfloat16"}
    # the folder builds the model itself, in the dtype it was saved in
    params = audit_json(capsys, sharded_dir)["parameters"]
    assert {p["name"]: p["shape"] for p in params} == saved
    assert {p["dtype"] for p in params} == {"bfloat16"}
    assert {p["module"] for p in params} >= {"LlamaRMSNorm", "Embedding", "Linear"}


def test_sharded_index_errors(capsys, tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a.weight": "m-1.safetensors"}}))
    err = one_line_error(*run(capsys, "inspect", index))
    assert err == (f"paramgroups: error: {index}: lists shard 'm-1.safetensors', which is missing "
                   f"({tmp_path / 'm-1.safetensors'}: no such file)\n")
    err = one_line_error(*run(capsys, "diff", index, index))  # diff compares checkpoints, not indexes
    assert "not a checkpoint but the index of a sharded checkpoint" in err
    from safetensors.torch import save_file

    save_file({"b.weight": torch.zeros(2)}, str(tmp_path / "m-1.safetensors"))
    err = one_line_error(*run(capsys, "inspect", index))
    assert err == (f"paramgroups: error: {index}: 'a.weight' is listed in 'm-1.safetensors' but "
                   f"that shard does not hold it\n")
    err = one_line_error(*run(capsys, "inspect", index, "--config", "n_layer=1"))
    assert "a sharded checkpoint's index has no config to override" in err


def test_custom_code_architecture_is_refused(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["MyLlama"], "auto_map": {"AutoModel": "modeling.MyLlama"}}))
    err = one_line_error(*run(capsys, "inspect", tmp_path))
    assert err.startswith(f"paramgroups: error: {tmp_path / 'config.json'}: architecture 'MyLlama' "
                          f"is not in transformers {transformers.__version__} (custom code via "
                          f"auto_map, which paramgroups never runs)")


def test_model_name_beats_a_same_named_hf_folder_unless_written_dot_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_gpt2().save_pretrained(tmp_path / "resnet18")
    assert type(build_model("resnet18")).__name__ == "ResNet"
    assert type(build_model("./resnet18")).__name__ == "GPT2LMHeadModel"


# -- hf:TYPE -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type, cls", [
    ("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel"), ("bert", "BertLMHeadModel"),
    ("mixtral", "MixtralForCausalLM"), ("vit", "ViTModel"),  # vit has no causal LM: the base model
])
def test_hf_type_equals_transformers_own_build(model_type, cls):
    model = build_model(f"hf:{model_type}", config={"num_hidden_layers": 1})
    assert type(model).__name__ == cls
    config = transformers.AutoConfig.for_model(model_type, num_hidden_layers=1)
    with torch.device("meta"):
        reference = getattr(transformers, cls)(config)
    assert [(n, p.shape) for n, p in model.named_parameters()] == \
        [(n, p.shape) for n, p in reference.named_parameters()]
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_hf_llama_is_llama_2_7b_on_meta(capsys):
    report = audit_json(capsys, "hf:llama")
    assert report["totals"]["numel"] == 6_738_415_616
    assert len(report["parameters"]) == 291  # 32 layers x 9, embed_tokens, norm, lm_head
    assert report["parameters"][-1]["name"] == "lm_head.weight"
    assert report["parameters"][-1]["shape"] == [32000, 4096]


def test_hf_hub_offline_while_building_and_restored_after(monkeypatch):
    seen = []
    real = transformers.AutoModelForCausalLM.from_config

    def spy(config, **kw):
        seen.append(os.environ.get("HF_HUB_OFFLINE"))
        return real(config, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", spy)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    build_model("hf:gpt2", config={"n_layer": 1})
    assert seen == ["1"] and "HF_HUB_OFFLINE" not in os.environ


def test_config_values_are_json_scalars_or_strings():
    assert parse_config_overrides(["n_layer=2", "scale_attn_weights=false", "attn_pdrop=0.5",
                                   "n_inner=null", "activation_function=relu", "x= a=b"]) == {
        "n_layer": 2, "scale_attn_weights": False, "attn_pdrop": 0.5, "n_inner": None,
        "activation_function": "relu", "x": " a=b"}
    model = build_model("hf:gpt2", config=parse_config_overrides(["n_layer=1", "n_embd=8", "n_head=2"]))
    assert model.transformer.wte.weight.shape == (50257, 8) and len(model.transformer.h) == 1


@pytest.mark.parametrize("args, says", [
    (("hf:gpt2", "--config", "num_hiden_layers=2"),
     "hf:gpt2: config has no key 'num_hiden_layers'; did you mean num_hidden_layers"),
    (("hf:gpt2", "--config", "n_layer"), "config override 'n_layer' is not KEY=VALUE"),
    (("hf:gpt2", "--config", "n_layer=1", "--config", "n_layer=2"), "config key 'n_layer' is given twice"),
    (("hf:gpt2", "--config", "n_layer=two"), "hf:gpt2: invalid config:"),
    (("hf:lama",), "unknown transformers model type 'lama'; did you mean llama"),
    (("hf:meta-llama/Llama-2-7b-hf",), "hf:meta-llama/Llama-2-7b-hf: hf: takes a transformers model "
                                        "type (hf:llama), not a hub repository: paramgroups never downloads"),
    (("hf:gpt2", "--num-classes", "3"), "hf:gpt2: num_classes applies only to torchvision and timm models"),
    (("resnet18", "--config", "n_layer=1"), "resnet18: config overrides apply only to Hugging Face models"),
])
def test_bad_hf_input_is_one_line_exit_2(capsys, args, says):
    err = one_line_error(*run(capsys, "inspect", *args))
    assert err.startswith(f"paramgroups: error: {says}"), err


@pytest.mark.parametrize("text, says", [
    ("[" * 200_000, "cannot read (maximum recursion depth exceeded"),  # json.loads's RecursionError
    ("{model_type: gpt2}", "cannot read (Expecting property name enclosed in double quotes"),
    (" " * 2**24 + "{}", "cannot read (larger than 16 MiB)"),
])
def test_unreadable_config_json_is_one_line_exit_2(capsys, tmp_path, text, says):
    (tmp_path / "config.json").write_text(text)
    err = one_line_error(*run(capsys, "inspect", tmp_path))
    assert err.startswith(f"paramgroups: error: {tmp_path / 'config.json'}: {says}"), err


@pytest.mark.slow
def test_library_modules_import_no_transformers():
    code = ("import sys, paramgroups.models, paramgroups.hf_models; paramgroups.build_model; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- factories from the working folder -------------------------------------------------------


@pytest.mark.slow
def test_console_script_finds_factories_in_the_working_folder(tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        from torch import nn

        def build():
            return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    """))
    # the folder goes last on sys.path: a stray yaml.py there does not shadow PyYAML
    (tmp_path / "yaml.py").write_text("raise ImportError('shadowed')\n")
    (tmp_path / "plan.yaml").write_text("lr: 0.1\n")
    script = Path(sys.executable).parent / "paramgroups"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(script), "inspect", "mymodels:build", "--rules", "plan.yaml",
                           "--format", "json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    params = json.loads(done.stdout)["parameters"]
    assert [(p["name"], p["shape"], p["lr"]) for p in params] == [
        ("0.weight", [4, 3], 0.1), ("0.bias", [4], 0.1), ("1.weight", [4], 0.1), ("1.bias", [4], 0.1)]
    done = subprocess.run([str(script), "inspect", "nosuchmodule:build"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (
        2, "paramgroups: error: cannot import 'nosuchmodule': No module named 'nosuchmodule'\n")
