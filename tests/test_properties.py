"""Property tests: random module trees and random rule lists, checked against invariants and a
slow reference implementation of the cascade written here from the README (not from the code).

Models: nn.Module trees 1-4 levels deep with child names such as ``block3``, ``0``,
``layer_2``; leaves among Linear, Conv1d, BatchNorm1d, LayerNorm, Embedding and a norm
look-alike; parameters and buffers registered directly on containers (including a zero-element
parameter and an integer one with ``requires_grad=False``); one submodule instance reused under
two names; parameters tied across modules by assignment.

Rules: 2-8, all ``optional=True``, with patterns built from the drawn model's own names (and
glob forms of them: ``*``, ``**``, ``{a,b}``, ``{0..3}``, ``re:``, ``!``), optional ``kinds`` and
``modules`` filters, and random lr / lr_mult / weight_decay / wd_mult / freeze / group values.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import re
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from torch import nn

import paramgroups
from paramgroups import Plan, Rule
from paramgroups.errors import PlanError, RuleError

# No "explain" phase: on a failure it reruns many variants of the example, which costs more
# than the shrinking and adds little to the minimal example printed.
SETTINGS = settings(max_examples=60, deadline=None, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad"]
KINDS = ["weight", "bias", "norm", "embedding", "ndim<=1"]


# -- model trees ---------------------------------------------------------------------------

class Block(nn.Module):
    """A plain container."""


class Stack(nn.Module):
    """Another plain container."""


class Tower(Block):
    """A subclass of Block: ``modules: Block`` must cover it (base classes count)."""


class Net(nn.Module):
    """The root."""


class SimpleRMSNorm(nn.Module):
    """A normalization look-alike by class name (``norm`` kind without a torch norm base)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


CONTAINERS = {"Block": Block, "Stack": Stack, "Tower": Tower, "Sequential": nn.Sequential}
CHILD_NAMES = ["block3", "0", "1", "2", "11", "layer_2", "layer1", "fc", "head", "norm1", "emb",
               "stem", "blocks", "conv", "attn2", "mlp"]
# Parameter names registered directly on containers: names that are weight/bias kinds,
# timm no-weight-decay tokens (embedding kind), and names that are neither.
DIRECT_PARAMS = ["scale", "weight", "bias", "pos_embed", "cls_token", "gain"]
BUFFER_NAMES = ["running_thing", "mask"]
DIMS = st.sampled_from([2, 3])


def leaf_spec():
    return st.one_of(
        st.tuples(st.just("Linear"), DIMS, DIMS, st.booleans()),
        st.tuples(st.just("Conv1d"), DIMS, DIMS, st.booleans()),
        st.tuples(st.just("BatchNorm1d"), DIMS, st.booleans()),
        st.tuples(st.just("LayerNorm"), DIMS, st.booleans()),
        st.tuples(st.just("Embedding"), st.sampled_from([2, 3, 5]), DIMS),
        st.tuples(st.just("SimpleRMSNorm"), DIMS),
    )


def build_leaf(spec) -> nn.Module:
    kind = spec[0]
    if kind == "Linear":
        return nn.Linear(spec[1], spec[2], bias=spec[3])
    if kind == "Conv1d":
        return nn.Conv1d(spec[1], spec[2], 1, bias=spec[3])
    if kind == "BatchNorm1d":
        return nn.BatchNorm1d(spec[1], affine=spec[2])
    if kind == "LayerNorm":
        return nn.LayerNorm(spec[1], bias=spec[2])
    if kind == "Embedding":
        return nn.Embedding(spec[1], spec[2])
    return SimpleRMSNorm(spec[1])


def node_spec(depth: int):
    """A container spec: (class, children, direct params, buffers); children nest ``depth`` more."""
    child = leaf_spec() if depth <= 1 else st.one_of(
        leaf_spec(), leaf_spec(), node_spec(depth - 1),
        st.tuples(st.just("ref"), st.integers(0, 50)))  # reuse an already built module
    children = st.lists(st.tuples(st.sampled_from(CHILD_NAMES), child), min_size=1, max_size=3,
                        unique_by=lambda c: c[0])
    direct = st.lists(st.tuples(st.sampled_from(DIRECT_PARAMS), DIMS, st.sampled_from([1, 2])),
                      max_size=2, unique_by=lambda c: c[0])
    return st.tuples(st.sampled_from(sorted(CONTAINERS)), children, direct,
                     st.lists(st.sampled_from(BUFFER_NAMES), max_size=2, unique=True))


