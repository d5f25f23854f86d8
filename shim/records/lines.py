"""The lines a recorder writes next: rendered records, secrets taken out, gathered until
the recorder takes them for one write."""

from __future__ import annotations

import threading

from shim.base.secrets import Redactor

__all__ = ["Lines"]


class Lines:
    """structlog's output end: collects rendered lines for the next batch, with any
    secret the shim knows (license key, flag-service tokens, URL credentials) taken out,
    in any form it takes in a JSON line (escaped, percent-encoded, ...). Once the last
    batch is taken (:meth:`take` with ``last``), a line that comes is counted in
    ``late``, not kept."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.redact = Redactor(secrets)  # never on the caller's thread
        self.renew()

    def renew(self) -> None:
        """Empty, and open again (also in a forked child: the parent's lines are the
        parent's to write)."""
        self.lock = threading.Lock()
        self.batch: list[str] = []
        self.chars = 0  # in the batch
        self.closed = False
        self.late = 0

    def msg(self, line: str) -> None:
        line = self.redact(line) + "\n"
        with self.lock:
            if self.closed:
                self.late += 1
                return
            self.batch.append(line)
            self.chars += len(line)

    info = warning = error = msg

    def take(self, *, last: bool = False) -> list[str]:
        """The lines so far, for one write; with ``last``, no more are kept."""
        with self.lock:
            batch, self.batch, self.chars = self.batch, [], 0
            self.closed = self.closed or last
        return batch
