"""The lines a recorder writes next: rendered records, secrets taken out, gathered from
any thread until the recorder takes them for one write."""

from __future__ import annotations

import threading

from shim.base.secrets import Redactor

__all__ = ["Lines"]


class Lines:
    """structlog's output end: collects rendered lines for the next batch, with any
    secret the shim knows (license key, flag-service tokens, URL credentials) taken out,
    in any form it takes in a JSON line (escaped, percent-encoded, ...). Lines come from
    the recorder's thread and from the workers that make records where they run; once
    the last batch is taken (:meth:`take` with ``last``), a line that comes is counted
    in ``late``, not kept."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.redact = Redactor(secrets)  # never on the caller's thread
        self.renew()

    def renew(self) -> None:
        """Empty, and open again (also in a forked child: the parent's lines are the
        parent's to write)."""
        self.lock = threading.Lock()
        self.batch: list[str] = []
        self.chars = 0  # in the batch
        self.fresh = False  # the batch got its first line since the last take
        self.closed = False
        self.late = 0

    def msg(self, line: str) -> None:
        line = self.redact(line) + "\n"
        with self.lock:
            if self.closed:
                self.late += 1
                return
            self.fresh = self.fresh or not self.batch
            self.batch.append(line)
            self.chars += len(line)

    info = warning = error = msg

    def claim_fresh(self) -> bool:
        """True once after the batch got its first line: whoever gets it wakes the
        recorder (once per batch, not per line)."""
        with self.lock:
            fresh, self.fresh = self.fresh, False
        return fresh

    def take(self, *, last: bool = False) -> list[str]:
        """The lines so far, for one write; with ``last``, no more are kept."""
        with self.lock:
            batch, self.batch, self.chars, self.fresh = self.batch, [], 0, False
            self.closed = self.closed or last
        return batch