@dataclass
class Drawn:
    model: nn.Module
    description: list[str] = field(default_factory=list)


@st.composite
def models(draw) -> Drawn:
    depth = draw(st.integers(1, 4))
    root_spec = draw(node_spec(depth))
    built: list[nn.Module] = []
    log: list[str] = [f"tree: {root_spec!r}"]

    def build(spec, root=False) -> nn.Module:
        if spec[0] == "ref":
            if not built:
                m = nn.Linear(2, 2)
            else:
                m = built[spec[1] % len(built)]  # completed, so never an ancestor: no cycle
            log.append(f"reuse {type(m).__name__} instance #{spec[1]}")
            return m
        if spec[0] not in CONTAINERS:
            m = build_leaf(spec)
            built.append(m)
            return m
        cls_name, children, direct, buffers = spec
        m = Net() if root else CONTAINERS[cls_name]()
        for name, child in children:
            m.add_module(name, build(child))
        for name, d, ndim in direct:
            shape = (d,) if ndim == 1 else (d, d)
            m.register_parameter(name, nn.Parameter(torch.randn(shape)))
        for name in buffers:
            m.register_buffer(name, torch.zeros(2))
        if not root:
            built.append(m)
        return m

    model = build(root_spec, root=True)
    # Odd parameters: a zero-element one and an integer one that cannot require grad.
    if draw(st.booleans()):
        model.register_parameter("empty", nn.Parameter(torch.empty(0)))
        log.append("root.empty = zero-element parameter")
    if draw(st.booleans()):
        holder = draw(st.sampled_from([m for m in model.modules()]))
        holder.register_parameter("steps", nn.Parameter(torch.zeros(3, dtype=torch.int64),
                                                        requires_grad=False))
        log.append(f"{type(holder).__name__}.steps = int64 parameter")
    # Tie parameters: assign one module's parameter to another module's attribute of the same
    # shape and dtype (Linear.weight <- Embedding.weight, LayerNorm.bias <- BatchNorm.weight ...).
    slots = []
    seen = set()
    for mod in model.modules():
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        for attr, p in mod.named_parameters(recurse=False):
            if p.dtype.is_floating_point and p.numel():
                slots.append((mod, attr, p))
    for _ in range(draw(st.integers(0, 2))):
        if len(slots) < 2:
            break
        i = draw(st.integers(0, len(slots) - 1))
        mates = [j for j, s in enumerate(slots) if j != i and s[2].shape == slots[i][2].shape
                 and s[2] is not slots[i][2]]
        if not mates:
            continue
        j = draw(st.sampled_from(mates))
        (src_mod, src_attr, src), (dst_mod, dst_attr, _) = slots[i], slots[j]
        setattr(dst_mod, dst_attr, src)
        slots[j] = (dst_mod, dst_attr, src)
        log.append(f"tie {type(dst_mod).__name__}.{dst_attr} := {type(src_mod).__name__}.{src_attr}")
    if not any(p.dtype.is_floating_point for p in model.parameters()):
        model.add_module("extra", nn.Linear(2, 2))
    return Drawn(model, log)


# -- the reference -----------------------------------------------------------------------

