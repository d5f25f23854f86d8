"""Rendering a report: a terminal table and Markdown (``--format json`` is the dict)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shim.analysis.report_verdict import held_line, untasked_line

__all__ = ["markdown", "table"]

_COLOURS = {"PROMOTE": "green", "HOLD": "yellow", "ROLLBACK": "red"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _ms(block: dict[str, Any], q: str) -> str:
    value = block.get(q)
    return "-" if value is None else f"{value:,.0f}"


def _ratio(task: dict[str, Any], q: str) -> str:
    found = task["latency_ratio"].get(q)
    return "-" if not found else f"{found['ratio']:.2f} [{found['low']:.2f}..{found['high']:.2f}]"


def _mismatch(task: dict[str, Any]) -> str:
    """The raw rate (1 - structure_match_rate), and the adjusted one the gates use
    when legacy's own noise explains some of it."""
    raw = task.get("mismatch_rate")
    if raw is None:
        return "-"
    if task.get("noise_explained"):
        return f"{_pct(raw)} (adj. {_pct(task['mismatch_rate_adjusted'])})"
    return _pct(raw)


def _row(task: dict[str, Any]) -> list[str]:
    lat = task["latency_ms"]
    return [
        task["task"],
        f"{task['n']:,}",
        f"{_pct(task['legacy_error_rate'])} / {_pct(task['candidate_error_rate'])}",
        _mismatch(task),
        ", ".join(f"{k} {v}" for k, v in task["model_verdicts"].items()) or "-",
        f"{_ms(lat['legacy'], 'p50')} / {_ms(lat['candidate'], 'p50')}",
        f"{_ms(lat['legacy'], 'p95')} / {_ms(lat['candidate'], 'p95')}",
        _ratio(task, "p50"),
        f"{task['dropped']:,}",
        f"{task.get('shim_errors', 0):,}",
        f"{task.get('comparator_errors', 0):,}",
    ]


def _width(report: dict[str, Any], *, always: bool) -> int:
    """How many of the columns to show: the error counts only where a task has some
    (or ``always``), so a clean report keeps to one line in 160 columns."""
    errors = any(t.get("shim_errors") or t.get("comparator_errors") for t in report["tasks"])
    return len(_HEAD) if always or errors else len(_HEAD) - 2


# "L / T": legacy / task path
_HEAD = [
    "task",
    "pairs",
    "errors L / T",
    "mismatch",
    "models",
    "p50 ms L / T",
    "p95 ms L / T",
    "p50 ratio [95 % CI]",
    "dropped",
    "shim errors",
    "comparator errors",
]


def table(report: dict[str, Any]) -> Group:
    """A rich table, one row per task with its verdict coloured, then the reasons."""
    out = Table(
        title=f"{report['records']:,} records, {report['bad_lines']:,} bad lines",
        title_justify="left",
    )
    out.add_column("verdict", no_wrap=True)
    shown = _width(report, always=False)
    for name in _HEAD[:shown]:
        out.add_column(
            name,
            justify="left" if name in ("task", "models") else "right",
            no_wrap=True,
        )
    reasons = []
    for task in report["tasks"]:
        colour = _COLOURS[task["verdict"]]
        out.add_row(f"[bold {colour}]{task['verdict']}[/]", *_row(task)[:shown])
        reasons.append(
            Text.from_markup(f"[{colour}]{escape(task['task'])}[/]: ")
            + Text("; ".join(task["reasons"]))
        )
    untasked = untasked_line(report)
    if untasked:
        reasons.append(Text(untasked, style="yellow"))
    reasons += [Text(line) for line in _held(report)]
    return Group(out, *reasons)


def _held(report: dict[str, Any]) -> list[str]:
    """Each task's calls served by legacy for side effects, where a task has some."""
    return [line for line in map(held_line, report["tasks"]) if line]


def markdown(report: dict[str, Any]) -> str:
    """A Markdown summary for a pull request."""
    lines = [
        f"**task-shim report**: {report['records']:,} records, {report['bad_lines']:,} bad lines",
        "",
        "| verdict | " + " | ".join(_HEAD) + " |",
        "|---|" + "---|" * len(_HEAD),
    ]
    for task in report["tasks"]:
        lines.append(f"| **{task['verdict']}** | " + " | ".join(_row(task)) + " |")
    lines.append("")
    for task in report["tasks"]:
        lines.append(f"- **{task['task']}** ({task['verdict']}): " + "; ".join(task["reasons"]))
    untasked = untasked_line(report)
    if untasked:
        lines.append(f"- {untasked}")
    lines += [f"- {line}" for line in _held(report)]
    return "\n".join(lines) + "\n"
