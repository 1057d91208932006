"""The audit as text: terminal and Markdown tables (tabulate) and CSV.

Tables keep a terminal's width by wrapping the name column at dots and spaces; counts get
thousands separators, tied parameters show their other names and frozen ones who froze them.
The data and its JSON form live in :mod:`paramgroups.report`.
"""

from __future__ import annotations

import csv
import io
import re
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .report import Audit

WIDTHS = {"name": 48, "module": 20, "rules": 14, "options": 28}  # wrap columns past these widths
TABLE_WIDTH = 120  # a terminal's width: tables wrap their name column to fit
GROUP_COLUMNS = ("index", "name", "params", "numel", "base_lr", "lr", "weight_decay", "options")
OPTIMIZER_COLUMNS = ("optimizer", "class", "groups", "params", "numel", "trainable", "state", "step")


def table(report: Audit, tablefmt: str = "simple", width: int | None = TABLE_WIDTH) -> str:
    """Parameters, then groups, then (with several optimizers) who steps what, then totals and
    problems, as tabulate tables whose name columns wrap to fit ``width`` (``None``: never)."""
    from tabulate import tabulate

    cols = report.columns()
    params = [[_rich_cell(r, c) for c in cols] for r in report.parameters]
    group_cols = report.group_columns()
    groups = [[_rich_cell(g, c) for c in group_cols] for g in report.groups]
    parts = [_fit(params, _headers(report, cols), tablefmt, [WIDTHS.get(c) for c in cols], 0, width),
             _fit(groups, _headers(report, ("group", *group_cols[1:])), tablefmt,
                  [WIDTHS.get(c) for c in group_cols], 1, width)]
    if report.several_optimizers:
        parts.append(tabulate(optimizer_rows(report), headers=list(OPTIMIZER_COLUMNS),
                              tablefmt=tablefmt, disable_numparse=True))
    parts.append(tabulate(totals_rows(report), tablefmt=tablefmt, disable_numparse=True))
    if report.problems:
        parts.append("\n".join(f"problem: {p}" for p in report.problems))
    return "\n\n".join(parts)


def csv_text(report: Audit) -> str:
    """One CSV row per parameter, with the table's columns."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = report.columns()
    writer.writerow(cols)
    for r in report.parameters:
        writer.writerow([cell(r[c], c) for c in cols])
    return buf.getvalue()


def _headers(report: Audit, cols: Sequence[str]) -> list[str]:
    """Column titles; the two LR columns say which LR they show."""
    titles = {"base_lr": "base lr", "lr": f"lr@{report.lr_at.replace(' ', '')}", "weight_decay": "wd"}
    return [titles.get(c, c) for c in cols]


def totals_rows(report: Audit) -> list[list[str]]:
    t = report.totals
    pct = (lambda n: percent(n, t["numel"])) if t["numel"] else (lambda n: "-")
    state = t["optimizer_state_bytes"]
    return [["parameters", f"{t['params']:,}"], ["numel", f"{t['numel']:,}"],
            ["trainable", f"{t['trainable']:,} ({pct(t['trainable'])})"],
            ["frozen", f"{t['frozen']:,} ({pct(t['frozen'])})"],
            ["optimizer state", _state(state)],
            ["optimizer step", f"{report.optimizer} ({_paths(report)})"]]


def _paths(report: Audit) -> str:
    """The step implementation: the optimizer's, or each inner optimizer's by name."""
    if not report.several_optimizers:
        return str(report.implementation)
    return ", ".join(f"{o['name']}: {o['implementation']}" for o in report.optimizers)


def optimizer_rows(report: Audit) -> list[list[str]]:
    """One row per inner optimizer: what it steps, the state it keeps and its code path."""
    total = report.totals["numel"]
    return [[o["name"], o["class"], f"{o['groups']:,}", f"{o['params']:,}",
             f"{o['numel']:,} ({percent(o['numel'], total) if total else '-'})", f"{o['trainable']:,}",
             _state(o["optimizer_state_bytes"]), o["implementation"]] for o in report.optimizers]


def _state(nbytes: int | None) -> str:
    return "unknown" if nbytes is None else byte_size(nbytes)


def _fit(rows: list[list[str]], headers: list[str], tablefmt: str, widths: list[int | None],
         wrap: int, limit: int | None) -> str:
    """A tabulate table whose column ``wrap`` (the names) wraps at dots and spaces so the table
    stays within ``limit`` characters, down to 16 characters for that column (``None``: no
    limit, no wrapping)."""
    from tabulate import tabulate

    widths = list(widths) if limit is not None else [None] * len(widths)
    cap, widths[wrap] = widths[wrap], None  # that column is wrapped here, at name boundaries

    def render(width: int | None) -> str:
        cells = rows if width is None else [[*r[:wrap], _wrap_name(r[wrap], width), *r[wrap + 1:]]
                                            for r in rows]
        return tabulate(cells, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                        maxcolwidths=widths)

    width = cap
    for _ in range(3):  # wrapping at boundaries may land short of the width asked for
        text = render(width)
        over = max(map(len, text.splitlines()), default=0) - (limit or 0)
        if limit is None or not rows or over <= 0:
            return text
        now = max(len(line) for r in rows for line in
                  (_wrap_name(r[wrap], width) if width else str(r[wrap])).splitlines())
        if now <= 16:
            return text
        width = max(16, now - over)
    return render(width)


def _wrap_name(text: str, width: int) -> str:
    """``text`` in lines of at most ``width``, broken after dots, commas and spaces (inside a
    segment only when one segment alone is wider)."""
    lines, line = [], ""
    for piece in re.split(r"(?<=[., ])", text):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    lines.append(line)
    return "\n".join(x.rstrip() for x in lines if x.strip())


def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` to one decimal, never rounding a non-zero share to 0.0% or a
    partial one to 100.0%."""
    value = 100.0 * part / whole
    if 0 < value < 0.05:
        return "<0.1%"
    if 99.95 <= value < 100:
        return ">99.9%"
    return f"{value:.1f}%"


def _rich_cell(row: dict[str, Any], column: str) -> str:
    """A table cell: counts with thousands separators, tied names show their other names,
    frozen rows say who froze them."""
    value = row[column]
    if column in ("numel", "params") and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = cell(value, column)
    if column == "name" and row.get("aliases"):
        return f"{text} (= {', '.join(row['aliases'])})"
    if column == "trainable" and row["trainable"] is False and row.get("frozen_by"):
        return f"{text} ({row['frozen_by']})"
    return text


def cell(value: Any, column: str = "") -> str:
    """A value as CSV and table cells show it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if column == "shape" and isinstance(value, list):
        return "x".join(map(str, value)) or "scalar"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value)


def byte_size(n: int) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover
