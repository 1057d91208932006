"""Numeric brace ranges: a number check (same selection as the expansion), and negative ends
counting from the end of their level, in rules, stages, layer lists, audits and `check`."""

from __future__ import annotations

import re

import bracex
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import run_cli as run
from paramgroups import Plan, Rule, Stage, audit
from paramgroups.errors import PatternError
from paramgroups.patterns import NameIndex, PatternList, compile_pattern


class Decoder(nn.Module):
    """``model.layers.N.proj`` for N layers, plus an embedding and a head."""

    def __init__(self, n: int):
        super().__init__()
        self.model = nn.Module()
        self.model.embed = nn.Embedding(4, 2)
        self.model.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(n))
        self.head = nn.Linear(2, 2)


def trainable_layers(model: nn.Module) -> list[int]:
    return sorted({int(n.split(".")[2]) for n, p in model.named_parameters()
                   if p.requires_grad and n.startswith("model.layers.")})


@pytest.mark.parametrize("n", [12, 32])
def test_last_four_layers_of_any_depth(n):
    model = Decoder(n)
    Plan([Rule(freeze=True), Rule("model.layers.{-4..-1}", freeze=False)], lr=0.1).apply(model)
    assert trainable_layers(model) == list(range(n - 4, n))


@pytest.mark.parametrize("pattern, want", [
    ("model.layers.{-1..-1}", [11]),
    ("model.layers.{-2..-1}.weight", [10, 11]),
    ("model.layers.{2..-9}", [2, 3]),            # mixed: from 2 to the ninth from the end
    ("model.layers.{-1..-3}", [9, 10, 11]),      # reversed ends: the same set
    ("model.layers.{0..-1..5}", [0, 5, 10]),     # with a step, as bracex steps
    ("model.layers.{-100..-11}", [0, 1]),        # ends beyond the level select what exists
    ("{model.layers.{-1..-1},head}", [11]),      # inside alternatives
    ("**.layers.{-1..-1}.**", [11]),
])
def test_counting_from_the_end(pattern, want):
    model = Decoder(12)
    Plan([Rule(freeze=True), Rule(pattern, freeze=False)], lr=0.1).apply(model)
    assert trainable_layers(model) == want


def test_each_level_counts_its_own_children():
    model = nn.Module()
    model.encoder, model.decoder = nn.Module(), nn.Module()
    model.encoder.layers = nn.ModuleList(nn.Linear(1, 1) for _ in range(3))
    model.decoder.layers = nn.ModuleList(nn.Linear(1, 1) for _ in range(5))
    res = Plan([Rule("**.layers.{-1..-1}", lr=1.0)], lr=0.1).resolve(model)
    assert [a.record.name for a in res.assignments if a.lr == 1.0] == [
        "encoder.layers.2.weight", "encoder.layers.2.bias", "decoder.layers.4.weight", "decoder.layers.4.bias"]


def test_root_level_and_exclusions():
    model = nn.Sequential(*(nn.Linear(1, 1) for _ in range(6)))
    res = Plan([Rule(["{-3..-1}", "!{-1..-1}"], lr=1.0)], lr=0.1).resolve(model)
    assert {a.record.module for a in res.assignments if a.lr == 1.0} == {"3", "4"}


def test_stages_and_layer_lists_count_from_the_end():
    model = Decoder(6)
    plan = Plan([Rule(freeze=True)], lr=0.1, stages=[Stage(epoch=1, unfreeze="model.layers.{-2..-1}")],
                layer_decay=0.5, layers=["model.embed", "model.layers.{0..-3}", "model.layers.{-2..-1}", "head"])
    res = plan.resolve(model)
    thawed = {a.record.module for a in res.assignments if a.events}
    assert thawed == {"model.layers.4", "model.layers.5"}
    by_module = {a.record.module: a.layer for a in res.assignments}
    assert [by_module[f"model.layers.{i}"] for i in range(6)] == [1, 1, 1, 1, 2, 2]


def test_audit_select_counts_in_the_whole_model():
    report = audit(Decoder(5), Plan([], lr=0.1))
    rows = report.select(match="model.layers.{-2..-1}").parameters
    assert [r["name"] for r in rows] == [f"model.layers.{i}.{k}" for i in (3, 4) for k in ("weight", "bias")]
    rows = report.select(match=["**", "!model.layers.{-4..-1}"]).parameters
    assert [r["name"] for r in rows] == ["model.embed.weight", "model.layers.0.weight",
                                         "model.layers.0.bias", "head.weight", "head.bias"]


@pytest.mark.slow
def test_check_expects_the_last_layers(capsys, tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("rules:\n  - freeze: true\n  - match: model.layers.{-2..-1}\n    freeze: false\n")
    args = ["check", "hf:llama", "--config", "num_hidden_layers=4", "--config", "hidden_size=16",
            "--config", "intermediate_size=32", "--config", "num_attention_heads=2",
            "--config", "num_key_value_heads=2", "--config", "vocab_size=32", "--rules", str(plan)]
    rc, out, err = run(capsys, *args, "--expect-trainable", "model.layers.{-2..-1}",
                       "--expect-frozen", "model.layers.{0..-3}")
    assert (rc, err) == (0, "") and out.startswith("ok: ")
    rc, out, _ = run(capsys, *args, "--expect-trainable", "model.layers.{-3..-1}")
    assert rc == 1 and out.startswith("violation: model.layers.1 (")


def test_counting_range_must_be_a_whole_segment():
    with pytest.raises(PatternError, match=r"must be a whole segment, as in layers.\{-2..-1\}"):
        Rule("model.layer_{-2..-1}")


NAMES = [f"experts.expert_{i}.w" for i in range(300)] + [f"experts.expert_{i:03d}.w" for i in range(5)] + [
    "experts.expert_x.w", "experts.expert_.w", "experts.expert_-1.w", "a.12.b.3.c", "a.7.b.40.c"]


INDEX = NameIndex({n.rsplit(".", k)[0] for n in NAMES for k in range(4)})


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(lo=st.integers(0, 320), hi=st.integers(0, 320), template=st.sampled_from(
    ["experts.expert_{}.w", "**.expert_{}", "*.expert_{}.*", "**.{}.**", "a.*.b.{}.c"]))
def test_number_check_selects_what_the_expansion_selects(lo, hi, template):
    pattern = template.format(f"{{{lo}..{hi}}}")
    expanded = PatternList([template.format(x) for x in bracex.expand(f"{{{lo}..{hi}}}")])
    assert PatternList(pattern).select(INDEX) == expanded.select(INDEX)
    assert PatternList(pattern).hits(INDEX.names) == expanded.hits(INDEX.names)
    assert compile_pattern(pattern).alternatives[0].regex.pattern.count("|") < 20  # not one per number


def test_range_is_one_regex_not_many_alternatives():
    pattern = compile_pattern("experts.expert_{0..255}.w")
    assert len(pattern.alternatives) == 1
    assert re.fullmatch(r"\(\?:.*\)", pattern.alternatives[0].regex.pattern.split("expert_")[1].split("[/]")[0])
