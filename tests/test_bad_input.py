"""The rest of the bad-input surface: each case exits 2 with one line on stderr, or works.

Lazy modules, optimizers without a default lr, --plot formats, endless --rules streams, text
files passed as checkpoints, duplicate keys in plan files, folders named like models, NaN and
memory in `diff`, and plans that select by what a checkpoint cannot tell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

from paramgroups.config import read_plan_file
from paramgroups.errors import ConfigError
from paramgroups.snapshots import max_abs_diff

from conftest import one_line_error, run_cli as run


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module of model factories, importable as ``badinput_factories:NAME``."""
    (tmp_path / "badinput_factories.py").write_text(textwrap.dedent("""
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(10, 4)
                self.norm = nn.LayerNorm(4)
                self.proj = nn.Linear(4, 4)
                self.head = nn.Linear(4, 10, bias=False)

        def tiny():
            return Tiny()

        def lazy():
            return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("badinput_factories", None)
    return tmp_path


# -- models ------------------------------------------------------------------------------


def test_uninitialized_lazy_module_is_bad_input(capsys, factories):
    err = one_line_error(*run(capsys, "inspect", "badinput_factories:lazy"))
    assert "'badinput_factories:lazy' has uninitialized lazy modules ('0.weight' has no shape yet)" in err


def test_folder_named_like_a_model_does_not_shadow_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet18").mkdir()
    code, out, err = run(capsys, "inspect", "resnet18", "--format", "json")
    assert (code, err) == (0, "")
    assert [p["name"] for p in json.loads(out)["parameters"]][-2:] == ["fc.weight", "fc.bias"]
    err = one_line_error(*run(capsys, "inspect", "./resnet18"))
    assert err == "paramgroups: error: resnet18: is a directory, not a checkpoint\n"
    # a file whose bare name is no model name is still a checkpoint
    torch.save({"w": torch.zeros(2, 3)}, tmp_path / "mynet")
    code, out, err = run(capsys, "inspect", "mynet", "--format", "json")
    assert (code, err) == (0, "")
    assert [(p["name"], p["shape"]) for p in json.loads(out)["parameters"]] == [("w", [2, 3])]


@pytest.mark.parametrize("name, content, says", [
    ("config.json", {"n_layer": 2}, "not a checkpoint but a text file"),  # no model_type: no HF config
    ("plan.pt", {"rules": [{"match": "fc", "lr": 0.1}]}, "not a checkpoint but a text file"),
])
def test_json_file_passed_as_checkpoint(capsys, tmp_path, name, content, says):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    err = one_line_error(*run(capsys, "inspect", path))
    assert err.startswith(f"paramgroups: error: {path}: {says}")
    err = one_line_error(*run(capsys, "diff", path, path))
    assert says in err


def test_diff_of_a_sharded_checkpoints_index_names_the_shards(capsys, tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a.weight": "m-1.safetensors"}}))
    err = one_line_error(*run(capsys, "diff", index, index))
    assert err == (f"paramgroups: error: {index}: not a checkpoint but the index of a sharded "
                   f"checkpoint: compare its shard files (the .safetensors it lists) one by one\n")


# -- optimizers --------------------------------------------------------------------------


def test_optimizer_whose_lr_defaults_to_none(capsys, tmp_path):
    err = one_line_error(*run(capsys, "inspect", "resnet18", "--optimizer",
                              "transformers.optimization:Adafactor"))
    assert "optimizer Adafactor has no default lr" in err
    assert "relative_step: false" in err
    plan = tmp_path / "ada.yaml"
    plan.write_text("optimizer: transformers.optimization:Adafactor\nlr: 0.001\nrelative_step: false\n")
    code, out, err = run(capsys, "inspect", "resnet18", "--rules", plan, "--format", "json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["optimizer"] == "Adafactor" and report["problems"] == []
    assert {g["lr"] for g in report["groups"]} == {0.001}


# -- plan files --------------------------------------------------------------------------


def test_plot_with_unknown_image_format(capsys, tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text("{}")
    err = one_line_error(*run(capsys, "schedule", "--rules", plan, "--epochs", "2",
                              "--plot", tmp_path / "curves.xyz"))
    assert "curves.xyz" in err
    assert not (tmp_path / "curves.xyz").exists()


@pytest.mark.parametrize("device, suffix", [("/dev/zero", ".yaml"), ("/dev/urandom", ".json")])
def test_endless_rules_stream_is_capped(capsys, tmp_path, device, suffix):
    link = tmp_path / f"endless{suffix}"
    link.symlink_to(device)
    err = one_line_error(*run(capsys, "inspect", "resnet18", "--rules", link))
    assert err == (f"paramgroups: error: {link}: larger than 16 MiB, stopped reading: a plan "
                   f"file is a few KB (is this the right file?)\n")


@pytest.mark.parametrize("name, text, line, first", [
    ("top.yaml", "lr: 0.1\nlr: 0.2\n", 2, 1),
    ("rule.yaml", "rules:\n  - match: fc\n    lr: 0.1\n    lr: 0.2\n", 4, 3),
    ("top.json", '{"lr": 0.1,\n "lr": 0.2}', 2, 1),
    ("rule.json", '{"rules": [{"match": "fc", "x": "a\\"}{:", "lr": 0.1},\n'
                  '           {"match": "fc",\n\t"lr": 0.2, "lr": 1}]}', 3, 3),
])
def test_duplicate_keys_are_errors_naming_key_and_line(capsys, tmp_path, name, text, line, first):
    path = tmp_path / name
    path.write_text(text)
    kind = name.rsplit(".", 1)[1].upper()
    with pytest.raises(ConfigError) as exc:
        read_plan_file(path)
    assert str(exc.value) == (f"{path}:{line}: malformed {kind}: duplicate key 'lr' (first on line "
                              f"{first}): a key may appear once per mapping (the last one would "
                              f"win silently)")
    err = one_line_error(*run(capsys, "inspect", "resnet18", "--rules", path))
    assert err == f"paramgroups: error: {exc.value}\n"


# -- diff --------------------------------------------------------------------------------


def test_diff_nan_in_the_same_place_is_unchanged(capsys, tmp_path):
    nan = float("nan")
    a = {"same": torch.tensor([1.0, nan, float("inf")]), "moved": torch.tensor([nan, 2.0]),
         "appeared": torch.tensor([0.0, 1.0])}
    b = {"same": torch.tensor([1.0, nan, float("inf")]), "moved": torch.tensor([nan, 2.5]),
         "appeared": torch.tensor([0.0, nan])}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    code, out, err = run(capsys, "diff", tmp_path / "a.pt", tmp_path / "b.pt")
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()[2:-1]]
    assert rows == [["moved", "0.5"], ["appeared", "nan"]]
    assert out.splitlines()[-1] == "2 of 3 tensors changed"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64, torch.int32, torch.bool])
def test_max_abs_diff_in_chunks_equals_whole_tensor_reference(monkeypatch, dtype):
    monkeypatch.setattr("paramgroups.snapshots.CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(5, 11, generator=g) * 10).to(dtype)
    b = a.clone()
    idx = [3, 40, 54]
    b.view(-1)[idx] = ~a.view(-1)[idx] if dtype == torch.bool else (torch.randn(3, generator=g) * 10).to(dtype)
    if dtype.is_complex:
        ref = (a.to(torch.complex128) - b.to(torch.complex128)).abs().max().item()
    elif dtype.is_floating_point:
        ref = (a.double() - b.double()).abs().max().item()
    else:
        ref = (a.to(torch.int64) - b.to(torch.int64)).abs().max().item()
    assert ref > 0
    assert max_abs_diff(a, b) == ref
    assert max_abs_diff(a, a.clone()) == 0.0


@pytest.mark.slow
def test_max_abs_diff_of_a_large_tensor_needs_little_memory():
    # 64M float32 elements: comparing them whole in double precision needs 2 GB of temporaries
    script = textwrap.dedent("""
        import resource, torch
        from paramgroups.snapshots import max_abs_diff
        n = 64 * 2**20
        a = torch.zeros(1).expand(n)           # no storage of its own: the copies are all
        b = torch.ones(1).expand(n)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d = max_abs_diff(a, b)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(d, grown // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    diff, grown_mb = out.split()
    assert float(diff) == 1.0
    assert int(grown_mb) < 128


# -- checkpoints audited with plans that need the model ----------------------------------


@pytest.fixture
def tiny_ckpt(tmp_path, factories):
    import badinput_factories

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(badinput_factories.tiny().state_dict(), path)
    return path


def _plan(tmp_path, text: str, name: str = "plan.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, says", [
    ("rules:\n  - kinds: embedding\n    weight_decay: 0.0\n",
     "rule 0: selects by kinds ['embedding'], which a checkpoint cannot tell (is 'emb.weight' an embedding?)"),
    ("rules:\n  - match: proj\n  - kinds: norm\n    lr: 0.5\n",
     "rule 1: selects by kinds ['norm'], which a checkpoint cannot tell (is 'norm.weight' a norm parameter?)"),
    ("rules:\n  - kinds: matrix\n    optimizer: muon\n", "rule 0: selects by kinds ['matrix'], which a "
     "checkpoint cannot tell (is 'emb.weight' a hidden matrix (not the output layer)?)"),
    ("rules:\n  - kinds: head\n    lr: 0.5\n",
     "rule 0: selects by kinds ['head'], which a checkpoint cannot tell (is 'emb.weight' part of the output layer?)"),
    ("rules:\n  - modules: Linear\n    lr: 0.5\n",
     "rule 0: selects by modules ['Linear'], which a checkpoint cannot tell (the class of the layer "
     "holding 'emb.weight')"),
    ("no_decay: true\nweight_decay: 0.1\n",
     "no_decay: selects by kinds ['bias', 'norm', 'ndim<=1', 'embedding'], which a checkpoint cannot "
     "tell (is 'emb.weight' an embedding?)"),
    ("norm_trainable: true\n",
     "norm_trainable: needs to know the norm layers, which a checkpoint cannot tell (is 'norm.weight' "
     "a norm parameter?)"),
])
def test_checkpoint_audit_refuses_rules_it_cannot_decide(capsys, tmp_path, tiny_ckpt, text, says):
    plan = _plan(tmp_path, text)
    for command in ("inspect", "check"):
        err = one_line_error(*run(capsys, command, tiny_ckpt, "--rules", plan))
        assert says in err
        assert err.endswith("audit the model itself instead (its name, or a package.module:factory)\n")
    code, out, err = run(capsys, "inspect", "badinput_factories:tiny", "--rules", plan)
    assert (code, err) == (0, "")


def test_diff_refuses_freezing_it_cannot_decide_and_takes_model(capsys, tmp_path, tiny_ckpt):
    plan = _plan(tmp_path, "rules:\n  - kinds: embedding\n    freeze: true\n")
    err = one_line_error(*run(capsys, "diff", tiny_ckpt, tiny_ckpt, "--rules", plan))
    assert err == (f"paramgroups: error: {plan}:2: rule 0: selects by kinds ['embedding'], which a "
                   f"checkpoint cannot tell (is 'emb.weight' an embedding?): pass --model NAME, the "
                   f"model the checkpoints were saved from\n")
    after = tmp_path / "after.pt"
    state = torch.load(tiny_ckpt, weights_only=True)
    state["emb.weight"] += 1
    torch.save(state, after)
    code, out, err = run(capsys, "diff", tiny_ckpt, after, "--rules", plan, "--model", "badinput_factories:tiny")
    assert (code, err) == (1, "")
    assert out.splitlines()[2].split() == ["emb.weight", "1", "FROZEN"]


def test_diff_ignores_settings_that_do_not_freeze(capsys, tmp_path, tiny_ckpt):
    # no_decay's kinds cannot be told from the checkpoint, but they decide no frozen state
    plan = _plan(tmp_path, "no_decay: true\nrules:\n  - match: head\n    freeze: true\n")
    code, out, err = run(capsys, "diff", tiny_ckpt, tiny_ckpt, "--rules", plan)
    assert (code, err) == (0, "")
    assert out == "0 of 6 tensors changed; 0 frozen tensor(s) moved\n"
    # a rule that would match nothing on the checkpoint only for want of classes is named so
    plan = _plan(tmp_path, "rules:\n  - kinds: norm\n    lr: 0.5\n", "norm.yaml")
    err = one_line_error(*run(capsys, "diff", tiny_ckpt, tiny_ckpt, "--rules", plan))
    assert "rule 0: selects by kinds ['norm'], which a checkpoint cannot tell" in err


def test_checkpoint_refuses_only_what_it_cannot_tell(capsys, tmp_path, tiny_ckpt):
    # an optional rule still changes values where it matches
    plan = _plan(tmp_path, "rules:\n  - kinds: embedding\n    optional: true\n    lr: 0.5\n", "opt.yaml")
    err = one_line_error(*run(capsys, "inspect", tiny_ckpt, "--rules", plan))
    assert "rule 0: selects by kinds ['embedding']" in err
    # BatchNorm layers keep running statistics and fc has a bias: nothing is left to guess,
    # and the checkpoint audits exactly like the model
    ckpt = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    plan = _plan(tmp_path, "no_decay: true\nweight_decay: 0.05\nrules:\n  - kinds: norm\n    lr_mult: 0.1\n")
    rows = []
    for model in (ckpt, "resnet18"):
        code, out, err = run(capsys, "inspect", model, "--rules", plan, "--format", "json")
        assert (code, err) == (0, "")
        rows.append([(p["name"], p["lr"], p["weight_decay"], p["trainable"])
                     for p in json.loads(out)["parameters"]])
    assert rows[0] == rows[1]
    assert ("bn1.weight", pytest.approx(0.0001), 0.0, True) in rows[0]
    assert ("fc.weight", 0.001, 0.05, True) in rows[0]