@dataclass
class RefParam:
    param: nn.Parameter
    name: str
    aliases: list[str]
    owner: nn.Module
    head: bool = False  # a parameter of the model's last nn.Linear: its output layer

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    @property
    def is_float(self) -> bool:
        return self.param.dtype.is_floating_point or self.param.dtype.is_complex

    def candidates(self) -> set[str]:
        """Every name a pattern is tried on: each name and each module prefix of it."""
        out = set()
        for n in self.names:
            parts = n.split(".")
            out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        return out

    def kinds(self) -> set[str]:
        leaf = self.name.rsplit(".", 1)[-1]
        kinds = set()
        if leaf == "weight":
            kinds.add("weight")
        if leaf == "bias":
            kinds.add("bias")
        if isinstance(self.owner, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) or any(
                k in type(self.owner).__name__.lower()
                for k in ("batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm")):
            kinds.add("norm")
        if isinstance(self.owner, nn.Embedding) or leaf in ("pos_embed", "cls_token"):
            kinds.add("embedding")
        if self.param.ndim <= 1:
            kinds.add("ndim<=1")
        if self.param.ndim >= 2 and leaf != "bias" and not kinds & {"norm", "embedding"}:
            kinds.add("weight")  # a matrix (or more) of a plain module is a weight whatever its name
        if self.head:
            kinds.add("head")
        elif self.param.ndim == 2 and "weight" in kinds and not kinds & {"norm", "embedding"}:
            kinds.add("matrix")
        return kinds

    def classes(self) -> list[str]:
        """The owner's class and its nn.Module base classes (below nn.Module itself)."""
        return [c.__name__ for c in type(self.owner).__mro__
                if isinstance(c, type) and issubclass(c, nn.Module) and c is not nn.Module]


def ref_inventory(model: nn.Module) -> list[RefParam]:
    modules = dict(model.named_modules(remove_duplicate=False))
    out: list[RefParam] = []
    by_id: dict[int, RefParam] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in by_id:
            rec = by_id[id(p)]
            if name not in rec.names:
                rec.aliases.append(name)
            continue
        rec = RefParam(p, name, [], modules[name.rpartition(".")[0]])
        by_id[id(p)] = rec
        out.append(rec)
    # the output layer: the last nn.Linear in module order (shared ones where last seen); a model
    # without one: the own parameters of the last module below the root holding a matrix
    linears = [m for n, m in modules.items() if n and isinstance(m, nn.Linear)]
    holders = [r.owner for r in out if r.name.rpartition(".")[0] and "matrix" in r.kinds()]
    head = linears[-1] if linears else holders[-1] if holders else None
    if head is not None:
        for p in head._parameters.values():
            if p is not None:
                by_id[id(p)].head = True
    return out


def expand_braces(text: str) -> list[str]:
    """Bash-style brace expansion: ``{a,b}`` alternatives and ``{m..n}`` integer ranges."""
    depth, start = 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                body, head, tail = text[start + 1:i], text[:start], text[i + 1:]
                parts, level, cur = [], 0, ""
                for c in body:
                    if c == "," and level == 0:
                        parts.append(cur)
                        cur = ""
                        continue
                    level += (c == "{") - (c == "}")
                    cur += c
                parts.append(cur)
                if len(parts) == 1:
                    m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
                    if not m:
                        return [text]  # not a brace expression: literal
                    a, b = int(m.group(1)), int(m.group(2))
                    step = 1 if b >= a else -1
                    parts = [str(k) for k in range(a, b + step, step)]
                out = []
                for p in parts:
                    out.extend(expand_braces(head + p + tail))
                return out
    return [text]


def glob_regex(glob: str) -> re.Pattern[str]:
    """One brace-free glob as a regex over ``name + "."``: each segment carries its dot."""
    out = []
    for seg in glob.split("."):
        if seg == "**":
            out.append(r"(?:[^.]+\.)*")  # zero or more whole segments
        else:
            out.append("".join("[^.]*" if ch == "*" else re.escape(ch) for ch in seg) + r"\.")
    return re.compile("".join(out))


def ref_pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return any(glob_regex(alt).fullmatch(name + ".") for alt in expand_braces(pattern))


def ref_selects(rule: dict, rec: RefParam) -> bool:
    match = rule.get("match", "**")
    texts = [match] if isinstance(match, str) else list(match)
    include = [t for t in texts if not t.startswith("!")]
    exclude = [t[1:] for t in texts if t.startswith("!")]
    cands = rec.candidates()
    hit = not include or any(ref_pattern_matches(t, c) for t in include for c in cands)
    if not hit or any(ref_pattern_matches(t, c) for t in exclude for c in cands):
        return False
    modules = rule.get("modules")
    if modules is not None:
        pats = [modules] if isinstance(modules, str) else modules
        if not any(fnmatch.fnmatchcase(c, p) for c in rec.classes() for p in pats):
            return False
    kinds = rule.get("kinds")
    if kinds is not None:
        wanted = {kinds} if isinstance(kinds, str) else set(kinds)
        if not wanted & rec.kinds():
            return False
    return True


