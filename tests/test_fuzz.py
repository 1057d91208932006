"""Fuzzing plan files: a few hundred mutants of three valid plans (YAML, TOML, JSON).

Each variant is written to a file with its suffix and run two ways:

- the library: ``Plan.load`` -> ``resolve`` / ``param_groups`` on torchvision's ResNet-18 (meta
  device) -> ``optimizer`` + ``scheduler`` (stepped a few times) on a small CPU model with the
  same names. Every failure must be a ``ParamgroupsError`` whose message names the file;
- the CLI in-process: ``paramgroups inspect resnet18 --rules FILE`` exits 0 or 2 (never 3, an
  internal error), and on 2 prints exactly one line, ``paramgroups: error: ...``.

Variants are reproducible: variant ``fmt-k`` comes from ``random.Random(SEED + k)``. Mutations:
value types swapped (str/int/float/list/dict/null/bool), keys deleted, unknown / misspelt /
unicode keys added, huge numbers (1e308, 10**400), NaN and inf, empty lists and dicts, deep
nesting (1000+ levels, spliced in as text), truncation, random bytes, YAML specials (complex
keys, anchors, tags). The tests collect every failure and report them grouped by cause instead
of stopping at the first, so one run shows every distinct bug.

No test here measures seconds: each run counts the Python function calls it makes
(:func:`call_budget`) and stops at a fixed budget, so a runaway walk fails the same way on an
idle and on a busy machine, and fails instead of hanging.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import sys
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import yaml
from torch import nn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from conftest import run_cli
from paramgroups import Plan
from paramgroups.config import read_plan_file
from paramgroups.errors import ParamgroupsError

SEED = 20240607
PER_FORMAT = 100          # random variants per base format
CALL_BUDGET = 1_000_000   # Python calls per variant, per path; the heaviest takes ~125,000
SCHED_STEPS = 12


class OverBudget(BaseException):
    """Raised into the code under test when it makes more calls than its budget.

    A BaseException, so the ``except Exception`` handlers of the library and the CLI let it out.
    """


@contextmanager
def call_budget(limit: int) -> Iterator[Callable[[], int]]:
    """Count the Python function calls made inside the block; past ``limit``, raise OverBudget.

    Work, not seconds: the count is the same on an idle and on a busy machine, and a runaway
    loop (an alias expanded 10**9 times, a range of 10**8 names) stops at the limit.
    """
    calls = 0

    def count(frame, event, arg) -> None:  # global trace hook: one 'call' event per frame
        nonlocal calls
        calls += 1
        if calls > limit:
            raise OverBudget(f"more than {limit:,} Python calls")

    previous = sys.gettrace()
    sys.settrace(count)
    try:
        yield lambda: calls
    finally:
        sys.settrace(previous)

# -- the three valid plans -------------------------------------------------------------------

BASE_YAML = """\
# fine-tuning plan: frozen stem, small backbone LR, head group, staged thaw
optimizer: sgd
lr: 0.1
weight_decay: 0.0001
momentum: 0.9
nesterov: true
rules:
  - match: [conv1, bn1]
    freeze: true
  - match: "layer*"
    lr_mult: 0.1
  - match: ["layer{3,4}.**", "!layer4.1"]
    modules: "Conv*"
    weight_decay: 0.0005
  - match: fc
    lr: 0.01
    group: head
  - kinds: [bias, norm]
    weight_decay: 0
  - match: "re:layer1\\\\..*"
    optional: true
    dampening: 0
schedule:
  main: multistep
  milestones: [3, 6]
  gamma: 0.1
  warmup: 2
  warmup_lr: 0.01
stages:
  - epoch: 2
    unfreeze: bn1
  - epoch: 4
    unfreeze: conv1
    lr_mult: 0.5
    warmup: 1
"""

BASE_TOML = """\
optimizer = "adamw"
lr = 0.001
weight_decay = 0.05
betas = [0.9, 0.999]
eps = 1e-8
no_decay = true
layer_decay = 0.75
layers = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "**"]

[schedule]
main = "cosine"
total = 10
warmup = 1
warmup_start = 0.1
min_factor = 0.01

[[rules]]
match = "layer{1..2}"
freeze = true

[[rules]]
match = ["fc", "layer4.**"]
lr_mult = 2.0
group = "top"

[[rules]]
modules = ["BatchNorm*"]
kinds = "norm"
lr_mult = 0.5
optional = true

[[stages]]
epoch = 3
unfreeze = "layer2"
warmup = 1

