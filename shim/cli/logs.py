"""``shim report`` (statistics and verdicts over logs) and ``shim watch`` (gates as a log
grows, with an automatic rollback on a breach)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .options import FlagsOpt, PolicyOpt, guard, load_policy, open_store, say

if TYPE_CHECKING:
    from shim.flags.store import FlagStore
    from shim.ops.watch import Breach, Watch

__all__ = ["report", "watch"]


def report(
    logs: Annotated[
        list[str],
        typer.Argument(help="Logs: files, globs, .gz, .parquet archives, or - for stdin."),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="table, json, markdown, or html (with --out).")
    ] = "table",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Where --format html writes its page.", dir_okay=False),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only this product.task.")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="From this time, inclusive: ISO 8601 (2026-12-01, 2026-12-01T12:00:00Z; "
            "UTC without a zone) or a duration back from now (90m, 24h, 7d)."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to this time, exclusive; as --since.")
    ] = None,
    stage: Annotated[
        str | None,
        typer.Option(help="Only comparisons in this stage: off, shadow, canary or live."),
    ] = None,
    policy: PolicyOpt = None,
    export: Annotated[
        tuple[str, Path] | None,
        typer.Option(
            "--export",
            metavar="parquet PATH",
            help="Also archive the records read (within the filters) to a Parquet file: "
            "--export parquet archive.parquet. Reports read it back like a log.",
        ),
    ] = None,
) -> None:
    """Per-task statistics and a verdict (PROMOTE, HOLD, ROLLBACK); exit 1 on ROLLBACK,
    2 when the logs cannot be read or hold nothing within the filters."""
    from .report import ReportArgs, run_report

    args = ReportArgs(tuple(logs), fmt, out_file, task, since, until, stage, policy, export)
    code = run_report(args)
    if code:
        raise typer.Exit(code)


def watch(
    logs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="The comparison logs to follow as one (files, or globs: a file that "
            "comes to match one later is read too); none with --prometheus.",
            dir_okay=False,
            show_default=False,
            metavar="LOG",
        ),
    ] = None,
    auto_rollback: Annotated[
        bool, typer.Option("--auto-rollback", help="Roll a breaching task back (serve 0 %).")
    ] = False,
    flags: FlagsOpt = None,
    policy: PolicyOpt = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Read the log from its start, not its end.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Stop at the end of the log instead of following it.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait for a log that does not exist yet (read it from its start; with "
            "--once, evaluate it once it is there).",
        ),
    ] = False,
    wait_timeout: Annotated[
        float | None,
        typer.Option(
            "--wait-timeout",
            help="With --wait: give up (exit 2) when the log has not appeared after this "
            "many seconds \\[default: wait as long as it takes].",
            min=0,
        ),
    ] = None,
    prometheus: Annotated[
        str | None,
        typer.Option(
            "--prometheus",
            metavar="URL",
            help="Read the evidence from a Prometheus server that scrapes every replica's "
            "shim.metrics (http://prometheus:9090), instead of a LOG; with --once, all "
            "the counters hold.",
        ),
    ] = None,
    interval: Annotated[
        float,
        typer.Option("--interval", help="With --prometheus: seconds between reads.", min=0.1),
    ] = 5.0,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="With --auto-rollback: the log each rollback's record is appended to "
            "\\[default: the LOG, or the first of several; none with --prometheus].",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Test each task in LOG as it grows (always-valid bounds over its stage; rolling
    windows for routing, quality and judges), or, with --prometheus, in what every
    replica counted; with --auto-rollback, act on a breach. A LOG that is not there is
    an error (exit 2) unless --wait. With --once: exit 1 on a breach, 0 when tasks were
    evaluated without one, 2 when none could be."""
    from shim.ops.watch import Watch, follow, wait_for_log

    if prometheus is not None:
        if logs:
            say("watch a LOG or --prometheus URL, not both", error=True)
            raise typer.Exit(2)
        if wait or wait_timeout is not None:
            say("--wait is for a LOG; with --prometheus there is none to wait for", error=True)
            raise typer.Exit(2)
        if auto_rollback and record is None:
            say(
                "rollbacks are not recorded in a log; add --record LOG to append each "
                "one's record and reasons",
                error=True,
            )
        _check_record(record)
        _watch_prometheus(
            prometheus, auto_rollback, flags, policy, from_start, once, interval, record
        )
        return
    if not logs:
        say("watch needs a LOG (or --prometheus URL)", error=True)
        raise typer.Exit(2)
    _check_record(record)
    if len(logs) > 1 or _is_glob(logs[0]):
        if wait or wait_timeout is not None:
            say("--wait is for one LOG; a glob's logs are read as they appear", error=True)
            raise typer.Exit(2)
        _watch_many(logs, auto_rollback, flags, policy, from_start, once, record)
        return
    log = logs[0]
    found = _watched(log)
    if found is None and not wait:
        say(f"{log}: no such log file; to wait for it to appear, add --wait", error=True)
        raise typer.Exit(2)
    watcher = Watch(load_policy(policy))
    store = open_store(flags) if auto_rollback else None
    breaches = 0
    try:
        if found is None:
            # Every line of a log that appears later is new: read it from its start.
            from_start = True
            say(f"waiting for {log} to appear")
            if not wait_for_log(log, timeout=wait_timeout):
                say(f"{log} did not appear within {wait_timeout:g} s", error=True)
                raise typer.Exit(2)
        else:
            log = found
        say(f"watching {log}" + (" (auto-rollback on)" if auto_rollback else ""))
        for row in follow(log, from_start=from_start, once=once):
            breach = watcher.feed(row)
            if breach is not None:
                breaches += _breached(breach, store, record or log)
    except KeyboardInterrupt:
        pass
    if once:
        _judged(watcher, log, from_start, breaches)