FIELDS = ("lr", "lr_mult", "weight_decay", "wd_mult", "freeze", "group")


def ref_tie_conflict(recs: list[RefParam], rules: list[dict]) -> bool:
    """Whether two rules select different, non-nested names of one tied tensor and give it
    different values for one field (a conflict the plan must refuse, not resolve by order)."""
    for rec in recs:
        if len(rec.names) < 2:
            continue
        seen = []
        for i, rule in enumerate(rules):
            if not ref_selects(rule, rec):
                continue
            match = rule.get("match", "**")
            texts = [match] if isinstance(match, str) else list(match)
            include = [t for t in texts if not t.startswith("!")]
            exclude = [t[1:] for t in texts if t.startswith("!")]

            def hits(pats: list[str], name: str) -> bool:
                parts = name.split(".")
                prefixes = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
                return any(ref_pattern_matches(t, c) for t in pats for c in prefixes)

            names = frozenset(n for n in rec.names
                              if (not include or hits(include, n)) and not hits(exclude, n))
            for j, other in seen:
                nested = names <= other or other <= names
                clash = any(rule.get(k) is not None and rules[j].get(k) is not None
                            and rule[k] != rules[j][k] for k in FIELDS)
                if clash and not nested:
                    return True
            seen.append((i, names))
    return False


@dataclass
class RefAssignment:
    rec: RefParam
    lr: float
    weight_decay: float
    frozen: bool
    label: str | None
    rules: list[int]

    def key(self) -> tuple:
        return (self.label, self.lr, self.weight_decay, self.frozen)


def ref_cascade(recs: list[RefParam], rules: list[dict], base_lr: float,
                base_wd: float) -> list[RefAssignment]:
    out = []
    for rec in recs:
        fields: dict = {}
        touched = []
        for i, rule in enumerate(rules):
            if ref_selects(rule, rec):
                touched.append(i)
                fields.update({k: rule[k] for k in FIELDS if rule.get(k) is not None})
        lr = fields.get("lr", base_lr) * fields.get("lr_mult", 1)
        wd = fields.get("weight_decay", base_wd) * fields.get("wd_mult", 1)
        frozen = bool(fields.get("freeze", False)) or not rec.is_float
        out.append(RefAssignment(rec, lr, wd, frozen, fields.get("group"), touched))
    return out


def default_lr(name: str) -> float:
    cls = {n.lower(): c for n, c in vars(torch.optim).items() if isinstance(c, type)}[name]
    return float(inspect.signature(cls).parameters["lr"].default)


# -- rules drawn from the model's own names ---------------------------------------------------

def all_names(recs: list[RefParam]) -> list[str]:
    return sorted(set().union(*(r.candidates() for r in recs)))


