"""The command line, mostly in-process through ``main`` and capsys: outputs, exit codes and
one-line errors; subprocesses check the console script, ``python -m paramgroups`` and a source
checkout run with no install."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from paramgroups import audit

from conftest import audit_json, one_line_error, run_cli as run

RESNET18_NUMEL = 11_689_512
JSON_TOP = {"model", "optimizer", "implementation", "lr_at", "optimizers", "parameters", "groups",
            "totals", "problems"}
JSON_PARAM = {"name", "aliases", "shape", "numel", "dtype", "module", "kinds", "group", "optimizer", "base_lr", "lr",
              "weight_decay", "trainable", "frozen_by", "rules", "layer", "lr_scale", "stats"}
JSON_GROUP = {"index", "name", "optimizer", "params", "numel", "base_lr", "lr", "weight_decay", "options"}
JSON_TOTALS = {"params", "numel", "trainable", "frozen", "optimizer_state_bytes"}
CSV_HEADER = "name,shape,numel,module,group,base_lr,lr,weight_decay,trainable,rules"

# The README's example plan; YAML and JSON are dumped from PLAN, TOML is written out.
PLAN = {"optimizer": "sgd", "lr": 0.001, "weight_decay": 0.0001, "momentum": 0.9,
        "rules": [{"match": ["conv1", "bn1"], "freeze": True}, {"match": "layer*", "lr": 0.001},
                  {"match": "fc", "lr": 0.01}, {"kinds": ["bias", "norm"], "weight_decay": 0}]}
PLAN_TOML = """\
optimizer = "sgd"
lr = 0.001
weight_decay = 0.0001
momentum = 0.9
[[rules]]
match = ["conv1", "bn1"]
freeze = true
[[rules]]
match = "layer*"
lr = 0.001
[[rules]]
match = "fc"
lr = 0.01
[[rules]]
kinds = ["bias", "norm"]
weight_decay = 0
"""
FREEZE_STEM = "rules:\n  - match: [conv1, bn1]\n    freeze: true\n"


@pytest.fixture(scope="module")
def expected(resnet18_meta):
    """Names, shapes and numels straight from torchvision's resnet18."""
    return [(n, list(p.shape), p.numel()) for n, p in resnet18_meta.named_parameters()]


@pytest.fixture
def base_audit(capsys) -> dict:
    return audit_json(capsys, "resnet18")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    import torchvision
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ckpt")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    files = {"state_dict.pt": sd, "training.pt": {"model": sd, "epoch": 3},
             "lightning.ckpt": {"state_dict": sd, "epoch": 3, "global_step": 10}}
    for name, obj in files.items():
        torch.save(obj, root / name)
    save_file(sd, str(root / "weights.safetensors"))
    return {name: root / name for name in [*files, "weights.safetensors"]}


# -- inspect -------------------------------------------------------------------------------


def test_inspect_table(capsys):
    rc, out, err = run(capsys, "inspect", "resnet18")
    assert (rc, err) == (0, "")
    assert out.splitlines()[0].split() == ["name", "shape", "numel", "module", "group", "base", "lr",
                                           "lr@step0", "wd", "trainable", "rules"]
    assert re.search(r"^fc\.weight\s+1000x512\s+512,000\s+Linear\s+0\s+0\.001\s+0\.001\s+0\s+yes", out, re.M)
    assert max(len(line) for line in out.splitlines()) <= 120
    assert re.search(r"^numel\s+11,689,512$", out, re.M)
    assert re.search(r"^parameters\s+62$", out, re.M)


def test_inspect_json_contract(base_audit, expected):
    a = base_audit
    assert set(a) == JSON_TOP
    assert (a["model"], a["optimizer"], a["problems"]) == ("resnet18", "SGD", [])
    assert len(a["parameters"]) == 62
    assert all(set(p) == JSON_PARAM for p in a["parameters"])
    assert all(set(g) == JSON_GROUP for g in a["groups"])
    assert set(a["totals"]) == JSON_TOTALS
    assert a["totals"] == {"params": 62, "numel": RESNET18_NUMEL, "trainable": RESNET18_NUMEL,
                           "frozen": 0, "optimizer_state_bytes": 0}
    assert [(p["name"], p["shape"], p["numel"]) for p in a["parameters"]] == expected
    assert [(g["index"], g["params"], g["numel"]) for g in a["groups"]] == [(0, 62, RESNET18_NUMEL)]