[[stages]]
epoch = 5
unfreeze = ["layer1", "!layer1.0"]
lr_mult = 0.1
"""

BASE_JSON = json.dumps({
    "optimizer": "rmsprop", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.9, "alpha": 0.99,
    "centered": False, "bn": "train", "norm_trainable": True,
    "rules": [
        {"match": "**", "freeze": True},
        {"match": ["fc", "layer4"], "freeze": False, "lr_mult": 10},
        {"match": "re:layer[23]\\.0\\..*", "modules": ["*Norm*", "Conv2d"],
         "kinds": ["weight", "bias"], "weight_decay": 1e-4, "optional": True},
    ],
    "schedule": {"main": "onecycle", "total": 50, "unit": "step", "max_factor": 1.0,
                 "pct_start": 0.3, "div_factor": 10, "final_div_factor": 100, "anneal": "cos"},
    "stages": [
        {"step": 10, "unfreeze": "layer3", "warmup": 5, "warmup_start": 0.1},
        {"step": 20, "unfreeze": "**"},
        {"step": 30, "freeze": "layer3"},
    ],
}, indent=2)

BASES = {"yaml": BASE_YAML, "toml": BASE_TOML, "json": BASE_JSON}
SUFFIX = {"yaml": ".yaml", "toml": ".toml", "json": ".json"}


# -- models ---------------------------------------------------------------------------------

class TinyBlock(nn.Module):
    def __init__(self, c: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)


class TinyResNet(nn.Module):
    """ResNet-18's names (conv1, bn1, layer1-4 of two blocks, fc) at a few hundred elements."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(TinyBlock(), TinyBlock()))
        self.fc = nn.Linear(2, 3)


@pytest.fixture(scope="module")
def resnet18_meta() -> nn.Module:
    import torchvision

    with torch.device("meta"):
        return torchvision.models.resnet18(weights=None)


# -- serializers ----------------------------------------------------------------------------

def _toml_key(key) -> str:
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v if i is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return json.dumps(str(v))


def toml_dumps(data: dict) -> str:
    """TOML for plain data: sections for tables and arrays of tables; null values are dropped."""
    head, tail = [], []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict) and value:
            tail.append(f"\n[{_toml_key(key)}]")
            tail += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        elif isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
            for item in value:
                tail.append(f"\n[[{_toml_key(key)}]]")
                tail += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items() if v is not None]
        else:
            head.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(head + tail) + "\n"


def parse(fmt: str, text: str):
    if fmt == "yaml":
        return yaml.safe_load(text)
    if fmt == "toml":
        return tomllib.loads(text)
    return json.loads(text)


def dumps(fmt: str, data, rng: random.Random) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(data, allow_unicode=rng.random() < 0.7, sort_keys=False,
                              default_flow_style=rng.choice([False, None]))
    if fmt == "toml":
        return toml_dumps(data)
    return json.dumps(data, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)


def deep_text(fmt: str, kind: str, depth: int) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    opener = {"yaml": "{a: ", "json": '{"a": ', "toml": "{a = "}[fmt]
    return opener * depth + "1" + "}" * depth


# -- the mutator ----------------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")
HUGE_INT = 10 ** 400
STRINGS = ["", " ", "x", "fc", "layer*", "**", "!fc", "!", "re:(", "re:.*", "{0..3}", "{a,b",
           "{0..99999999}", "é", "漢字", "🔥 fire", "\x00", "line\nbreak", "'\"", "sgd",
           "adamw", "lbfgs", "timm:lamb", "torch.optim:SGD", ":", "os:getcwd", "cosine", "step",
           "plateau", "onecycle", "freeze", "train", "bias", "norm", "ndim<=1", "1e-3", "nan",
           "-1", "true", "null", "~", "a" * 300, "layer4.0.conv1.weight", "blocks.{i}"]
NUMBERS = [0, 1, -1, 2, 3, 4, 7, 100, 2 ** 31, 2 ** 63, -(2 ** 63), HUGE_INT, -HUGE_INT, 0.0,
           -0.0, 0.5, -0.5, 0.25, 0.999, 1.5, 1e-9, 1e-300, 5e-324, 1e308, -1e308, INF, -INF, NAN]