@st.composite
def patterns(draw, names: list[str]) -> str:
    name = draw(st.sampled_from(names))
    parts = name.split(".")
    segs = sorted({s for n in names for s in n.split(".")})
    i = draw(st.integers(0, len(parts) - 1))
    seg = parts[i]
    form = draw(st.sampled_from([
        "literal", "literal", "star", "partial", "globstar_head", "globstar_tail", "globstar_mid",
        "all", "one", "brace_seg", "brace_names", "range", "regex_exact", "regex_prefix",
        "regex_generic", "missing"]))

    def with_seg(new: str) -> str:
        return ".".join(parts[:i] + [new] + parts[i + 1:])

    if form == "literal":
        return name
    if form == "star":
        return with_seg("*")
    if form == "partial":
        k = draw(st.integers(0, len(seg)))
        return with_seg(seg[:k] + "*" if draw(st.booleans()) else "*" + seg[k:])
    if form == "globstar_head":
        return ".".join(["**", *parts[i:]])
    if form == "globstar_tail":
        return ".".join([*parts[:i + 1], "**"])
    if form == "globstar_mid":
        j = draw(st.integers(i, len(parts)))
        return ".".join([*parts[:i], "**", *parts[j:]])
    if form == "all":
        return "**"
    if form == "one":
        return "*"
    if form == "brace_seg":
        other = draw(st.sampled_from(segs))
        alts = [seg, other] if other != seg else [seg, seg + "x"]
        return with_seg("{" + ",".join(draw(st.permutations(alts))) + "}")
    if form == "brace_names":
        other = draw(st.sampled_from(names))
        if other == name:
            other = name + "_nope"
        return "{" + name + "," + other + "}"
    if form == "range":
        m = re.fullmatch(r"(.*?)(\d+)", seg)
        if not m:
            return with_seg(seg + "{0..3}")
        lo = draw(st.integers(0, int(m.group(2))))
        hi = draw(st.integers(lo + 1, lo + 4))
        return with_seg(f"{m.group(1)}{{{lo}..{hi}}}")
    if form == "regex_exact":
        return "re:" + re.escape(name)
    if form == "regex_prefix":
        return "re:" + re.escape(".".join(parts[:i + 1])) + r"(\..*)?"
    if form == "regex_generic":
        return draw(st.sampled_from([r"re:.*\.bias", r"re:.*\d.*", r"re:(?:[^.]+\.)?weight",
                                     r"re:[a-z_]+", r"re:.*(norm|emb).*"]))
    return "nonexistent_" + seg


def module_patterns(recs: list[RefParam]):
    pool = sorted({c for r in recs for c in r.classes()})
    globs = ["*Norm*", "Conv*", "Lin*", "*Embedding", "*", "Block", "_NormBase", "_ConvNd",
             "Batch*", "Tow*", "Sta*"]
    # "Module" itself is left out: whether nn.Module counts as a base class is unspecified.
    choices = [p for p in pool + globs if p == "*" or not fnmatch.fnmatchcase("Module", p)]
    return st.sampled_from(choices)


NUM = st.one_of(st.floats(0, 10, allow_nan=False, allow_infinity=False),
                st.sampled_from([0, 1, 2, 0.1, 1e-3, 1e-4]))


@st.composite
def rule_dicts(draw, recs: list[RefParam]) -> dict:
    names = all_names(recs)
    rule: dict = {}
    shape = draw(st.sampled_from(["string", "list", "default", "excl_string"]))
    if shape == "string":
        rule["match"] = draw(patterns(names))
    elif shape == "excl_string":
        rule["match"] = "!" + draw(patterns(names))
    elif shape == "list":
        items = draw(st.lists(st.tuples(st.booleans(), patterns(names)), min_size=1, max_size=3))
        rule["match"] = [("!" if neg else "") + p for neg, p in items]
    if draw(st.integers(0, 3)) == 0:
        mods = draw(st.lists(module_patterns(recs), min_size=1, max_size=2))
        rule["modules"] = mods[0] if len(mods) == 1 and draw(st.booleans()) else mods
    if draw(st.integers(0, 3)) == 0:
        kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3, unique=True))
        rule["kinds"] = kinds[0] if len(kinds) == 1 and draw(st.booleans()) else kinds
    for key, values in (("lr", NUM), ("lr_mult", NUM), ("weight_decay", NUM), ("wd_mult", NUM),
                        ("freeze", st.booleans()),
                        ("group", st.sampled_from(["backbone", "head", "x y"]))):
        if draw(st.booleans()):
            rule[key] = draw(values)
    return rule


def make_rules(dicts: list[dict]) -> list[Rule]:
    return [Rule(**d, optional=True) for d in dicts]


# -- the property ------------------------------------------------------------------------------

