"""``shim report --format html``: one self-contained page (inline CSS and SVG, no
scripts, no network) with a verdict banner and, per task, the latency distributions of
both paths and the rates with their intervals."""

from __future__ import annotations

import html
from typing import Any

from shim.analysis.report_format import diff_paths_line, judge_text, problem_lines, quality_text
from shim.analysis.report_ttft import ttft_text
from shim.analysis.report_verdict import (
    abandoned_line,
    dropped_line,
    held_line,
    untasked_line,
)
from shim.base.text import printable

__all__ = ["render_html"]

_COLOURS = {"PROMOTE": "#1a7f37", "HOLD": "#9a6700", "ROLLBACK": "#cf222e"}
_LEGACY, _TASK = "#57606a", "#0969da"


def _e(value: Any) -> str:
    """``value`` as HTML text: escaped (quotes too, for attributes), and its control
    characters written out, as the logs it comes from may hold anything."""
    return html.escape(printable(value))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _latency_svg(task: dict[str, Any]) -> str:
    hist = task.get("latency_histogram")
    if not hist:
        return "<p class='muted'>No latency pairs yet.</p>"
    width, height, pad = 560, 180, 30
    counts = hist["legacy"] + hist["candidate"]
    top = max(counts) or 1
    bins = len(hist["legacy"])
    step = (width - 2 * pad) / bins
    parts = [
        f"<svg role='img' aria-label='latency distribution of {_e(task['task'])}' "
        f"width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"
    ]
    for side, colour, offset in (("legacy", _LEGACY, 0.0), ("candidate", _TASK, 0.5)):
        for i, count in enumerate(hist[side]):
            h = (height - 2 * pad) * count / top
            x = pad + i * step + offset * step
            parts.append(
                f"<rect x='{x:.1f}' y='{height - pad - h:.1f}' width='{step / 2:.1f}' "
                f"height='{h:.1f}' fill='{colour}'><title>{side}: {count} calls "
                f"{hist['edges_ms'][i]:.0f} to {hist['edges_ms'][i + 1]:.0f} ms</title>"
                "</rect>"
            )
    edges = hist["edges_ms"]
    for i in (0, bins // 2, bins):
        x = pad + i * step
        parts.append(
            f"<text x='{x:.1f}' y='{height - 8}' font-size='11' "
            f"text-anchor='middle'>{edges[i]:,.0f} ms</text>"
        )
    parts.append(
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' "
        f"y2='{height - pad}' stroke='#8c959f'/>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _rates_svg(task: dict[str, Any]) -> str:
    rows = [
        ("legacy errors", task["intervals"]["legacy_error_rate"], _LEGACY),
        ("task-path errors", task["intervals"]["candidate_error_rate"], _TASK),
        ("structure mismatch", task["intervals"]["mismatch_rate"], _TASK),
    ]
    if task.get("noise_explained"):  # the rate the gates use, when noise changes it
        rows.append(("mismatch, adjusted", task["intervals"]["mismatch_rate_adjusted"], _TASK))
    rows = [(label, r, c) for label, r, c in rows if r]
    if not rows:
        return ""
    scale = max(0.05, *(r["high"] for _, r, _ in rows)) * 1.1
    width, row_h, left = 560, 26, 150
    height = row_h * len(rows) + 20
    parts = [
        f"<svg role='img' aria-label='rates with 95 % intervals' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}'>"
    ]
    for i, (label, r, colour) in enumerate(rows):
        y = 10 + i * row_h

        def x(v: float) -> float:
            return float(left + (width - left - 70) * v / scale)

        parts.append(f"<text x='0' y='{y + 14}' font-size='12'>{_e(label)}</text>")
        parts.append(
            f"<rect x='{left}' y='{y + 4}' width='{x(r['rate']) - left:.1f}' "
            f"height='12' fill='{colour}' opacity='0.8'/>"
        )
        parts.append(
            f"<line x1='{x(r['low']):.1f}' y1='{y + 10}' x2='{x(r['high']):.1f}' "
            f"y2='{y + 10}' stroke='#24292f' stroke-width='2'/>"
        )
        parts.append(f"<text x='{width - 65}' y='{y + 14}' font-size='12'>{_pct(r['rate'])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _card(task: dict[str, Any]) -> str:
    colour = _COLOURS[task["verdict"]]
    lat = task["latency_ms"]
    ratio = task["latency_ratio"].get("p50")
    facts = [
        ("pairs", f"{task['n']:,}"),
        (
            "served (legacy / task / fallback)",
            " / ".join(str(task["served"][k]) for k in ("legacy", "task", "legacy_fallback")),
        ),
        ("model verdicts", ", ".join(f"{k} {v}" for k, v in task["model_verdicts"].items()) or "-"),
        (
            "latency p50 / p95 / p99, legacy",
            " / ".join(
                "-" if lat["legacy"][q] is None else f"{lat['legacy'][q]:,.0f} ms"
                for q in ("p50", "p95", "p99")
            ),
        ),
        (
            "latency p50 / p95 / p99, task path",
            " / ".join(
                "-" if lat["candidate"][q] is None else f"{lat['candidate'][q]:,.0f} ms"
                for q in ("p50", "p95", "p99")
            ),
        ),
        (
            "p50 ratio (95 % interval)",
            "-"
            if not ratio
            else f"{ratio['ratio']:.2f} ({ratio['low']:.2f} to {ratio['high']:.2f})",
        ),
        ("content quality (95 % interval)", quality_text(task)),
        ("paths that differ most", _paths_text(task)),
        ("judge's verdicts on the task path", judge_text(task)),
        ("time to first chunk (streams)", ttft_text(task)),
        ("dropped comparisons", f"{task['dropped']:,}"),
        (
            "comparator errors",
            f"{task.get('comparator_errors', 0):,}"
            + (
                f" ({task['comparator_error_example']})"
                if task.get("comparator_error_example")
                else ""
            ),
        ),
        (
            "shim errors",
            f"{task.get('shim_errors', 0):,}"
            + "".join(
                f"; {op} {e['count']:,}" + (f" ({e['example']})" if e.get("example") else "")
                for op, e in (task.get("shim_errors_by_operation") or {}).items()
            ),
        ),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    reasons = "".join(f"<li>{_e(r)}</li>" for r in task["reasons"])
    notes = (f(task) for f in (dropped_line, held_line, abandoned_line))
    return (
        f"<section class='task'><h2>{_e(task['task'])} <span class='badge' "
        f"style='background:{colour}'>{_e(task['verdict'])}</span></h2>"
        f"<ul class='reasons'>{reasons}</ul>"
        + "".join(f"<p class='muted'>{_e(note)}</p>" for note in notes if note)
        + f"<div class='grid'><table>{rows}</table>"
        f"<div><h3>Latency, legacy <span style='color:{_LEGACY}'>■</span> and task path "
        f"<span style='color:{_TASK}'>■</span></h3>{_latency_svg(task)}"
        f"<h3>Rates with 95 % intervals</h3>{_rates_svg(task)}</div></div></section>"
    )


def _paths_text(task: dict[str, Any]) -> str:
    line = diff_paths_line(task)
    return "-" if line is None else line.partition(": paths that differ: ")[2]


def render_html(report: dict[str, Any]) -> str:
    """The whole page."""
    verdicts = [t["verdict"] for t in report["tasks"]]
    worst = (
        "ROLLBACK"
        if "ROLLBACK" in verdicts
        else "HOLD"
        if "HOLD" in verdicts
        else ("PROMOTE" if verdicts else "HOLD")
    )
    summary = (
        ", ".join(
            f"{verdicts.count(v)} {v}" for v in ("PROMOTE", "HOLD", "ROLLBACK") if v in verdicts
        )
        or "no tasks"
    )
    cards = "".join(_card(t) for t in report["tasks"])
    untasked = untasked_line(report)
    note = f"<div>{_e(untasked)}</div>" if untasked else ""
    note += "".join(f"<div>{_e(line)}</div>" for line in problem_lines(report))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>task-shim report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #24292f; }}
header {{ padding: 18px 28px; color: white; background: {_COLOURS[worst]}; }}
header h1 {{ margin: 0 0 4px; font-size: 22px; }}
main {{ padding: 8px 28px 40px; }}
.task {{ border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 18px; margin: 18px 0; }}
.badge {{ color: white; border-radius: 12px; padding: 2px 10px; font-size: 13px; }}
.grid {{ display: grid; grid-template-columns: minmax(280px, 1fr) 580px; gap: 18px; }}
th {{ text-align: left; font-weight: 500; color: #57606a; padding: 3px 12px 3px 0; }}
h3 {{ font-size: 13px; margin: 6px 0; }}
.muted {{ color: #57606a; }}
</style></head><body>
<header><h1>task-shim report: {summary}</h1>
<div>{report["records"]:,} records, {report["bad_lines"]:,} bad lines</div>{note}</header>
<main>{cards or "<p class='muted'>No comparisons in these logs.</p>"}</main>
</body></html>
"""
