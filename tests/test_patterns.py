"""The pattern language: each form, against names and module prefixes."""

from __future__ import annotations

import pytest

from paramgroups.errors import PatternError
from paramgroups.patterns import PatternList, compile_pattern, to_path
from paramgroups.rules import Rule


def matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern).matches(name, to_path(name))


@pytest.mark.parametrize("pattern,name,expected", [
    # literals: whole name only
    ("layer4", "layer4", True),
    ("layer4", "layer40", False),
    ("layer4", "layer4.0.conv1.weight", False),  # fnmatch2's bug: prefix is not a match
    ("layer4.0.conv1.weight", "layer4.0.conv1.weight", True),
    # * stays inside one segment
    ("layer*", "layer1", True),
    ("layer*", "layer1.0", False),
    ("layer*.0", "layer3.0", True),
    ("*.bias", "fc.bias", True),
    ("*.bias", "layer1.0.bias", False),
    # ** spans zero or more whole segments
    ("**.bias", "fc.bias", True),
    ("**.bias", "layer1.0.bn1.bias", True),
    ("**.bias", "bias", True),
    ("**.bias", "fc.biasx", False),
    ("blocks.**.norm*", "blocks.3.attn.norm1", True),
    ("blocks.**.norm*", "blocks.norm", True),
    ("blocks.**.norm*", "head.norm", False),
    ("**.b.c", "b.x.b.c", True),  # needs backtracking (fnmatch2 fails this)
    ("**", "anything.at.all", True),
    # braces and ranges
    ("layer{1,2}", "layer2", True),
    ("layer{1,2}", "layer3", False),
    ("blocks.{0..5}", "blocks.5", True),
    ("blocks.{0..5}", "blocks.6", False),
    ("blocks.{0..11}.mlp", "blocks.10.mlp", True),
    ("blocks.{8..11}.**", "blocks.9.attn.qkv.weight", True),
    ("blocks.{8..11}.**", "blocks.7.attn.qkv.weight", False),
    ("{stem,head}.*", "head.bias", True),
    # ? is one character inside a segment
    ("layer?", "layer1", True),
    ("layer?", "layer12", False),
    # regex: full match on the dotted name
    ("re:layer[34]\\..*", "layer3.1.conv2.weight", True),
    ("re:layer[34]\\..*", "layer2.1.conv2.weight", False),
    ("re:conv", "layer1.0.conv1.weight", False),  # full match, not search
    ("re:.*conv\\d\\.weight", "layer1.0.conv1.weight", True),
])
def test_pattern_forms(pattern, name, expected):
    assert matches(pattern, name) is expected


def test_literal_patterns_skip_regex():
    assert compile_pattern("fc.weight").literal == "fc.weight"
    assert compile_pattern("fc.*").literal is None


@pytest.mark.parametrize("bad", ["re:(", "re:[a-", "", " fc"])
def test_invalid_patterns_raise_pattern_error(bad):
    with pytest.raises(PatternError):
        compile_pattern(bad)


def test_unclosed_brace_is_literal_like_bash():
    assert matches("blocks.{", "blocks.{")
    assert not matches("blocks.{", "blocks.0")


def test_invalid_regex_names_the_regex():
    with pytest.raises(PatternError, match=r"invalid regex '\('"):
        compile_pattern("re:(")


def test_non_string_pattern():
    with pytest.raises(PatternError, match="not a string"):
        compile_pattern(3)


def test_pattern_list_exclusions():
    pl = PatternList(["layer*", "!layer1"])
    names = ["layer1", "layer2", "fc"]
    assert pl.hits(names) == {"layer1", "layer2"}
    assert pl.hits(names, "exclude") == {"layer1"}
    assert not pl.everything
    assert PatternList(["!fc"]).everything


@pytest.mark.parametrize("bad", [[], None, 5, {"a": 1}])
def test_pattern_list_rejects_non_lists(bad):
    with pytest.raises(PatternError):
        PatternList(bad)


def test_rule_with_bad_pattern_is_a_pattern_error():
    with pytest.raises(PatternError, match="invalid regex"):
        Rule("re:(")