NUDGES = [0, 1, 2, 3, 4, 5, 0.5, 0.25, 0.3, 1e-9, 0.999, 1.0, 10, 0.0]
VOCAB = ["rules", "lr", "weight_decay", "optimizer", "schedule", "layer_decay", "layers",
         "no_decay", "stages", "bn", "norm_trainable", "match", "modules", "kinds", "optional",
         "lr_mult", "wd_mult", "freeze", "group", "main", "total", "unit", "warmup",
         "warmup_start", "warmup_lr", "warmup_shape", "step_size", "gamma", "milestones",
         "min_lr", "min_factor", "power", "restarts", "max_factor", "pct_start", "div_factor",
         "final_div_factor", "anneal", "cycle_momentum", "mode", "patience", "threshold",
         "cooldown", "epoch", "step", "unfreeze", "momentum", "betas", "eps", "nesterov",
         "dampening", "foreach", "fused", "maximize", "capturable", "differentiable", "amsgrad",
         "alpha", "centered", "lr_decay", "initial_accumulator_value", "params",
         "colour", "lrr", "learning_rate", "Lr", "ümlaut", "🔥", "", " ", "re:(", "__class__",
         "1", "a.b", "rules ", "période"]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["str", "num", "num", "bool", "null", "list", "dict", "empty", "deep"])
    if kind == "str":
        return rng.choice(STRINGS)
    if kind == "num":
        return rng.choice(NUMBERS)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "empty":
        return rng.choice([[], {}, ""])
    if kind == "deep":
        return f"__DEEP_{rng.choice(['list', 'dict'])}_{rng.choice([1000, 1000, 5000])}__"
    if depth >= 2:
        return rng.choice(STRINGS)
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(VOCAB): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def slots(data, path=()):
    """Every (container, key, path) in ``data``: where a value can be replaced or deleted."""
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((data, k, path + (k,)))
            out += slots(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.append((data, i, path + (i,)))
            out += slots(v, path + (i,))
    return out


def containers(data, kind):
    found = [data] if isinstance(data, kind) else []
    if isinstance(data, dict):
        for v in data.values():
            found += containers(v, kind)
    elif isinstance(data, list):
        for v in data:
            found += containers(v, kind)
    return found


def mutate_structure(fmt: str, data, rng: random.Random, log: list[str]):
    """One structural mutation of parsed plan data (in place where possible); returns the data."""
    op = rng.choice(["retype", "retype", "delete", "add_key", "empty", "extreme", "unicode",
                     "nudge", "nudge", "dup", "swap", "root"])
    places = slots(data)
    if op == "root" and fmt != "toml":
        data = random_value(rng)
        log.append(f"root := {data!r:.60}")
        return data
    if op == "add_key" or not places:
        target = rng.choice(containers(data, dict) or [data])
        if not isinstance(target, dict):
            return data
        key = rng.choice(VOCAB)
        if fmt == "yaml" and rng.random() < 0.1:
            key = rng.choice([1, None, True, 2.5])
        target[key] = random_value(rng)
        log.append(f"add {key!r} = {target[key]!r:.60}")
        return data
    parent, key, path = rng.choice(places)
    where = ".".join(map(str, path))
    if op == "delete":
        del parent[key]
        log.append(f"delete {where}")
    elif op == "retype":
        parent[key] = random_value(rng)
        log.append(f"{where} := {parent[key]!r:.60}")
    elif op == "empty":
        parent[key] = rng.choice([[], {}, "", 0])
        log.append(f"{where} := {parent[key]!r}")
    elif op == "extreme":
        parent[key] = rng.choice([HUGE_INT, -HUGE_INT, 1e308, -1e308, INF, -INF, NAN, 2 ** 63, -1])
        log.append(f"{where} := {parent[key]!r:.20}")
    elif op == "unicode":
        if isinstance(parent, dict) and rng.random() < 0.5:
            new = rng.choice(["lr\u200b", "ℓr", "рules", "schédule", "🔥", str(key).upper()])
            parent[new] = parent.pop(key)
            log.append(f"rename {where} -> {new!r}")
        else:
            parent[key] = rng.choice(["é", "漢字.重み", "🔥*", "layer٣", "ｆｃ", "fc\u0301", "\u202efc"])
            log.append(f"{where} := {parent[key]!r}")
    elif op == "nudge":
        numeric = [(p, k, w) for p, k, w in places if isinstance(p[k], (int, float))
                   and not isinstance(p[k], bool)]
        if numeric:
            parent, key, path = rng.choice(numeric)
            where = ".".join(map(str, path))
        parent[key] = rng.choice(NUDGES)
        log.append(f"{where} := {parent[key]!r}")
    elif op == "dup":
        lists = [lst for lst in containers(data, list) if lst]
        if lists:
            lst = rng.choice(lists)
            lst.append(copy.deepcopy(rng.choice(lst)))
            log.append("duplicate a list item")
    elif op == "swap" and isinstance(parent, dict) and len(parent) > 1:
        other = rng.choice([k for k in parent if k != key])
        parent[key], parent[other] = parent[other], parent[key]
        log.append(f"swap {where} <-> {other}")
    return data


NUMBER_TOKEN = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
YAML_SPECIALS = ["? [a, b]\n: 1\n", "? {x: 1}\n: 2\n", "lr: &a 0.1\nweight_decay: *a\n",
                 "<<: {lr: 0.2}\n", "lr: !!set {a, b}\n", "lr: !!binary aGVsbG8=\n",
                 "lr: !!python/object/apply:os.getcwd []\n", "lr: !custom 1\n", "lr: 2001-12-14\n",
                 "\tlr: 0.1\n", "--- \n", "...\n", "%YAML 1.1\n---\n", "lr: *undefined\n",
                 "rules: [{match: fc, match: bn1}]\n", "0x1F: 1\n", "~: 1\n"]


def mutate_text(fmt: str, raw: bytes, rng: random.Random, log: list[str]) -> bytes:
    op = rng.choice(["truncate", "truncate", "bytes", "bytes", "number", "number", "line_delete",
                     "line_dup", "line_swap", "special"])
    if op == "truncate" and raw:
        at = rng.randrange(len(raw))
        log.append(f"truncate at byte {at}")
        return raw[:at]
    if op == "bytes":
        at = rng.randrange(len(raw) + 1)
        junk = rng.choice([rng.randbytes(rng.randint(1, 6)), b"\xff", b"\x00", b"{", b"[", b"]",
                           b'"', b"'", b":", b"\n", b"\t", b"- ", b"*", b"&", b"!", b"%", b"#",
                           b"\\", b"\xc3", b"\xe2\x82", b"=", b",", b"\r"])
        log.append(f"insert {junk!r} at byte {at}")
        return raw[:at] + junk + raw[at:]
    text = raw.decode("utf-8", errors="surrogateescape")
    if op == "number":
        found = list(NUMBER_TOKEN.finditer(text))
        if found:
            m = rng.choice(found)
            new = rng.choice(["1" + "0" * 400, "-1" + "0" * 400, "1e308", "-1e308", "1e999",
                              "1e-400", {"yaml": ".nan", "json": "NaN", "toml": "nan"}[fmt],
                              {"yaml": ".inf", "json": "Infinity", "toml": "inf"}[fmt],
                              "-1", "0", "1_000", "0x1F", "0o17", "1e5", "00"])
            log.append(f"number {m.group(0)!r} -> {new[:12]!r}")
            text = text[:m.start()] + new + text[m.end():]
    elif op in ("line_delete", "line_dup", "line_swap"):
        lines = text.splitlines(keepends=True)
        if len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == "line_delete":
                del lines[i]
            elif op == "line_dup":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            log.append(f"{op} {i} {j}")
            text = "".join(lines)
    elif fmt == "yaml":
        special = rng.choice(YAML_SPECIALS)
        log.append(f"yaml special {special!r}")
        text = special + text if rng.random() < 0.5 else text + "\n" + special
    else:
        special = rng.choice(["\ufeff", "\x7f", "\u2028", "# comment\n"])
        log.append(f"prepend {special!r}")
        text = special + text
    return text.encode("utf-8", errors="surrogateescape")


def splice_deep(fmt: str, text: str) -> str:
    def sub(m):
        return deep_text(fmt, m.group(1), int(m.group(2)))
    return re.sub(r"""["']?__DEEP_(list|dict)_(\d+)__["']?""", sub, text)


@dataclass
class Variant:
    vid: str
    fmt: str
    raw: bytes
    description: str
    name: str | None = None  # file name (default: vid + suffix)


def random_variant(fmt: str, k: int) -> Variant:
    rng = random.Random(SEED * 1000 + k * 7 + len(fmt))
    log: list[str] = []
    base = BASES[fmt]
    mode = rng.choice(["struct", "struct", "struct", "text", "both"])
    raw = base.encode()
    if mode in ("struct", "both"):
        data = parse(fmt, base)
        for _ in range(rng.randint(1, 3)):
            data = mutate_structure(fmt, data, rng, log)
        try:
            text = dumps(fmt, data, rng)
        except Exception as exc:  # a mutant the serializer cannot write: write it as JSON-ish
            log.append(f"(serializer failed: {type(exc).__name__}; repr written)")
            text = repr(data)
        raw = splice_deep(fmt, text).encode("utf-8", errors="surrogateescape")
    if mode in ("text", "both"):
        for _ in range(rng.randint(1, 2)):
            raw = mutate_text(fmt, raw, rng, log)
    return Variant(f"{fmt}-{k}", fmt, raw, "; ".join(log))


def special_variants() -> list[Variant]:
    out = []

    def add(vid, fmt, text, what, name=None):
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        out.append(Variant(f"special-{vid}", fmt, raw, what, name))

    for fmt in ("yaml", "json", "toml"):
        kv = {"yaml": "{}: {}\n", "json": '{{"{}": {}}}', "toml": "{} = {}\n"}[fmt]
        for depth in (1000, 20000):
            add(f"deep-list-lr-{depth}-{fmt}", fmt, kv.format("lr", deep_text(fmt, "list", depth)),
                f"lr is a list nested {depth} deep")
        add(f"deep-dict-schedule-1000-{fmt}", fmt,
            kv.format("schedule", deep_text(fmt, "dict", 1000)), "schedule nested 1000 deep")
        add(f"deep-list-300-{fmt}", fmt, kv.format("lr", deep_text(fmt, "list", 300)),
            "lr is a list nested 300 deep (parses everywhere)")
        add(f"huge-int-lr-{fmt}", fmt, kv.format("lr", "1" + "0" * 400), "lr = 10**400 as text")
        add(f"huge-float-{fmt}", fmt, kv.format("weight_decay", "1e308"), "weight_decay = 1e308")
        nan = {"yaml": ".nan", "json": "NaN", "toml": "nan"}[fmt]
        add(f"nan-lr-{fmt}", fmt, kv.format("lr", nan), "lr = NaN")
        add(f"empty-{fmt}", fmt, "", "empty file")
    add("huge-int-rule-json", "json", '{"rules": [{"match": "fc", "lr_mult": 1' + "0" * 400 + "}]}",
        "a rule's lr_mult = 10**400")
    add("huge-int-stage-yaml", "yaml", "stages: [{epoch: 1" + "0" * 400 + ", unfreeze: fc}]\n",
        "a stage's epoch = 10**400")
    add("huge-int-schedule-toml", "toml", "[schedule]\nmain = \"step\"\nstep_size = 1" + "0" * 400 + "\n",
        "schedule step_size = 10**400")
    add("huge-product-yaml", "yaml", "lr: 1.0e308\nrules: [{match: fc, lr_mult: 10}]\n",
        "lr 1e308 times lr_mult 10 overflows to inf")
    add("complex-key-yaml", "yaml", "? [a, b]\n: 1\n", "a YAML complex (sequence) key")
    add("complex-key-rule-yaml", "yaml", "rules:\n  - ? {match: fc}\n    : 1\n", "complex key in a rule")
    add("optimizer-colon-yaml", "yaml", "optimizer: ':'\n", "optimizer ':' (empty module name)")
    add("optimizer-relative-yaml", "yaml", "optimizer: '.:X'\n", "optimizer '.:X' (relative import)")
    add("onecycle-zero-phase-yaml", "yaml",
        "lr: 0.1\nschedule: {main: onecycle, total: 4, pct_start: 0.25}\n",
        "onecycle whose rising phase is 0 steps long (pct_start * total - 1 == 0)")
    add("unicode-everything-yaml", "yaml",
        "lr: 0.1\nrules:\n  - match: 漢字.重み\n    optional: true\n  - match: ｆｃ\n    🔥: 1\n",
        "unicode patterns and keys")
    add("unicode-name-yaml", "yaml", "rules: [{match: nope}]\n", "a unicode file name",
        name="plän ✓ 漢字.yaml")
    # Mistakes only the model reveals, raised after loading: they should still name the file.
    add("stage-unmatched-yaml", "yaml", "stages: [{epoch: 1, unfreeze: nothing_here}]\n",
        "a stage that thaws a name the model does not have")
    add("stage-empty-pattern-yaml", "yaml", "stages: [{epoch: 1, unfreeze: ''}]\n",
        "a stage with an empty pattern (compiled only at resolve time)")
    add("all-frozen-yaml", "yaml", "rules: [{match: '**', freeze: true}]\n",
        "every parameter frozen, no stage thaws any")
    add("step-stages-epoch-unit-json", "json",
        '{"stages": [{"step": 5, "unfreeze": "fc"}], "rules": [{"match": "**", "freeze": true}]}',
        "step= stages with an epoch schedule")
    add("layer-decay-without-layers-toml", "toml", "layer_decay = 0.5\n",
        "layer_decay on a model without group_matcher and no layers")
    add("layers-unmatched-toml", "toml", 'layer_decay = 0.5\nlayers = ["nothing_here"]\n',
        "a layers pattern that matches nothing")
    add("nesterov-no-momentum-yaml", "yaml", "nesterov: true\n",
        "an option combination torch rejects (nesterov without momentum)")
    add("betas-out-of-range-toml", "toml", 'optimizer = "adam"\nbetas = [3, 0.999]\n',
        "betas[0] = 3, which torch rejects")
    add("pct-start-huge-yaml", "yaml", "lr: 0.1\nschedule: {main: onecycle, total: 10, pct_start: -1"
        + "0" * 400 + "}\n", "onecycle pct_start = -10**400")
    add("bom-yaml", "yaml", "\ufefflr: 0.1\n", "UTF-8 BOM")
    add("invalid-utf8-json", "json", b'{"lr": "\xff\xfe"}', "invalid UTF-8")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(5))
    add("laughs-6-yaml", "yaml", laughs, "billion laughs, 10**6 leaves through aliases")
    return out