def check_plan(model: nn.Module, rules: list[dict], lr, wd) -> None:
    recs = ref_inventory(model)
    by_id = {id(r.param): r for r in recs}
    name_of = {id(r.param): r.name for r in recs}
    plan = Plan(make_rules(rules), lr=lr, weight_decay=wd, optimizer="sgd")
    expected = ref_cascade(recs, rules, lr if lr is not None else default_lr("sgd"), wd)
    note(f"reference: {[(a.rec.name, a.lr, a.weight_decay, a.frozen, a.label, a.rules) for a in expected]}")
    if ref_tie_conflict(recs, rules):  # refused, and reported by the audit, never a coin flip
        with pytest.raises(RuleError, match="are one tied tensor"):
            plan.param_groups(model)
        assert any("are one tied tensor" in p for p in paramgroups.audit(model, plan).problems)
        return

    # 1. every floating parameter in exactly one group; non-floating ones in none
    groups = plan.param_groups(model)
    placed: dict[int, int] = {}
    for gi, g in enumerate(groups):
        for p in g["params"]:
            assert id(p) in by_id, f"group {gi} holds a tensor that is not a model parameter"
            assert id(p) not in placed, f"{name_of[id(p)]} is in groups {placed[id(p)]} and {gi}"
            placed[id(p)] = gi
    for rec in recs:
        if rec.is_float:
            assert id(rec.param) in placed, f"{rec.name} is in no group"
        else:
            assert id(rec.param) not in placed, f"non-floating {rec.name} is in a group"

    # 2. the audit agrees with the groups, and both with the reference cascade
    report = paramgroups.audit(model, plan)
    rows = {r["name"]: r for r in report.parameters}
    assert [r["name"] for r in report.parameters] == [r.name for r in recs]
    for gi, g in enumerate(groups):
        for p in g["params"]:
            row = rows[name_of[id(p)]]
            assert row["group"] == gi
            assert math.isclose(g["lr"], row["lr"], rel_tol=1e-12, abs_tol=0)
            assert math.isclose(g["weight_decay"], row["weight_decay"], rel_tol=1e-12, abs_tol=0)
    for a in expected:
        row = rows[a.rec.name]
        where = f"{a.rec.name} (aliases {a.rec.aliases})"
        assert row["aliases"] == a.rec.aliases, where
        assert row["module"] == type(a.rec.owner).__name__, where
        assert set(row["kinds"]) == a.rec.kinds(), where
        assert row["rules"] == a.rules, f"{where}: rules that touched it"
        assert math.isclose(row["lr"], a.lr, rel_tol=1e-12, abs_tol=0), f"{where}: lr"
        assert math.isclose(row["weight_decay"], a.weight_decay, rel_tol=1e-12, abs_tol=0), where
        assert row["trainable"] is (not a.frozen), f"{where}: trainable"
        if not a.rec.is_float:
            assert row["group"] is None, where

    # 3. parameters share a group exactly when their settings agree; groups ordered by first member
    floats = [a for a in expected if a.rec.is_float]
    keys: dict[tuple, int] = {}
    for a in floats:
        keys.setdefault(a.key(), len(keys))
    assert [keys[a.key()] for a in floats] == [placed[id(a.rec.param)] for a in floats]
    assert len(groups) == len(keys)

    # 4. apply sets requires_grad from the audit's trainable flag
    plan.apply(model)
    for rec in recs:
        if rec.is_float:
            assert rec.param.requires_grad is rows[rec.name]["trainable"], rec.name
        else:
            assert rec.param.requires_grad is False

    # 5. every optimizer accepts the groups (or the plan is refused for freezing everything)
    everything_frozen = all(a.frozen for a in expected)
    for opt_name in OPTIMIZERS:
        other = Plan(make_rules(rules), lr=lr, weight_decay=wd, optimizer=opt_name)
        if everything_frozen:
            with pytest.raises(PlanError):
                other.optimizer(model)
            continue
        opt = other.optimizer(model)
        assert opt.__class__.__name__.lower() == opt_name
        base = lr if lr is not None else default_lr(opt_name)
        ref = {id(a.rec.param): a for a in ref_cascade(recs, rules, base, wd)}
        seen = 0
        for g in opt.param_groups:
            for p in g["params"]:
                seen += 1
                assert math.isclose(g["lr"], ref[id(p)].lr, rel_tol=1e-12, abs_tol=0)
                assert math.isclose(g["weight_decay"], ref[id(p)].weight_decay, rel_tol=1e-12,
                                    abs_tol=0)
        assert seen == sum(r.is_float for r in recs)
        # one step with zero gradients: trainable parameters take it, frozen ones (no grad) are
        # skipped by torch and keep their values
        frozen = {id(r.param): r.param.detach().clone() for r in recs if not r.param.requires_grad}
        for r in recs:
            r.param.grad = torch.zeros_like(r.param) if r.param.requires_grad else None
        opt.step()
        for r in recs:
            r.param.grad = None
            if id(r.param) in frozen:
                assert torch.equal(r.param, frozen[id(r.param)]), f"{opt_name} moved frozen {r.name}"


