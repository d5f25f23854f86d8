"""Rendering a report: a terminal table and Markdown (``--format json`` is the dict).

Names, models, verdicts and error messages come from the logs: they are shown as text
(:func:`~shim.base.text.printable`, rich ``Text``), never parsed as markup. In Markdown
each is escaped (:func:`_md`): a task named ``[x](http://...)`` is no link in a pull
request, ``*a*`` no emphasis, and a ``|`` cannot end a cell.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shim.analysis.report_ttft import ttft_text
from shim.analysis.report_verdict import (
    abandoned_line,
    dropped_line,
    held_line,
    untasked_line,
)
from shim.base.text import printable

__all__ = ["diff_paths_line", "judge_text", "markdown", "problem_lines", "quality_text", "table"]

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


def quality_text(task: dict[str, Any]) -> str:
    """``0.812 [0.801..0.823]``: the mean content score with its 95 % interval, and the
    relative quality the gate reads when legacy's own noise was measured; ``-``
    without scores."""
    found = task.get("quality")
    if not found:
        return "-"
    low, high = found["ci95"]
    text = f"{found['mean']:.3f} [{low:.3f}..{high:.3f}]"
    if found["relative"]["against_noise"]:
        text += f" (rel. {found['relative']['mean']:.3f})"
    return text


def diff_paths_line(task: dict[str, Any], shown: int = 5) -> str | None:
    """``kiwi.ocr: paths that differ: items[].name 12.0 % (noise 0.5 %); totals.total
    8.0 % (content); ...``: the task's most frequent diff paths beyond legacy's noise,
    in shape or (``content``) in value; None when none differ."""
    found = task.get("diff_paths") or []
    if not found:
        return None
    parts = [
        f"{p['path']} {_pct(p['rate'])}"
        + (f" (noise {_pct(p['noise_rate'])})" if p["noise_rate"] is not None else "")
        + (" (content)" if p.get("kind") == "value" else "")
        for p in found[:shown]
    ]
    return f"{task['task']}: paths that differ: " + "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun if n == 1 else noun + ('es' if noun.endswith('s') else 's')}"


def judge_text(task: dict[str, Any]) -> str:
    """``12 wins, 30 losses, 58 ties of 100 (position bias +0.05 over 20 pairs in both
    orders; skipped: budget 5)``: the judge's verdicts on the candidate; ``-`` without."""
    found = task.get("judge")
    if not found:
        return "-"
    text = (
        f"{_count(found['wins'], 'win')}, {_count(found['losses'], 'loss')}, "
        f"{_count(found['ties'], 'tie')} of {found['n']:,}"
    )
    notes = []
    if found["position_bias"] is not None:
        notes.append(
            f"position bias {found['position_bias']:+.2f} over "
            f"{_count(found['both_orders'], 'pair')} in both orders"
        )
    if found["skipped"]:
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(found["skipped"].items()))
        notes.append(f"skipped: {skipped}")
    if found.get("failure"):
        notes.append(f"the judge failed: {found['failure']}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _row(task: dict[str, Any]) -> list[str]:
    lat = task["latency_ms"]
    return [
        task["task"],
        f"{task['n']:,}",
        f"{_pct(task['legacy_error_rate'])} / {_pct(task['candidate_error_rate'])}",
        _mismatch(task),
        quality_text(task),
        ", ".join(f"{k} {v}" for k, v in task["model_verdicts"].items()) or "-",
        f"{_ms(lat['legacy'], 'p50')} / {_ms(lat['candidate'], 'p50')}",
        f"{_ms(lat['legacy'], 'p95')} / {_ms(lat['candidate'], 'p95')}",
        _ratio(task, "p50"),
        f"{task['dropped']:,}",
        f"{task.get('shim_errors', 0):,}",
        f"{task.get('comparator_errors', 0):,}",
    ]


def _shown(report: dict[str, Any]) -> list[int]:
    """Which columns to show: quality only where a task has scores, the error counts
    only where a task has some, so a clean report keeps to one line in 160 columns."""
    tasks = report["tasks"]
    hidden = set()
    if not any(t.get("quality") for t in tasks):
        hidden.add(_HEAD.index("quality [95 % CI]"))
    if not any(t.get("shim_errors") or t.get("comparator_errors") for t in tasks):
        hidden |= {len(_HEAD) - 2, len(_HEAD) - 1}
    return [i for i in range(len(_HEAD)) if i not in hidden]


# "L / T": legacy / task path
_HEAD = [
    "task",
    "pairs",
    "errors L / T",
    "mismatch",
    "quality [95 % CI]",
    "models",
    "p50 ms L / T",
    "p95 ms L / T",
    "p50 ratio [95 % CI]",
    "dropped",
    "shim errors",
    "comparator errors",
]


def _title(report: dict[str, Any]) -> str:
    title = f"{report['records']:,} records, {report['bad_lines']:,} bad lines"
    skipped = len(report.get("problems") or ())
    return title + (f", {skipped} problem(s) in the logs (below)" if skipped else "")


def problem_lines(report: dict[str, Any]) -> list[str]:
    """What was left out of the logs or not counted, one line per file and kind."""
    return [
        f"skipped: {printable(p['file'])}: {printable(p['message'])}"
        if p.get("file")
        else f"skipped: {printable(p['message'])}"
        for p in report.get("problems") or ()
    ]


def table(report: dict[str, Any]) -> Group:
    """A rich table, one row per task with its verdict coloured, then the reasons and
    what was skipped."""
    out = Table(title=Text(_title(report)), title_justify="left")
    out.add_column("verdict", no_wrap=True)
    shown = _shown(report)
    for name in (_HEAD[i] for i in shown):
        out.add_column(
            name,
            justify="left" if name in ("task", "models") else "right",
            no_wrap=True,
        )
    reasons = []
    for task in report["tasks"]:
        colour = _COLOURS[task["verdict"]]
        row = _row(task)
        cells = [Text(printable(row[i])) for i in shown]
        out.add_row(Text(task["verdict"], style=f"bold {colour}"), *cells)
        reasons.append(
            Text(printable(task["task"]), style=colour)
            + Text(": " + printable("; ".join(task["reasons"])))
        )
    reasons += [Text(printable(line)) for line in _paths(report)]
    untasked = untasked_line(report)
    if untasked:
        reasons.append(Text(printable(untasked), style="yellow"))
    reasons += [Text(printable(line)) for line in _held(report)]
    reasons += [Text(line, style="yellow") for line in problem_lines(report)]
    return Group(out, *reasons)


def _paths(report: dict[str, Any]) -> list[str]:
    """Per task, below the table: the paths that differ most, the judge's verdicts."""
    lines = []
    for task in report["tasks"]:
        line = diff_paths_line(task)
        if line is not None:
            lines.append(line)
        if task.get("judge"):
            lines.append(f"{task['task']}: judge: {judge_text(task)}")
        if task.get("ttft"):
            lines.append(f"{task['task']}: time to first chunk: {ttft_text(task)}")
    return lines


def _held(report: dict[str, Any]) -> list[str]:
    """Each task's comparisons dropped, calls served by legacy for side effects, and
    streams left early, where a task has some."""
    lines = (f(task) for task in report["tasks"] for f in (dropped_line, held_line, abandoned_line))
    return [line for line in lines if line]


# What Markdown (and GitHub's) gives a meaning to inside a line: a backslash (it
# escapes what follows), code, emphasis, links and images, HTML, strikethrough and the
# cell border. Each is escaped with a backslash, which any ASCII punctuation takes.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~])")


def _md(value: object) -> str:
    """``value`` as Markdown text that renders as itself: printable, and every
    character Markdown gives a meaning to in a line escaped."""
    return _MARKDOWN.sub(r"\\\1", printable(value))


def markdown(report: dict[str, Any]) -> str:
    """A Markdown summary for a pull request."""
    lines = [
        f"**task-shim report**: {_title(report)}",
        "",
        "| verdict | " + " | ".join(_HEAD) + " |",
        "|---|" + "---|" * len(_HEAD),
    ]
    for task in report["tasks"]:
        cells = " | ".join(_md(cell) for cell in _row(task))
        lines.append(f"| **{task['verdict']}** | {cells} |")
    lines.append("")
    for task in report["tasks"]:
        lines.append(
            f"- **{_md(task['task'])}** ({task['verdict']}): " + _md("; ".join(task["reasons"]))
        )
    lines += [f"- {_md(line)}" for line in _paths(report)]
    untasked = untasked_line(report)
    if untasked:
        lines.append(f"- {_md(untasked)}")
    lines += [f"- {_md(line)}" for line in _held(report)]
    lines += [f"- {_md(line)}" for line in problem_lines(report)]
    return "\n".join(lines) + "\n"