VARIANTS = special_variants() + [random_variant(fmt, k) for fmt in ("yaml", "toml", "json")
                                 for k in range(PER_FORMAT)]


def write(variant: Variant, folder: Path) -> Path:
    path = folder / (variant.name or f"{variant.vid}{SUFFIX[variant.fmt]}")
    path.write_bytes(variant.raw)
    return path


# -- running variants -------------------------------------------------------------------------

@dataclass
class Outcome:
    variant: Variant
    path: Path
    phase: str            # the phase that raised, or "ok"
    exc: BaseException | None
    where: str            # file:line of the innermost frame of the exception
    calls: int            # Python function calls made (over CALL_BUDGET: stopped there)
    settings: list[float]  # every group lr and weight decay on ResNet-18, when it resolved


def run_library(path: Path, resnet: nn.Module) -> tuple[str, BaseException | None, str, list[float]]:
    phase, values = "load", []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = Plan.load(path)
            phase = "resolve"
            res = plan.resolve(resnet)
            values = [v for g in res.groups for v in (g.lr, g.weight_decay)]
            phase = "param_groups"
            plan.param_groups(resnet)
            phase = "optimizer"
            torch.manual_seed(0)
            optimizer = plan.optimizer(TinyResNet())
            phase = "scheduler"
            scheduler = plan.scheduler(optimizer)
            phase = "scheduler.step"
            plateau = plan.schedule is not None and plan.schedule.main == "plateau"
            for k in range(SCHED_STEPS):
                scheduler.step(float(k % 3)) if plateau else scheduler.step()
        return "ok", None, "", values
    except Exception as exc:  # noqa: BLE001 - classifying every exception is the point
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return phase, exc, f"{Path(frame.filename).name}:{frame.lineno}", values


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, resnet18_meta) -> list[Outcome]:
    folder = tmp_path_factory.mktemp("fuzz-lib")
    out = []
    for variant in VARIANTS:
        path = write(variant, folder)
        phase, exc, where, values = "over budget", None, "", []
        with call_budget(CALL_BUDGET) as calls:
            try:
                phase, exc, where, values = run_library(path, resnet18_meta)
            except OverBudget:
                pass
        out.append(Outcome(variant, path, phase, exc, where, calls(), values))
    return out


