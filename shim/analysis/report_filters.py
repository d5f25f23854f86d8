"""The filters of ``shim report`` (``--since``, ``--until``, ``--stage``), checked before
any log is read: a filter that cannot mean anything is an input error, never an empty
report."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shim.analysis.report_logs import ReportError

__all__ = ["STAGES", "Filters", "check_filters", "parse_time"]

#: The stages a comparison record can be in (``flags.stage_of``).
STAGES = ("off", "shadow", "canary", "live")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_FORMAT = (
    "use ISO 8601 (2026-12-01, 2026-12-01T12:00:00Z or 2026-12-01T14:00:00+02:00; "
    "without a zone, UTC) or a duration back from now (90m, 24h, 7d)"
)


def parse_time(value: str, *, option: str, now: datetime | None = None) -> str:
    """``value`` as the records stamp time (UTC, microseconds, ``Z``), so that the logs
    can be compared as text; ReportError saying the expected format otherwise."""
    duration = _DURATION.match(value)
    if duration:
        amount, unit = float(duration[1]), _UNITS[duration[2]]
        moment = (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ReportError(f"{option} {value!r} is not a time: {_FORMAT}") from None
        if moment.tzinfo is None:  # the records are in UTC; so is a time without a zone
            moment = moment.replace(tzinfo=UTC)
    # Records carry microseconds always (shim.records.observe), so the same layout
    # orders as text exactly as the instants do.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Filters:
    """The filters of one report, checked: times as the records write them."""

    task: str | None = None
    since: str | None = None
    until: str | None = None
    stage: str | None = None

    def describe(self) -> str:
        """The filters as options, for messages (empty without any)."""
        given = [
            f"--{name} {value}"
            for name, value in (
                ("task", self.task),
                ("since", self.since),
                ("until", self.until),
                ("stage", self.stage),
            )
            if value
        ]
        return " ".join(given)


def check_filters(
    *,
    task: str | None,
    since: str | None,
    until: str | None,
    stage: str | None,
    now: datetime | None = None,
) -> Filters:
    """The filters, checked and normalised; ReportError names the one that is wrong."""
    now = now or datetime.now(UTC)
    lower = parse_time(since, option="--since", now=now) if since else None
    upper = parse_time(until, option="--until", now=now) if until else None
    if lower and upper and lower >= upper:
        raise ReportError(
            f"--since {since!r} ({lower}) is not before --until {until!r} ({upper}): "
            "nothing can be in between"
        )
    if stage is not None and stage not in STAGES:
        raise ReportError(f"--stage {stage!r} is not a stage: use one of {', '.join(STAGES)}")
    return Filters(task=task, since=lower, until=upper, stage=stage)
