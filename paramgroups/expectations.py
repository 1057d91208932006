"""What ``paramgroups check --expect-frozen/--expect-trainable`` reports: the modules an
expectation selects that are not frozen (or trainable) as expected, largest first."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Audit


def expectation_violations(report: Audit, pattern: str, trainable: bool) -> list[str]:
    """One line per module (or parameter) that ``pattern`` selects and that is not
    ``trainable`` as expected: the largest modules whose selected parameters all break it."""
    rows = report.select(match=pattern).parameters
    if not rows:
        return [f"expectation {pattern!r} selects no parameter"]
    bad = {r["name"] for r in rows if r["trainable"] != trainable}
    under: dict[str, list[str]] = {}  # module name -> the selected parameters below it
    for r in rows:
        parts = r["name"].split(".")
        for depth in range(1, len(parts)):
            under.setdefault(".".join(parts[:depth]), []).append(r["name"])
    want, wrong = ("trainable", "frozen") if trainable else ("frozen", "trainable")
    out, done = [], set()
    for r in rows:
        name = r["name"]
        if name not in bad or name in done:
            continue
        parts = name.split(".")
        top = next((".".join(parts[:d]) for d in range(1, len(parts))
                    if all(n in bad for n in under[".".join(parts[:d])])), None)
        if top is None:
            out.append(f"{name} is {wrong}, expected {want} (by {pattern!r})")
            done.add(name)
            continue
        members = under[top]
        done.update(members)
        count = f"{len(members):,} parameter{'s' if len(members) > 1 else ''}"
        out.append(f"{top} ({count}) is {wrong}, expected {want} (by {pattern!r})")
    return out