def _signature(o: Outcome) -> str:
    msg = str(o.exc).replace(str(o.path), "<file>")
    msg = re.sub(r"\d+", "N", msg)[:90]
    return f"{o.phase}: {type(o.exc).__name__} at {o.where}: {msg}"


def summarize(failures: list[Outcome], limit: int = 40) -> str:
    groups: dict[str, list[Outcome]] = {}
    for o in failures:
        groups.setdefault(_signature(o), []).append(o)
    lines = [f"{len(failures)} variant(s), {len(groups)} distinct cause(s):"]
    for sig, items in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]:
        first = items[0]
        lines.append(f"  [{len(items)}x] {sig}")
        lines.append(f"        e.g. {first.variant.vid}: {first.variant.description[:160]}")
    return "\n".join(lines)


# -- the tests ----------------------------------------------------------------------------------

def test_variant_count():
    assert len(VARIANTS) >= 300
    assert len({v.vid for v in VARIANTS}) == len(VARIANTS)


@pytest.mark.parametrize("fmt", sorted(BASES))
def test_base_plans_are_valid(fmt, tmp_path, resnet18_meta, capsys):
    path = tmp_path / f"base{SUFFIX[fmt]}"
    path.write_text(BASES[fmt], encoding="utf-8")
    phase, exc, where, values = run_library(path, resnet18_meta)
    assert exc is None, f"{phase}: {type(exc).__name__} at {where}: {exc}"
    plan = Plan.load(path)
    assert plan.rules and plan.schedule is not None and plan.stages
    code, _, err = run_cli(capsys, "inspect", "resnet18", "--rules", path)
    assert code == 0, err


