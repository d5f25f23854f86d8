"""The lock shim processes take on an Unleash server before changing flags: the feature
``shim.ops.lock``, held for a lease that the holder renews while it works.

Creating a feature whose name exists fails (409), so whoever creates the lock holds it.
Its description says who holds it and until when (``{"holder", "expires"}``, epoch
seconds). Every other change to the lock is a compare-and-set: a JSON Patch that first
tests the description its author last saw, so it lands only if the lock is still as
that author left it.

- Renewing: while a change runs, each request it makes first extends the lease when a
  quarter of it has passed (requests time out after 10 s, so a live holder never lets a
  60 s lease run out). A renewal that finds another holder's description stops the
  change (:class:`LockLost`): it stalled past its lease, and the lock was broken.
- Breaking: a lock past its ``expires`` was left by a process that died (or stalled).
  The next process takes it over by compare-and-set from the expired description it
  read; of two processes breaking it at once, the test lets one through.
- Releasing: compare-and-set from the holder's own description to a fresh stamp (so the
  release fails, and leaves the lock alone, once the lock is someone else's), then
  archive. Archiving cannot be made conditional on Unleash; between the stamp and the
  archive the lock is unexpired, and other processes only break expired locks, so only
  a release that stalls a whole lease between two requests could archive a lock taken
  meanwhile.
- The archived lock stays in Unleash's archive until the next process to take the lock
  deletes it (Unleash deletes only archived features, so this never removes a lock
  someone holds). Unleash 7.5 records each feature's creation and archiving from
  handlers its event announcer runs once a second, after the request has answered: a
  handler checks that the feature exists, then inserts, and a feature deleted between
  the two ends the server process (an unhandled rejection, which db-migrate's handler
  turns into an exit). Left archived, the lock is deleted while those handlers run only
  when changes follow each other within a second.

Unleash applies a JSON Patch as a read and a write of the row, not atomically: two
patches landing within the same few milliseconds can both pass their test. Creating
the lock is atomic; breaking an abandoned lock is as safe as that.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from shim.base.errors import ShimError

from ._admin_http import AdminApi, failed_test

__all__ = ["LOCK_FLAG", "AdminLock", "Lease", "LockLost"]

#: The feature that, while it exists, says a shim process is changing flags.
LOCK_FLAG = "shim.ops.lock"


class LockLost(ShimError):
    """Another process took the lock while this one held it (this one stalled past its
    lease); the change stops where it is."""


class Lease:
    """The lock, held: :meth:`keep` before each request made under it."""

    def __init__(self, lock: AdminLock, holder: str, description: str) -> None:
        self.holder = holder
        self._lock = lock
        self._description = description  # exactly as stored: what a compare-and-set tests
        self._stamped = time.monotonic()

    def keep(self) -> None:
        """Extend the lease when a quarter of it has passed; LockLost when the lock is no
        longer this holder's."""
        if time.monotonic() - self._stamped < self._lock.ttl / 4:
            return
        self.restamp()

    def restamp(self, **extra: Any) -> None:
        """Extend the lease now (compare-and-set); LockLost when it is not ours."""
        stamped = self._lock.stamp(self.holder, **extra)
        if not self._lock.swap(self._description, stamped):
            held = self._lock.holder()
            who = held.get("holder", "nobody") if held is not None else "nobody (it is gone)"
            raise LockLost(
                f"{self._lock.api.description}: lost the lock {LOCK_FLAG}, now held by "
                f"{who}: this change stalled past its {self._lock.ttl:g} s lease and the "
                "lock was broken; check `shim status`, then run the command again"
            )
        self._description, self._stamped = stamped, time.monotonic()


class AdminLock:
    """The lock on one server. ``timeout``: how long :meth:`held` waits for another
    holder; ``ttl``: the lease, after which an unrenewed lock counts as abandoned."""

    def __init__(self, api: AdminApi, *, timeout: float, ttl: float) -> None:
        self.api = api
        self.timeout = timeout
        self.ttl = ttl
        self._path = f"{api.features}/{LOCK_FLAG}"

    @contextlib.contextmanager
    def held(self) -> Iterator[Lease]:
        """Hold the lock for the ``with`` block; release it after."""
        lease = self._take()
        try:
            yield lease
        except BaseException:
            with contextlib.suppress(ShimError):  # the error in hand says more; it lapses
                self._release(lease)
            raise
        self._release(lease)

    def _take(self) -> Lease:
        me = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + self.timeout
        while True:
            stamped = self.stamp(me)
            body = {"name": LOCK_FLAG, "type": "operational", "description": stamped}
            reply = self.api.call("POST", self.api.features, json=body)
            if reply.status_code < 300:
                return Lease(self, me, stamped)
            if reply.status_code != 409:
                self.api.ok(reply, f"take the lock {LOCK_FLAG}")
            read = self._read()
            if read is None:
                # Archived: released (see the module's docstring). Unleash deletes only
                # archived features, so this never removes a lock someone holds.
                self.api.call("DELETE", f"/api/admin/archive/{LOCK_FLAG}")
                continue
            text, held = read
            if _expires(held) < time.time():
                # Abandoned: take it over, only if it is still the expired lock we read.
                stamped = self.stamp(me)
                if self.swap(text, stamped):
                    return Lease(self, me, stamped)
            elif time.monotonic() > deadline:
                until = time.strftime("%H:%M:%S", time.localtime(_expires(held)))
                raise ShimError(
                    f"{self.api.description}: another change holds the lock (feature "
                    f"{LOCK_FLAG}, held by {held.get('holder')}); try again. If that "
                    f"process died, the lock lapses at {until}"
                )
            else:
                time.sleep(0.05)

    def _release(self, lease: Lease) -> None:
        try:
            # Stamped afresh first: the lock stays unexpired (so nobody breaks it) until
            # it is archived, and a lock that is no longer ours is left alone.
            lease.restamp(releasing=True)
        except LockLost:
            return
        self.api.call("DELETE", self._path)  # archives it; the next taker deletes it

    def stamp(self, holder: str, **extra: Any) -> str:
        """A description saying ``holder`` holds the lock for a lease from now."""
        return json.dumps({"holder": holder, "expires": time.time() + self.ttl, **extra})

    def swap(self, old: str, new: str) -> bool:
        """Set the lock's description to ``new`` if it is ``old`` (compare-and-set);
        False when it is not, or the lock is gone."""
        patch = [
            {"op": "test", "path": "/description", "value": old},
            {"op": "replace", "path": "/description", "value": new},
        ]
        reply = self.api.call("PATCH", self._path, json=patch)
        if failed_test(reply):
            return False
        self.api.ok(reply, f"update the lock {LOCK_FLAG}")
        # Unleash patches an archived feature too: an archived lock is not held.
        return not reply.json().get("archivedAt")

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (``{}`` when its description is not ours), None when none."""
        read = self._read()
        return None if read is None else read[1]

    def _read(self) -> tuple[str, dict[str, Any]] | None:
        reply = self.api.call("GET", self._path)
        if reply.status_code == 404:
            return None
        self.api.ok(reply, f"read the lock {LOCK_FLAG}")
        text = str(reply.json().get("description") or "")
        try:
            held = json.loads(text or "{}")
        except ValueError:
            held = {}
        return text, held if isinstance(held, dict) else {}


def _expires(held: dict[str, Any]) -> float:
    try:
        return float(held.get("expires", 0))
    except (TypeError, ValueError):
        return 0.0
