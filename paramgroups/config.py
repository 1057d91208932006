"""Reading plan files (YAML, TOML, JSON) with line numbers for error messages.

Files are parsed with safe loaders only (``yaml.safe_load``-equivalent, ``tomllib``, ``json``).
Besides the data, :func:`read_plan_file` returns a :class:`Locations` map from a key path such
as ``("rules", 2, "lr")`` to the line it was written on, so errors can point at it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, ParamgroupsError, Where

E = TypeVar("E", bound=ParamgroupsError)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
MAX_PLAN_BYTES = 16 * 2**20  # a plan is a few KB; this stops /dev/zero and endless pipes


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), as users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class Locations:
    """Line numbers (1-based) of keys and list items in a plan file."""

    def __init__(self, source: str | None, lines: dict[tuple, int] | None = None,
                 overrides: dict[str, str] | None = None):
        self.source = source
        self.lines = lines or {}
        self.overrides = overrides or {}  # top-level keys set elsewhere (a CLI option) -> its name

    def line(self, *path: Any) -> int | None:
        """The line of ``path``, or of its closest located parent."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def locate(self, exc: E) -> E:
        """``exc`` with the file and line of what it is about (its ``where``: the rule or stage,
        else the field), or the command-line option that set that field; parts it already
        knows stay."""
        where = exc.where
        path: tuple = (("rules", where.rule) if where.rule is not None else
                       ("stages", where.stage) if where.stage is not None else
                       (where.field,) if where.field is not None else ())
        if path and path[0] in self.overrides:
            return exc.at(source=self.overrides[path[0]])
        if self.source is None:
            return exc
        return exc.at(source=self.source, line=self.line(*path))


def _yaml_lines(node: yaml.Node | None, path: tuple = (), out: dict | None = None,
                seen: set[int] | None = None) -> dict:
    """Lines of keys and items; each node is walked once (aliases can repeat a node 10**9 times)."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if id(node) in seen:
        return out
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # complex keys: the constructor reports them
            line = first.setdefault((key.tag, key.value), key.start_mark.line + 1)
            if line != key.start_mark.line + 1 and key.tag != "tag:yaml.org,2002:merge":
                raise _DuplicateKey(key.value, key.start_mark.line + 1, line)
            sub = path + (key.value,)
            out[sub] = key.start_mark.line + 1
            _yaml_lines(value, sub, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _yaml_lines(item, path + (i,), out, seen)
    return out


class _DuplicateKey(Exception):
    """A mapping that names one key twice: loaders would keep the last value silently."""

    def __init__(self, key: str, line: int | None = None, first: int | None = None):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first

    def error(self, source: str, kind: str) -> ConfigError:
        also = f" (first on line {self.first})" if self.first else ""
        return _error(source, self.line, f"malformed {kind.upper()}: duplicate key {self.key!r}{also}: "
                           f"a key may appear once per mapping (the last one would win silently)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json: refuse a key given twice in one object."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _toml_lines(text: str) -> dict[tuple, int]:
    """Lines of ``[[section]]`` items and their keys, and of top-level keys."""
    out: dict[tuple, int] = {}
    counts: dict[str, int] = {}
    current: tuple = ()
    for lineno, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\[\s*([\w.-]+)\s*\]\]", line)
        table = re.match(r"\s*\[\s*([\w.-]+)\s*\]", line)
        key = re.match(r"\s*([\w-]+)\s*=", line)
        if header:
            name = header.group(1)
            current = (name, counts.get(name, 0))
            counts[name] = counts.get(name, 0) + 1
            out.setdefault((name,), lineno)
            out[current] = lineno
        elif table:
            current = (table.group(1),)
            out[current] = lineno
        elif key:
            out.setdefault(current + (key.group(1),), lineno)
    return out


def parse_plan_text(text: str, kind: str, source: str) -> tuple[Any, Locations]:
    """Parse ``text`` as ``kind`` (yaml, json, toml); raise :class:`ConfigError` with the line.

    A key given twice in one mapping is an error in every format, naming the key and its line.
    """
    try:
        return _parse(text, kind, source)
    except _DuplicateKey as dup:
        if dup.line is None:  # found by json, which keeps no positions
            dup = _json_duplicate(text) or dup
        raise dup.error(source, kind) from None


_JSON_TOKEN = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?|[{}]')  # whole strings, so "{" inside is text


def _json_duplicate(text: str) -> _DuplicateKey | None:
    """The first key named twice in one object of valid JSON ``text``, with both lines."""
    stack: list[dict[str, int]] = []
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token == "{":
            stack.append({})
        elif token == "}":
            stack.pop()
        elif m.group(2) and stack:
            key = json.loads(m.group(1))
            line = text.count("\n", 0, m.start()) + 1
            if key in stack[-1]:
                return _DuplicateKey(key, line, stack[-1][key])
            stack[-1][key] = line
    return None


def _parse(text: str, kind: str, source: str) -> tuple[Any, Locations]:
    if kind == "toml":
        try:
            data = tomllib.loads(text)
        except RecursionError:
            raise _error(source, None, "malformed TOML: nested too deeply") from None
        except tomllib.TOMLDecodeError as exc:
            found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            line = getattr(exc, "lineno", None) or (found and int(found.group(1)))
            raise _error(source, line or None, f"malformed TOML: {exc}") from None
        return data, Locations(source, _toml_lines(text))
    if kind == "json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise _error(source, exc.lineno, f"malformed JSON: {exc.msg}") from None
        except RecursionError:
            raise _error(source, None, "malformed JSON: nested too deeply") from None
    try:
        loader = _Loader(text)  # a SafeLoader: builds plain data only, never objects
        try:
            node = loader.get_single_node()
            lines = _yaml_lines(node)
            if kind == "yaml":
                data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        if kind == "json":  # JSON that YAML cannot compose: keep the data, lose the lines
            return data, Locations(source)
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _error(source, mark.line + 1 if mark is not None else None, f"malformed YAML: {problem}") from None
    except RecursionError:
        raise _error(source, None, f"malformed {kind.upper()}: nested too deeply") from None
    return data, Locations(source, lines)


def _error(source: str, line: int | None, message: str) -> ConfigError:
    return ConfigError(message, where=Where(source, line))


def read_plan_file(path: str | Path) -> tuple[Any, Locations]:
    """Read and parse a plan file; every failure is a :class:`ConfigError` naming the file."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise _error(str(path), None, f"unknown plan file type {path.suffix!r} (use .yaml, .yml, .toml or .json)")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
        if len(raw) > MAX_PLAN_BYTES:
            raise _error(str(path), None, f"larger than {MAX_PLAN_BYTES // 2**20} MiB, stopped reading: "
                                  "a plan file is a few KB (is this the right file?)")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise _error(str(path), None, "no such file") from None
    except IsADirectoryError:
        raise _error(str(path), None, "is a directory, not a plan file") from None
    except PermissionError:
        raise _error(str(path), None, "permission denied") from None
    except UnicodeDecodeError as exc:
        raise _error(str(path), None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _error(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    return parse_plan_text(text, kind, str(path))