@pytest.mark.slow  # every variant
def test_library_raises_only_paramgroups_errors(outcomes):
    """Any exception other than a ParamgroupsError is a bug (a crash, not a message)."""
    crashes = [o for o in outcomes if o.exc is not None and not isinstance(o.exc, ParamgroupsError)]
    assert not crashes, summarize(crashes)


@pytest.mark.slow  # every variant
def test_library_errors_name_the_file(outcomes):
    """Every ParamgroupsError about a plan file says which file (a located message)."""
    unlocated = [o for o in outcomes if isinstance(o.exc, ParamgroupsError)
                 and o.path.name not in str(o.exc)]
    assert not unlocated, summarize(unlocated)


@pytest.mark.slow  # every variant
def test_library_does_bounded_work_on_every_variant(outcomes):
    """No variant takes more than CALL_BUDGET Python calls (about 8 times the heaviest)."""
    heavy = [o for o in outcomes if o.calls > CALL_BUDGET]
    assert not heavy, "\n".join(f"{o.variant.vid}: stopped at {CALL_BUDGET:,} calls in {o.phase} "
                                f"({o.variant.description[:100]})" for o in heavy)


@pytest.mark.slow  # every variant
def test_accepted_plans_give_finite_settings(outcomes):
    """A plan that resolves never hands torch an infinite or NaN learning rate or decay."""
    bad = [o for o in outcomes if o.settings and not all(math.isfinite(v) for v in o.settings)]
    assert not bad, "\n".join(f"{o.variant.vid}: {o.variant.description[:120]} -> "
                              f"{sorted(set(o.settings), key=str)[:4]}" for o in bad)