def _watch_prometheus(
    url: str,
    auto_rollback: bool,
    flags: Path | None,
    policy: Path | None,
    from_start: bool,
    once: bool,
    interval: float,
    record: Path | None,
) -> None:
    """``shim watch --prometheus URL``: every ``interval`` seconds, what each task's
    stage gained across replicas, tested as a log's pairs are; a read that fails is
    said and tried again (at start, or with --once, exit 2). ``--once`` judges all
    the counters hold; rollbacks are recorded in ``record``."""
    import time

    from shim.ops.prom_evidence import PrometheusError, PromEvidence
    from shim.ops.watch import Watch

    watcher = Watch(load_policy(policy))
    store = open_store(flags) if auto_rollback else None
    evidence = PromEvidence(url, from_start=from_start or once)
    breaches, read_once, failing = 0, False, False
    say(f"watching Prometheus at {url}" + (" (auto-rollback on)" if auto_rollback else ""))
    try:
        while True:
            try:
                gains = evidence.poll()
            except PrometheusError as exc:
                if once or not read_once:
                    say(str(exc), error=True)
                    raise typer.Exit(2) from None
                if not failing:
                    say(f"{exc}; trying again every {interval:g} s", error=True)
                failing = True
                time.sleep(interval)
                continue
            if failing:
                say(f"Prometheus at {url} answers again")
            if not read_once and not evidence.series:
                say(
                    f"Prometheus at {url} has no shim_* series yet: is it scraping each "
                    "replica's metrics (SHIM_METRICS, or PrometheusMetrics.serve)?",
                    error=True,
                )
            read_once, failing = True, False
            for (task, stage), found in sorted(gains.items()):
                breach = watcher.feed_gains(task, stage, found)
                if breach is not None:
                    breaches += _breached(breach, store, record)
            if once:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        evidence.close()
    if once:
        _judged(watcher, f"Prometheus at {url}", True, breaches)


