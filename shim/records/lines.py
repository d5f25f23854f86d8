"""The lines a recorder writes next: rendered records, secrets taken out, gathered until
the recorder takes them for one write."""

from __future__ import annotations

from shim.base.secrets import Redactor

__all__ = ["Lines"]


class Lines:
    """structlog's output end: collects rendered lines for the next batch, with any
    secret the shim knows (license key, flag-service tokens, URL credentials) taken out,
    in any form it takes in a JSON line (escaped, percent-encoded, ...). Only the
    recorder's thread renders lines, and takes them."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.redact = Redactor(secrets)  # never on the caller's thread
        self.renew()

    def renew(self) -> None:
        """Empty (also in a forked child: the parent's lines are the parent's to
        write)."""
        self.batch: list[str] = []
        self.chars = 0  # in the batch

    def msg(self, line: str) -> None:
        line = self.redact(line) + "\n"
        self.batch.append(line)
        self.chars += len(line)

    info = warning = error = msg

    def take(self) -> list[str]:
        """The lines so far, for one write."""
        batch, self.batch, self.chars = self.batch, [], 0
        return batch
