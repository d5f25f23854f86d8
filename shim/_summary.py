"""Per-task figures from a comparison log, for the demo's closing table."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

__all__ = ["summarise"]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(log: Path) -> list[dict[str, Any]]:
    """Calls, model verdicts, structure match rate, latency percentiles and drops."""
    tasks: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "records": 0,
            "verdicts": Counter(),
            "matches": 0,
            "compared": 0,
            "legacy_ms": [],
            "candidate_ms": [],
            "candidate_errors": 0,
            "dropped": 0,
        }
    )
    with log.open() as handle:
        for line in handle:
            record = json.loads(line)
            name = f"{record.get('product')}.{record.get('task')}"
            if record["event"] == "shim.dropped":
                tasks[name]["dropped"] += record["count"]
            if record["event"] != "shim.comparison":
                continue
            row = tasks[name]
            row["records"] += 1
            row["verdicts"][record["model"]["verdict"]] += 1
            if record["legacy"]["ok"]:
                row["legacy_ms"].append(record["legacy"]["latency_ms"])
            if record["candidate"]["ok"]:
                row["candidate_ms"].append(record["candidate"]["latency_ms"])
            else:
                row["candidate_errors"] += 1
            if record["structure"]["match"] is not None:
                row["compared"] += 1
                row["matches"] += bool(record["structure"]["match"])
    out = []
    for name in sorted(tasks):
        row = tasks[name]
        out.append(
            {
                "task": name,
                "records": row["records"],
                "dropped": row["dropped"],
                "model_verdicts": dict(row["verdicts"]),
                "structure_match_rate": row["matches"] / row["compared"]
                if row["compared"]
                else None,
                "candidate_errors": row["candidate_errors"],
                "latency_ms": {
                    side: {
                        "p50": _percentile(row[f"{side}_ms"], 50),
                        "p95": _percentile(row[f"{side}_ms"], 95),
                    }
                    for side in ("legacy", "candidate")
                },
            }
        )
    return out
