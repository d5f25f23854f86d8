"""The fault suite's table: every fault test adds a row of what it measured; the run
prints the table and writes it to ``.cache/fault-table.md``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROWS: list[tuple[str, ...]] = []
HEADER = ("fault", "what the caller saw", "records written", "recovery")
TABLE = Path(__file__).resolve().parents[2] / ".cache" / "fault-table.md"

Row = Callable[[str, str, str, str], None]


def _threads() -> list[str]:
    """Threads of the process under test (not the misbehaving servers')."""
    return [t.name for t in threading.enumerate() if not t.name.startswith("misbehaving")]


@pytest.fixture(autouse=True)
def _threads_come_back() -> Iterator[None]:
    """After every fault, the process is back to the threads it had before."""
    before = _threads()
    yield
    deadline = time.monotonic() + 5
    while len(_threads()) > len(before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_threads()) <= len(before), f"threads left behind: {_threads()} vs {before}"


@pytest.fixture
def fault_row() -> Row:
    """``fault_row(fault, caller_saw, records, recovery)``: one row of the table."""

    def add(fault: str, caller: str, records: str, recovery: str) -> None:
        ROWS.append((fault, caller, records, recovery))

    return add


def markdown(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in sorted(rows)]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(markdown(ROWS))
    terminalreporter.section("fault table")
    terminalreporter.write(markdown(ROWS))
    terminalreporter.write_line(f"(also in {os.path.relpath(TABLE)})")