def test_inspect_csv(capsys, expected):
    rc, out, err = run(capsys, "inspect", "resnet18", "--format", "csv")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 63
    assert lines[0] == CSV_HEADER
    assert lines[1] == "conv1.weight,64x3x7x7,9408,Conv2d,0,0.001,0.001,0,yes,"
    assert [line.split(",")[0] for line in lines[1:]] == [n for n, _, _ in expected]


def test_inspect_markdown_and_grid(capsys):
    rc, out, err = run(capsys, "inspect", "resnet18", "--format", "markdown")
    assert (rc, err) == (0, "")
    first, rule = out.splitlines()[:2]
    assert first.startswith("| name") and first.endswith("|")
    assert re.fullmatch(r"\|[-|:]+\|", rule)
    assert sum(1 for line in out.splitlines() if line.startswith("| conv1.weight ")) == 1
    rc, out, err = run(capsys, "inspect", "resnet18", "--tablefmt", "grid")
    assert (rc, err) == (0, "")
    assert out.splitlines()[0].startswith("+---") and "| name " in out.splitlines()[1]


def test_inspect_only_frozen_and_trainable(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text(FREEZE_STEM)
    a = audit_json(capsys, "resnet18", "--rules", str(tmp_path / "p.yaml"), "--only", "frozen")
    assert [p["name"] for p in a["parameters"]] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert all(p["trainable"] is False and p["rules"] == [0] for p in a["parameters"])
    assert a["totals"]["frozen"] == 9408 + 128
    a = audit_json(capsys, "resnet18", "--rules", str(tmp_path / "p.yaml"), "--only", "trainable")
    assert len(a["parameters"]) == 59


@pytest.mark.parametrize("pattern", ["layer4.**", "layer4", "re:layer4\\..*"])
def test_inspect_match(capsys, expected, pattern):
    a = audit_json(capsys, "resnet18", "--match", pattern)
    want = [n for n, _, _ in expected if n.startswith("layer4.")]
    assert [p["name"] for p in a["parameters"]] == want
    assert len(want) == 15


def test_inspect_depth_1(capsys, expected):
    a = audit_json(capsys, "resnet18", "--depth", "1")
    sums: dict[str, int] = {}
    for name, _, numel in expected:
        sums[name.split(".")[0]] = sums.get(name.split(".")[0], 0) + numel
    rows = [(p["name"], p["numel"]) for p in a["parameters"]]
    assert rows == list(sums.items())
    assert [r[0] for r in rows] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert sum(n for _, n in rows) == RESNET18_NUMEL


def test_collapsed_rows_have_no_single_shape(resnet18_meta):
    rows = {r["name"]: r for r in audit(resnet18_meta).collapse(1).parameters}  # the rows --depth 1 prints
    assert rows["bn1"]["shape"] == "mixed" and rows["bn1"]["numel"] == 128
    assert rows["conv1"]["shape"] == [64, 3, 7, 7]


def test_inspect_num_classes_optimizer_lr(capsys):
    a = audit_json(capsys, "resnet18", "--num-classes", "10")
    shapes = {p["name"]: p["shape"] for p in a["parameters"]}
    assert shapes["fc.weight"] == [10, 512] and shapes["fc.bias"] == [10]
    assert a["totals"]["numel"] == RESNET18_NUMEL - 990 * 513
    a = audit_json(capsys, "resnet18", "--optimizer", "adamw")
    assert a["optimizer"] == "AdamW"
    assert a["totals"]["optimizer_state_bytes"] == 2 * 4 * RESNET18_NUMEL  # exp_avg, exp_avg_sq
    a = audit_json(capsys, "resnet18", "--lr", "0.5")
    assert {p["lr"] for p in a["parameters"]} == {0.5}
    assert [g["lr"] for g in a["groups"]] == [0.5]


def test_rules_files_yaml_toml_json_agree(capsys, tmp_path):
    audits = []
    for name, text in [("plan.yaml", yaml.safe_dump(PLAN)), ("plan.toml", PLAN_TOML),
                       ("plan.json", json.dumps(PLAN, indent=2))]:
        (tmp_path / name).write_text(text)
        audits.append(audit_json(capsys, "resnet18", "--rules", str(tmp_path / name)))
    assert audits[0] == audits[1] == audits[2]
    a = audits[0]
    rows = {p["name"]: p for p in a["parameters"]}
    assert (rows["conv1.weight"]["trainable"], rows["conv1.weight"]["rules"]) == (False, [0])
    assert (rows["bn1.bias"]["trainable"], rows["bn1.bias"]["rules"]) == (False, [0, 3])
    fc_b = rows["fc.bias"]
    assert (fc_b["lr"], fc_b["weight_decay"], fc_b["rules"]) == (0.01, 0.0, [2, 3])
    l4 = rows["layer4.1.conv2.weight"]
    assert (l4["lr"], l4["weight_decay"], l4["rules"]) == (0.001, 0.0001, [1])
    trainable = RESNET18_NUMEL - 9408 - 128
    assert a["totals"] == {"params": 62, "numel": RESNET18_NUMEL, "trainable": trainable,
                           "frozen": 9536, "optimizer_state_bytes": 4 * trainable}


# -- checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["state_dict.pt", "training.pt", "lightning.ckpt",
                                  "weights.safetensors"])