def _watch_many(
    patterns: list[Path],
    auto_rollback: bool,
    flags: Path | None,
    policy: Path | None,
    from_start: bool,
    once: bool,
    record: Path | None,
) -> None:
    """``shim watch LOG LOG...``: several logs (a replica's each) tested as one stream,
    every 0.2 s; a file that comes to match a glob later is read from its start.
    Rollbacks are recorded in ``record``, else the first log."""
    import time

    from shim.ops.logtail import LogTail
    from shim.ops.watch import Watch

    found = _all_matches(patterns)
    missing = [p for p in patterns if not _matches(p) and not _is_glob(p)]
    if missing or (once and not found):
        say(f"{(missing or patterns)[0]}: no such log file", error=True)
        raise typer.Exit(2)
    watcher = Watch(load_policy(policy))
    store = open_store(flags) if auto_rollback else None
    tail = LogTail(found, from_end=not from_start)
    breaches = 0
    names = ", ".join(map(str, found[:3])) + (", ..." if len(found) > 3 else "")
    say(
        f"watching {len(found)} log(s) ({names or 'none yet'}) and what comes to match "
        + " ".join(str(p) for p in patterns if _is_glob(p))
        if any(map(_is_glob, patterns))
        else f"watching {len(found)} logs ({names})"
    )
    if auto_rollback:
        say("auto-rollback on")
    try:
        while True:
            for rec in tail.poll():
                breach = watcher.feed(rec)
                if breach is not None:
                    breaches += _breached(breach, store, record or tail.paths[0])
            if once:
                break
            time.sleep(0.2)
            for path in _all_matches(patterns):  # a replica that started since: from its start
                tail.add(path)
    except KeyboardInterrupt:
        pass
    if once:
        _judged(watcher, f"{len(found)} logs", from_start, breaches)


def _is_glob(pattern: Path) -> bool:
    """A name that is not a file and has glob characters."""
    return not pattern.is_file() and any(c in str(pattern) for c in "*?[")


def _all_matches(patterns: list[Path]) -> list[Path]:
    """Every file the patterns name, each once (however many name it)."""
    seen: dict[Path, Path] = {}
    for pattern in patterns:
        for path in _matches(pattern):
            seen.setdefault(path.resolve(), path)
    return list(seen.values())


def _check_record(record: Path | None) -> None:
    """A ``--record`` log that cannot be appended to is said at start (exit 2), not
    found out at the first rollback."""
    if record is None:
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with open(record, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        say(f"{record}: cannot append rollback records here: {exc.strerror or exc}", error=True)
        raise typer.Exit(2) from None


def _matches(pattern: Path) -> list[Path]:
    """The files ``pattern`` names: itself, or a glob's matches."""
    import glob

    if pattern.is_file():
        return [pattern]
    if not any(c in str(pattern) for c in "*?["):
        return []
    return sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())


def _judged(watcher: Watch, log: Path | str, from_start: bool, breaches: int) -> None:
    """How a one-off watch ends: exit 1 on a breach; exit 2 when it read or evaluated
    nothing (a gate that read nothing has passed nothing); else what it read, exit 0."""
    if breaches:
        raise typer.Exit(1)
    if not watcher.records:
        hint = "" if from_start else " (it reads only what is appended; add --from-start)"
        say(f"read no comparison records from {log}{hint}", error=True)
        raise typer.Exit(2)
    if not watcher.evaluations:
        say(
            f"read {watcher.records} comparison records from {log}: too few to evaluate "
            "a task once (a task needs the policy's watch_step pairs)",
            error=True,
        )
        raise typer.Exit(2)
    say(
        f"read {watcher.records} comparison records of {watcher.tasks} task(s); no breach "
        f"in {watcher.evaluations} evaluation(s)",
    )


def _watched(log: Path) -> Path | None:
    """The one file ``log`` names (itself, or the single match of a glob); None if it
    names none."""
    matched = _matches(log)
    return matched[0] if matched else None


def _breached(breach: Breach, store: FlagStore | None, log: Path | None) -> int:
    """Say a breach; with ``store`` (``--auto-rollback``), roll its task back, recorded
    in ``log``. One breach, for the count."""
    say(f"BREACH {breach.describe()}", error=True)
    if store is not None:
        _roll_back(breach, store, log)
    return 1


def _roll_back(breach: Breach, store: FlagStore, log: Path | None) -> None:
    """Serve 0 % for the breaching task (shadow kept), recorded as automatic in ``log``:
    one read-modify-write under the store's lock (:func:`shim.ops.watch.auto_rollback`)."""
    from shim.ops.watch import auto_rollback

    change = guard(auto_rollback, breach, store, log)
    if change is None:
        say(f"{breach.task} already serves 0 %; nothing to roll back", error=True)
        return
    say(
        f"rolled back {breach.task}: serve {change.before.serve} % -> {change.after.serve} % "
        f"({'; '.join(breach.reasons)})",
    )