@SETTINGS
@given(drawn=models(), data=st.data())
def test_random_plans_match_the_reference_cascade(drawn: Drawn, data) -> None:
    for line in drawn.description:
        note(line)
    recs = ref_inventory(drawn.model)
    rules = data.draw(st.lists(rule_dicts(recs), min_size=2, max_size=8), label="rules")
    lr = data.draw(st.one_of(st.none(), NUM), label="plan lr")
    wd = data.draw(NUM, label="plan weight_decay")
    check_plan(drawn.model, rules, lr, wd)


# -- the reference itself, and regressions the property found ---------------------------------

@pytest.mark.parametrize("pattern,name,expected", [
    ("layer*", "layer1", True), ("layer*", "layer1.0", False), ("**.bias", "bias", True),
    ("**.bias", "a.b.bias", True), ("a.**.b", "a.b", True), ("a.**.b", "a.x.y.b", True),
    ("a.**", "a", True), ("a.**", "a.x", True), ("{a,b}.c", "b.c", True), ("x{0..3}", "x3", True),
    ("x{0..3}", "x4", False), ("{3..1}", "2", True), ("{a.b,c}", "a.b", True),
    ("re:a\\..*", "a.b", True), ("re:a", "ab", False), ("*", "a.b", False),
])
def test_reference_matcher(pattern, name, expected):
    assert ref_pattern_matches(pattern, name) is expected


def test_globstar_head_matches_top_level_names():
    """``**.bn1`` is zero or more segments then ``bn1``: it covers the top-level ``bn1`` too.

    ``compile_pattern("**.bn1").matches("bn1", ...)`` says so, but rule selection pre-filters
    names by the literal suffix ``.bn1`` and so never looks at a top-level ``bn1``. On
    torchvision's ResNet-18, ``Rule("**.fc")`` raises UnmatchedRuleError ("closest names: fc").
    """
    model = Net()
    model.add_module("bn1", nn.BatchNorm1d(2))
    model.add_module("layer1", nn.Sequential(Block()))
    model.layer1[0].add_module("bn1", nn.BatchNorm1d(2))
    model.register_parameter("bias", nn.Parameter(torch.zeros(2)))
    plan = Plan([Rule("**.bn1", lr=0.5), Rule("**.bias", weight_decay=0.0)], lr=0.1, weight_decay=0.01)
    rows = {r["name"]: (r["lr"], r["weight_decay"]) for r in paramgroups.audit(model, plan).parameters}
    assert rows == {"bn1.weight": (0.5, 0.01), "bn1.bias": (0.5, 0.0),
                    "layer1.0.bn1.weight": (0.5, 0.01), "layer1.0.bn1.bias": (0.5, 0.0),
                    "bias": (0.1, 0.0)}


def test_globstar_tail_covers_the_prefix_itself():
    """``scale.**`` is ``scale`` then zero or more segments: it covers a parameter ``scale``."""
    model = Net()
    model.register_parameter("scale", nn.Parameter(torch.ones(2)))
    model.add_module("fc", nn.Linear(2, 2))
    report = paramgroups.audit(model, Plan([Rule("scale.**", lr=0.5)], lr=0.1))
    lrs = {r["name"]: r["lr"] for r in report.parameters}
    assert lrs == {"scale": 0.5, "fc.weight": 0.1, "fc.bias": 0.1}


def test_distinct_parameters_keep_distinct_names():
    """Only wrapper segments may be dropped from names: a user's own submodule that happens to
    be called ``module`` must not make two different parameters share one canonical name (here
    ``Holder.weight`` and ``Holder.module.weight`` both become ``weight``, and a rule
    ``match: module`` selects nothing)."""

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(2))
            self.module = nn.Linear(2, 2)

    names = [r["name"] for r in paramgroups.audit(Holder()).parameters]
    assert len(set(names)) == len(names), names