def test_inspect_checkpoint_matches_model(capsys, checkpoints, base_audit, name):
    a = audit_json(capsys, str(checkpoints[name]))
    got = [(p["name"], p["shape"], p["numel"], p["kinds"]) for p in a["parameters"]]
    want = [(p["name"], p["shape"], p["numel"], p["kinds"]) for p in base_audit["parameters"]]
    if name.endswith(".safetensors"):  # safetensors stores its keys sorted: order is lost
        got, want = sorted(got), sorted(want)
    assert got == want
    assert a["totals"] == base_audit["totals"]
    assert a["model"] == str(checkpoints[name])


# -- check ---------------------------------------------------------------------------------


def test_check_ok(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text(FREEZE_STEM)
    rc, out, err = run(capsys, "check", "resnet18", "--rules", str(tmp_path / "p.yaml"),
                       "--expect-frozen", "conv1", "--expect-frozen", "bn1",
                       "--expect-trainable", "fc", "--expect-trainable", "layer*")
    assert (rc, err) == (0, "")
    assert out == ("ok: 62 parameters in 2 groups, 9,536 of 11,689,512 elements frozen, "
                   "4 expectation(s) hold\n")


def test_check_failed_expectations(capsys, tmp_path, expected):
    (tmp_path / "p.yaml").write_text(FREEZE_STEM)
    rc, out, err = run(capsys, "check", "resnet18", "--rules", str(tmp_path / "p.yaml"),
                       "--expect-frozen", "layer1", "--expect-trainable", "bn1",
                       "--expect-frozen", "layer9")
    assert (rc, err) == (1, "")
    lines = out.splitlines()
    assert all(line.startswith("violation: ") for line in lines)
    layer1 = [n for n, _, _ in expected if n.startswith("layer1.")]
    assert lines == [  # one line per module that breaks an expectation, not one per tensor
        f"violation: layer1 ({len(layer1)} parameters) is trainable, expected frozen (by 'layer1')",
        "violation: expectation 'layer9' selects no parameter",
        "violation: bn1 (2 parameters) is frozen, expected trainable (by 'bn1')"]


def test_check_names_the_largest_modules_that_break_an_expectation(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("rules:\n  - match: [layer1.0, layer1.1.conv1]\n    freeze: true\n")
    rc, out, _ = run(capsys, "check", "resnet18", "--rules", str(tmp_path / "p.yaml"),
                     "--expect-frozen", "layer1")
    assert rc == 1
    assert out.splitlines() == [
        "violation: layer1.1.bn1 (2 parameters) is trainable, expected frozen (by 'layer1')",
        "violation: layer1.1.conv2 (1 parameter) is trainable, expected frozen (by 'layer1')",
        "violation: layer1.1.bn2 (2 parameters) is trainable, expected frozen (by 'layer1')"]


def test_check_at_an_epoch_sees_the_stages(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("rules:\n  - match: layer4\n    freeze: true\n"
                                     "stages:\n  - epoch: 3\n    unfreeze: layer4\n")
    args = ["check", "resnet18", "--rules", str(tmp_path / "p.yaml"), "--expect-trainable", "layer4"]
    rc, out, _ = run(capsys, *args, "--at", "2")
    assert rc == 1 and out.startswith("violation: layer4 (15 parameters) is frozen, expected trainable")
    rc, out, _ = run(capsys, *args, "--at", "3")
    assert rc == 0 and out.startswith("ok: 62 parameters")


def test_unmatched_rule_check_is_violation_inspect_is_error(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("rules:\n  - match: conv1\n    freeze: true\n  - match: layer5\n")
    rc, out, err = run(capsys, "check", "resnet18", "--rules", str(tmp_path / "p.yaml"))
    assert (rc, err) == (1, "")
    assert len(out.splitlines()) == 1
    assert out.startswith(f"violation: {tmp_path / 'p.yaml'}:4: rule 1: match 'layer5' matches no parameter")
    assert "closest names: layer4" in out
    rc, out, err = run(capsys, "inspect", "resnet18", "--rules", str(tmp_path / "p.yaml"))
    assert_one_line_error(rc, out, err, "rule 1: match 'layer5' matches no parameter")


def test_models_and_version(capsys):
    rc, out, _ = run(capsys, "models", "resnet1")
    assert rc == 0 and {"resnet18", "resnet101", "timm:resnet18"} <= set(out.splitlines())
    assert run(capsys, "--version")[:2] == (0, "paramgroups, version 0.1.0\n")


# -- plans whose optimizer cannot be built --------------------------------------------------


@pytest.mark.parametrize("text,word", [
    ("optimizer: lbfgs\nrules:\n  - match: fc\n    lr: 0.1\n", "LBFGS"),  # 2 groups; LBFGS takes 1
    ("optimizer: sgd\nmomentum: -1\n", "momentum"),  # torch.optim.SGD raises ValueError on it
], ids=["lbfgs-two-groups", "negative-momentum"])
def test_check_rejects_plan_whose_optimizer_fails(capsys, tmp_path, text, word):
    import torchvision

    from paramgroups import Plan
    from paramgroups.errors import OptimizerError

    (tmp_path / "p.yaml").write_text(text)
    with torch.device("meta"):
        model = torchvision.models.resnet18(weights=None)
    with pytest.raises(OptimizerError):  # the library refuses to build this plan's optimizer...
        Plan.load(tmp_path / "p.yaml").optimizer(model)
    rc, out, err = run(capsys, "check", "resnet18", "--rules", str(tmp_path / "p.yaml"))
    assert rc in (1, 2), out  # ...so the pre-training check must not say "ok"
    assert word in out + err


def test_yaml_scientific_notation_is_a_number(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 1e-3\nrules:\n  - match: fc\n    lr: 3e-4\n")
    (tmp_path / "p.json").write_text('{"lr": 1e-3, "rules": [{"match": "fc", "lr": 3e-4}]}')
    from_json = audit_json(capsys, "resnet18", "--rules", str(tmp_path / "p.json"))
    assert {p["lr"] for p in from_json["parameters"]} == {0.001, 0.0003}
    assert audit_json(capsys, "resnet18", "--rules", str(tmp_path / "p.yaml")) == from_json


# -- bad input -----------------------------------------------------------------------------

R = ("inspect", "resnet18", "--rules")
BAD = [  # id, argv, files to write (str text, bytes, or None for a directory), substrings
    ("unknown-model", ("inspect", "resnet181"), {}, ["unknown model 'resnet181'", "did you mean resnet18,"]),
    ("unknown-tv-model", ("inspect", "torchvision:resnet181"), {}, ["did you mean resnet18,"]),
    ("unknown-timm-model", ("inspect", "timm:nope_net"), {}, ["unknown timm model 'nope_net'"]),
    ("yaml-malformed", (*R, "bad.yaml"),
     {"bad.yaml": "rules:\n  - match: conv1\n   freeze: true\n  - match: fc\n"},
     ["bad.yaml:3: malformed YAML"]),
    ("toml-malformed", (*R, "bad.toml"), {"bad.toml": 'lr = 0.1\n[[rules]]\nmatch = "fc"\nlr = = 2\n'},
     ["bad.toml:4: malformed TOML"]),
    ("json-malformed", (*R, "bad.json"),
     {"bad.json": '{\n  "lr": 0.1,\n  "rules": [\n    {"match": "fc" "lr": 2}\n  ]\n}\n'},
     ["bad.json:4: malformed JSON"]),
    ("yaml-unknown-field", (*R, "p.yaml"),
     {"p.yaml": "rules:\n  - match: conv1\n    freeze: true\n  - match: fc\n    lr_mul: 2\n"},
     ["p.yaml:5: rule 1: unknown field 'lr_mul'", "did you mean 'lr_mult'?"]),
    ("toml-unknown-field", (*R, "p.toml"),
     {"p.toml": 'lr = 0.1\n[[rules]]\nmatch = "conv1"\nfreeze = true\n[[rules]]\nmatch = "fc"\nlr_mul = 2\n'},
     ["p.toml:7: rule 1: unknown field 'lr_mul'", "did you mean 'lr_mult'?"]),
    ("json-unknown-field", (*R, "p.json"),
     {"p.json": '{"rules": [\n {"match": "conv1", "freeze": true},\n {"match": "fc",\n  "lr_mul": 2}]}\n'},
     ["p.json:4: rule 1: unknown field 'lr_mul'", "did you mean 'lr_mult'?"]),
    ("invalid-regex", (*R, "p.yaml"), {"p.yaml": 'rules:\n  - match: "re:("\n'},
     ["p.yaml:2: rule 0: invalid regex '('"]),
    ("unmatched-rule", (*R, "p.yaml"), {"p.yaml": "rules:\n  - match: layer5\n"},
     ["rule 0: match 'layer5' matches no parameter", "closest names: layer4, layer3, layer2"]),
    ("negative-lr-cli", ("inspect", "resnet18", "--lr", "-1"), {}, ["lr must be a finite number >= 0"]),
    ("negative-wd-cli", ("inspect", "resnet18", "--weight-decay", "-1"), {},
     ["weight_decay must be a finite number >= 0"]),
    ("negative-lr-file", (*R, "p.yaml"), {"p.yaml": "lr: -1\n"},
     ["p.yaml:1: lr must be a finite number >= 0, got -1"]),
    ("string-lr-rule", (*R, "p.yaml"), {"p.yaml": 'rules:\n  - match: fc\n    lr: "abc"\n'},
     ["p.yaml:2: rule 0: lr must be a number, got 'abc'"]),
    ("string-lr-toml", (*R, "p.toml"), {"p.toml": 'lr = "abc"\n'}, ["p.toml:1: lr must be a number, got 'abc'"]),
    ("string-lr-cli", ("inspect", "resnet18", "--lr", "abc"), {}, ["'--lr'", "'abc' is not a valid float"]),
    ("sgd-betas", (*R, "p.yaml"), {"p.yaml": "optimizer: sgd\nbetas: [0.9, 0.99]\n"},
     ["p.yaml:2: unknown field 'betas'", "option of SGD"]),
    ("unknown-optimizer-cli", ("inspect", "resnet18", "--optimizer", "adamx"), {},
     ["unknown optimizer 'adamx'; did you mean adamax"]),
    ("unknown-optimizer-file", (*R, "p.yaml"), {"p.yaml": "optimizer: adamx\n"},
     ["p.yaml:1: unknown optimizer 'adamx'"]),
    ("missing-rules", (*R, "missing.yaml"), {}, ["missing.yaml: no such file"]),
    ("dir-rules", (*R, "dir.yaml"), {"dir.yaml": None}, ["dir.yaml: is a directory"]),
    ("dir-checkpoint", ("inspect", "dir.pt"), {"dir.pt": None}, ["dir.pt: is a directory, not a checkpoint"]),
    ("missing-checkpoint", ("inspect", "missing.pt"), {}, ["missing.pt: no such file"]),
    ("corrupt-pt", ("inspect", "corrupt.pt"), {"corrupt.pt": random.Random(0).randbytes(512)},
     ["corrupt.pt: ", "checkpoint"]),
    ("corrupt-zip-pt", ("inspect", "zip.pt"), {"zip.pt": b"PK\x03\x04" + bytes(100)},
     ["zip.pt: not a readable PyTorch checkpoint"]),
    ("corrupt-safetensors", ("inspect", "c.safetensors"), {"c.safetensors": random.Random(1).randbytes(512)},
     ["c.safetensors: not a valid safetensors file"]),
    ("empty-pt", ("inspect", "empty.pt"), {"empty.pt": b""}, ["empty.pt: not a readable PyTorch checkpoint"]),
    ("unknown-format", ("inspect", "resnet18", "--format", "xml"), {}, ["'--format'", "'xml'"]),
    ("unknown-tablefmt", ("inspect", "resnet18", "--tablefmt", "nope"), {}, ["unknown table format 'nope'"]),
    ("depth-0", ("inspect", "resnet18", "--depth", "0"), {}, ["'--depth'", "0 is not in the range x>=1"]),
    ("num-classes-0", ("inspect", "resnet18", "--num-classes", "0"), {}, ["'--num-classes'", "x>=1"]),
    ("unknown-option", ("inspect", "resnet18", "--bogus"), {}, ["No such option '--bogus'"]),
    ("missing-model", ("inspect",), {}, ["Missing argument 'MODEL'"]),
    ("unknown-command", ("frobnicate",), {}, ["No such command 'frobnicate'"]),
    ("unknown-kind", (*R, "p.yaml"), {"p.yaml": "rules:\n  - kinds: [biass]\n"},
     ["p.yaml:2: rule 0: unknown kind 'biass' (did you mean 'bias'?)"]),
    ("rule-not-mapping", (*R, "p.yaml"), {"p.yaml": "rules:\n  - conv1\n"},
     ["p.yaml:2: rule 0: a rule must be a mapping"]),
    ("rules-not-list", (*R, "p.yaml"), {"p.yaml": "rules:\n  match: conv1\n"},
     ["p.yaml:1: rules must be a list of rules, got dict"]),
    ("plan-is-list", (*R, "p.yaml"), {"p.yaml": "- match: conv1\n"},
     ["p.yaml: a plan must be a mapping of fields, got list"]),
    ("plan-extension", (*R, "plan.ini"), {"plan.ini": "lr = 1\n"}, ["plan.ini: unknown plan file type '.ini'"]),
    ("non-utf8", (*R, "latin.yaml"), {"latin.yaml": b'rules:\n  - match: "caf\xe9"\n'},
     ["latin.yaml: not UTF-8 text"]),
    ("bad-match-regex", ("inspect", "resnet18", "--match", "re:("), {}, ["invalid regex '('"]),
    ("bad-expect-regex", ("check", "resnet18", "--expect-frozen", "re:("), {}, ["invalid regex '('"]),
    ("check-unknown-model", ("check", "resnet181"), {}, ["unknown model 'resnet181'"]),
    ("bad-device", ("inspect", "resnet18", "--device", "bogus"), {}, ["invalid device 'bogus'"]),
    ("at-inf", ("inspect", "resnet18", "--at", "inf"), {}, ["finite"]),
    ("at-nan", ("inspect", "resnet18", "--at", "nan"), {}, ["finite"]),
]


def assert_one_line_error(rc: int, out: str, err: str, *substrings: str) -> None:
    err = one_line_error(rc, out, err)
    for s in substrings:
        assert s in err, (s, err)


@pytest.mark.parametrize("argv,files,substrings", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(capsys, tmp_path, monkeypatch, argv, files, substrings):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        if content is None:
            (tmp_path / name).mkdir()
        elif isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    assert_one_line_error(*run(capsys, *argv), *substrings)


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "in-state-dict"])
def test_unsafe_pickle_is_refused_and_not_executed(capsys, tmp_path, wrap):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = Evil()
    torch.save({"fc.weight": torch.zeros(2, 2), "x": evil} if wrap else evil, tmp_path / "evil.pt")
    assert not marker.exists()
    assert_one_line_error(*run(capsys, "inspect", str(tmp_path / "evil.pt")), "evil.pt: refused to load")
    assert not marker.exists()


def test_unreadable_rules_file(capsys, tmp_path):
    if os.geteuid() != 0:
        path = tmp_path / "secret.yaml"
        path.write_text("lr: 0.1\n")
        path.chmod(0)
        assert_one_line_error(*run(capsys, *R, str(path)), "secret.yaml: permission denied")
        path.chmod(0o644)
    else:  # root reads mode-000 files: use a path no one can read, a symlink loop
        loop = tmp_path / "loop.yaml"
        loop.symlink_to(loop)
        assert_one_line_error(*run(capsys, *R, str(loop)), "loop.yaml: cannot read")


def test_cli_overrides_are_named_in_errors(capsys, tmp_path):
    (tmp_path / "a.yaml").write_text("optimizer: sgd\nlr: 0.1\n")
    code, _, err = run(capsys, "inspect", "resnet18", "--rules", tmp_path / "a.yaml", "--lr", "-1")
    assert code == 2 and err.startswith("paramgroups: error: --lr: lr must be a finite number >= 0")
    code, _, err = run(capsys, "inspect", "resnet18", "--rules", tmp_path / "a.yaml", "--optimizer", "adamw2")
    assert code == 2 and err.startswith("paramgroups: error: --optimizer: unknown optimizer 'adamw2'")


def test_debug_shows_traceback(capsys):
    rc, out, err = run(capsys, "--debug", "inspect", "resnet181")
    assert (rc, out) == (2, "")
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("paramgroups: error: unknown model 'resnet181'")


# -- subprocesses --------------------------------------------------------------------------


def test_console_script_help_imports_no_torch():
    script = Path(sys.executable).with_name("paramgroups")
    assert script.exists(), script
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: paramgroups")
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "paramgroups.cli.main" in imported  # the profile did record the CLI's imports
    assert [m for m in imported if m == "torch" or m.startswith("torch.")] == []


@pytest.mark.slow  # a fresh interpreter imports torch
def test_python_m_inspect_json():
    proc = subprocess.run([sys.executable, "-m", "paramgroups", "inspect", "resnet18", "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    data = json.loads(proc.stdout)
    assert (len(data["parameters"]), data["totals"]["numel"]) == (62, RESNET18_NUMEL)


def test_source_checkout_runs_without_install(tmp_path):
    """From a copy of the repository root with no install, ``python -m paramgroups`` and
    ``import paramgroups.cli.main`` load the copy's own files (``cli/`` beside the package)."""
    root = Path(__file__).resolve().parents[1]
    for folder in ("paramgroups", "cli"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # -S: no site processing, so no .pth file installs this checkout (editable) into the run;
    # the dependencies still import from this interpreter's site-packages, after the copy.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *site.getsitepackages()])}
    probe = "import paramgroups, paramgroups.cli.main as m; print(paramgroups.__file__); print(m.__file__)"
    proc = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.split() == [str(tmp_path / "paramgroups" / "__init__.py"),
                                   str(tmp_path / "cli" / "main.py")]
    proc = subprocess.run([sys.executable, "-S", "-m", "paramgroups", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("Usage: paramgroups")