@pytest.mark.slow  # every variant
def test_outcomes_are_varied(outcomes):
    """The mutator reaches every phase: most variants fail, but not all at parse time."""
    phases = {o.phase for o in outcomes}
    assert {"ok", "load"} <= phases
    assert sum(o.phase == "ok" for o in outcomes) >= 20
    assert len(phases) >= 3


@pytest.mark.slow  # every variant
def test_cli_exit_codes_and_one_line_errors(tmp_path, resnet18_meta, capsys):
    """``inspect resnet18 --rules FILE``: exit 0 or 2, never 3; on 2 one ``paramgroups: error:`` line."""
    failures, heavy = [], []
    for variant in VARIANTS:
        path = write(variant, tmp_path)
        with call_budget(CALL_BUDGET) as calls:
            try:
                rc, out, err = run_cli(capsys, "inspect", "resnet18", "--rules", path)
            except OverBudget:
                rc, (out, err) = 0, capsys.readouterr()
        if calls() > CALL_BUDGET:
            heavy.append(variant.vid)
        problem = None
        if rc not in (0, 2):
            problem = f"exit {rc}"
        elif rc == 2 and not (err.startswith("paramgroups: error:") and err.count("\n") == 1
                              and err.endswith("\n")):
            problem = f"exit 2 with stderr {err[:120]!r} ({err.count(chr(10))} lines)"
        if problem:
            first = err.strip().splitlines()[0] if err.strip() else ""
            failures.append((re.sub(r"\d+", "N", first.replace(str(path), "<file>"))[:150],
                             variant, problem))
    causes: dict[str, list] = {}
    for cause, variant, problem in failures:
        causes.setdefault(cause, []).append((variant, problem))
    report = [f"{len(failures)} variant(s), {len(causes)} distinct cause(s):"]
    for cause, items in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        variant, problem = items[0]
        report.append(f"  [{len(items)}x] {problem}: {cause}")
        report.append(f"        e.g. {variant.vid}: {variant.description[:160]}")
    assert not failures, "\n".join(report)
    assert not heavy, f"CLI runs over {CALL_BUDGET:,} Python calls: " + ", ".join(heavy)


