"""What a replication bench scenario hands back (figures with their goals and the commands that
produced them), the summary table, and the JSON file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float | None  # None: not measured (the scenario failed before it)
    unit: str
    goal: str = ""  # e.g. "<= 50": how the value compares with what we aim for
    met: bool | None = None  # None: no goal, or nothing to compare
    source: str = ""  # the label of the command (in Outcome.commands) that produced it

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        if abs(self.value) >= 100 or self.value == int(self.value):
            return f"{self.value:,.0f} {self.unit}".strip()
        return f"{self.value:,.2f} {self.unit}".strip()

    def verdict(self) -> str:
        return {None: "", True: "ok", False: "MISSED"}[self.met]


def at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


@dataclass(slots=True)
class Outcome:
    """One scenario's results: figures for the table, everything else for the JSON file."""

    scenario: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)  # label -> the exact command line
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": [asdict(f) for f in self.figures],
            "commands": self.commands,
            "data": self.data,
            "notes": self.notes,
            "error": self.error,
        }


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("scenario", "figure", "value", "goal", "", "command")]
    for outcome in outcomes:
        if outcome.error is not None:
            rows.append((outcome.scenario, "FAILED", outcome.error.splitlines()[0][:60], "", "", ""))
        for figure in outcome.figures:
            rows.append(
                (
                    outcome.scenario,
                    figure.name,
                    figure.value_text(),
                    figure.goal,
                    figure.verdict(),
                    figure.source,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def commands_text(outcomes: Sequence[Outcome]) -> str:
    """Every command that produced a figure, by scenario and label (the table's last column)."""
    lines = []
    for outcome in outcomes:
        for label, command in outcome.commands.items():
            lines.append(f"[{label}] {command}")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