DEPTH_BUDGET = 200_000  # Python calls to refuse a nested file; 100x deeper must not cost more


@pytest.mark.parametrize("fmt,kind,depth", [  # PyYAML scans a deep flow list slowly: 3 s under the call count
    pytest.param(fmt, kind, depth, marks=[pytest.mark.slow] if (fmt, kind) == ("yaml", "list") else [])
    for fmt in ("yaml", "json", "toml") for kind, depth in (("list", 1000), ("dict", 1000), ("list", 100_000))])
def test_deep_nesting_is_a_located_error(fmt, kind, depth, tmp_path):
    """Very deep nesting: a ConfigError/PlanError naming the file, never RecursionError, and the
    reader gives up within DEPTH_BUDGET calls, however deep the file goes (bounded recursion)."""
    kv = {"yaml": "{}: {}\n", "json": '{{"{}": {}}}', "toml": "{} = {}\n"}[fmt]
    path = tmp_path / f"deep{SUFFIX[fmt]}"
    path.write_text(kv.format("lr", deep_text(fmt, kind, depth)), encoding="utf-8")
    error = None
    with call_budget(DEPTH_BUDGET) as calls:
        try:
            Plan.load(path)
        except Exception as exc:  # noqa: BLE001 - reported below, outside the handler
            error = exc
    if error is not None and not isinstance(error, ParamgroupsError):
        frame = traceback.extract_tb(error.__traceback__)[-1]
        pytest.fail(f"{type(error).__name__} at {Path(frame.filename).name}:{frame.lineno}: "
                    f"{str(error)[:200]}", pytrace=False)
    assert error is not None and path.name in str(error)  # a nested list or table is no lr
    assert calls() <= DEPTH_BUDGET


ALIAS_BUDGET = 50_000  # Python calls to read (or refuse) the alias bomb; expanding it takes 10**9


def test_yaml_alias_bomb_is_read_without_expanding(tmp_path):
    """A 400-byte YAML file whose aliases expand to 10**9 items is read as shared lists.

    ``yaml.safe_load`` shares aliased nodes, so the data itself is small; what must not happen
    is a walk that visits every expansion. Reading and loading it stays within a call budget
    (a walk of the expansion would stop at the budget instead of hanging the run), the data
    keeps the aliases as one shared object, and the plan is refused for its unknown keys.
    """
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs, encoding="utf-8")
    with call_budget(ALIAS_BUDGET) as read_calls:
        data, _ = read_plan_file(path)
    assert read_calls() <= ALIAS_BUDGET
    assert [len(data[k]) for k in "abcdefghi"] == [10] * 9
    assert all(item is data["h"] for item in data["i"])  # ten references, not ten copies
    with call_budget(ALIAS_BUDGET) as load_calls, pytest.raises(ParamgroupsError) as error:
        Plan.load(path)
    assert load_calls() <= ALIAS_BUDGET
    assert "laughs.yaml" in str(error.value)


@pytest.mark.slow  # every variant
def test_from_dict_on_parsed_variants_raises_only_paramgroups_errors(resnet18_meta):
    """The same mutants, parsed by the plain parsers and handed to Plan.from_dict directly."""
    import json as _json

    import yaml as _yaml

    from paramgroups.config import tomllib as _tomllib  # tomli on Python 3.10

    parsers = {"yaml": _yaml.safe_load, "json": _json.loads, "toml": _tomllib.loads}
    crashes, checked = [], 0
    for variant in VARIANTS:
        try:
            data = parsers[variant.fmt](variant.raw.decode("utf-8"))
        except Exception:  # noqa: BLE001 - unparseable text is the file path's business
            continue
        checked += 1
        with call_budget(CALL_BUDGET):
            try:
                Plan.from_dict(data).param_groups(resnet18_meta)
            except ParamgroupsError as exc:
                assert str(exc), variant.vid
            except Exception as exc:  # noqa: BLE001 - any other exception is a crash
                crashes.append(f"{variant.vid}: {type(exc).__name__}: {exc}"[:200])
            except OverBudget as exc:
                crashes.append(f"{variant.vid}: {exc}")
    assert checked >= 150 and not crashes, crashes[:10]
