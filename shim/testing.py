"""A test mode: assert on comparisons in your own test suite, without a coordinator.

:class:`TestShim` is a real :class:`~shim.Shim` (the same decorator, decisions,
comparisons and records) with three things swapped for tests: the flags are a dict
you give, the task path is answered in process by a function you give, and records
are kept in memory and read back as dicts::

    from shim import TaskRequest
    from shim.testing import TestShim

    def test_meal_plan_is_compared() -> None:
        with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda req: "soup") as s:

            @s.shadow(product="kiwi", task="meal_plan",
                      request=lambda q: TaskRequest(prompt=q))
            def plan(q: str) -> str:
                return "soup"

            assert plan("dinner") == "soup"  # legacy serves, as in production
            [row] = s.comparisons  # waits for the comparison, then reads it
            assert row["structure"]["match"]

Only the transport is replaced (an ``httpx.MockTransport``): requests go through the
task client as in production, and ``answer`` gets each one as a
:class:`~shim.TaskRequest` (images are not in it: they go to the node, never through
the coordinator). It returns the task's output, or a :class:`~shim.TaskResult` to set
the model, node or usage too; what it raises is the task path's failure
(``TaskFailed(..., status=429)`` is a busy coordinator, :class:`~shim.TaskNotRegistered`
an unknown task). Allocating call sites are granted an allocation on a test node, for
``model``; ``answer`` is asked first (raise to refuse; a dict it returns is merged into
the allocation). See ``runbooks/testing-your-app.md``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import httpx
import yaml

from shim.base.yamlfile import load_yaml
from shim.client.task import TaskRequest, TaskResult
from shim.core.config import FixedFlags
from shim.core.decorate import SHADOWED
from shim.core.lifecycle import renew_in_child
from shim.core.shim import Shim
from shim.flags import Rules, parse_flags

__all__ = ["TestShim"]

P = ParamSpec("P")
R = TypeVar("R")
#: Answers a task request: the task's output (or a TaskResult), or raises.
Answer = Callable[[TaskRequest], Any]

_ORCH = "http://task-shim.test"
_NODE = "http://node.task-shim.test"


class _Lines:
    """A record sink that keeps the lines in memory."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        renew_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a lock of its own (a parent's thread may hold this one)."""
        self._lock = threading.Lock()

    def write(self, lines: Sequence[str]) -> None:
        with self._lock:
            self.lines.extend(lines)

    def close(self) -> None:
        pass

    def take(self, clear: bool = False) -> list[str]:
        with self._lock:
            lines = list(self.lines)
            if clear:
                self.lines.clear()
            return lines


def _rules(flags: Mapping[str, Any]) -> Rules:
    """The flags as flags.yaml would give them, checked the same way."""
    doc = load_yaml("TestShim flags", text=yaml.safe_dump(dict(flags), sort_keys=False))
    return Rules(parse_flags(doc))


class TestShim(Shim):
    """A Shim for tests: ``flags`` as a dict (``{"kiwi.meal_plan": {"serve": 0,
    "shadow": 100}}``, ``"shim.kill": True``), the task path answered by ``answer``
    (one function, or one per ``product.task``), records in memory.

    Reading :attr:`records` or :attr:`comparisons` first waits for the comparisons in
    flight, so a test calls its wrapped function and asserts at once. (In async tests,
    a call the task path serves is compared on the event loop: ``await
    s.aflush()`` before reading.) Other keyword arguments go to :class:`~shim.Shim`
    (``registry=``, ``assignments=``, ``capture=``, ``noise_sample=``, ...).
    """

    __test__ = False  # a helper for tests, not a test class to collect

    def __init__(
        self,
        flags: Mapping[str, Any],
        *,
        answer: Answer | Mapping[str, Answer],
        model: str = "test-model",
        **options: Any,
    ) -> None:
        self.model = model
        self._answer = answer
        self._sink = _Lines()
        self.released: list[str] = []  # ids of the task-path allocations given back
        options.setdefault("api_key", "")
        super().__init__(
            _ORCH,
            flags=FixedFlags(_rules(flags)),
            sink=self._sink,
            transport=httpx.MockTransport(self._handle),
            **options,
        )

    def set_flags(self, flags: Mapping[str, Any]) -> None:
        """Replace the flags, from the next call on."""
        source = self.flags
        assert isinstance(source, FixedFlags)
        source.rules = _rules(flags)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """A call site wrapped by another Shim (your app's own, at import), wrapped
        again the same way by this one: to test it as your app decorated it."""
        found = getattr(fn, SHADOWED, None)
        if found is None:
            raise TypeError(f"{fn!r} is not a call site wrapped by Shim.shadow")
        product, task, options = found
        original: Callable[P, R] = fn.__wrapped__  # type: ignore[attr-defined]
        return self.shadow(product=product, task=task, **options.as_keywords())(original)

    # -- what was recorded ---------------------------------------------------------

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record so far (comparisons, drops, breaker and flag events, ...), as
        dicts, after waiting for the comparisons in flight."""
        self.flush()
        return [json.loads(line) for line in self._sink.take()]

    @property
    def comparisons(self) -> list[dict[str, Any]]:
        """The ``shim.comparison`` records so far, oldest first."""
        return [r for r in self.records if r["event"] == "shim.comparison"]

    def dropped(self, reason: str | None = None) -> int:
        """How many comparisons were skipped (``shim.dropped``), for one reason or all."""
        return sum(
            r["count"]
            for r in self.records
            if r["event"] == "shim.dropped" and reason in (None, r["reason"])
        )

    def clear(self) -> None:
        """Forget the records so far (after waiting for the comparisons in flight)."""
        self.flush()
        self._sink.take(clear=True)

    # -- the coordinator, in process -----------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "DELETE" and path.startswith("/api/services/"):
            self.released.append(path.rsplit("/", 1)[-1])
            return httpx.Response(200, json={})
        if (request.method, path) != ("POST", "/api/inference/task"):
            return httpx.Response(404, json={"detail": f"not the task endpoint: {path}"})
        body = json.loads(request.content)
        name = f"{body['product']}.{body['task']}"
        asked = TaskRequest(
            prompt=body.get("prompt"),
            system=body.get("system"),
            payload=body.get("payload"),
            params=body.get("params") or {},
            mode=body.get("mode"),
        )
        value = self._answer_for(name)(asked)  # what it raises, the task path raises
        allocation = {"product": body["product"], "task": body["task"], "payload": {}}
        if body.get("mode") == "allocate" or body == allocation:  # kiwi's allocation body
            granted = {"url": _NODE, "allocation_id": uuid.uuid4().hex, "model": self.model}
            granted.update(value if isinstance(value, Mapping) else {})
            return httpx.Response(200, json=granted)
        if isinstance(value, TaskResult):
            reply = {
                "output": value.output,
                "model": value.model,
                "service_type": value.service_type,
                "node_id": value.node_id,
                "usage": dict(value.usage) if value.usage else None,
            }
        else:
            reply = {"output": value, "model": self.model}
        return httpx.Response(200, json=reply)

    def _answer_for(self, name: str) -> Answer:
        if not isinstance(self._answer, Mapping):
            return self._answer
        try:
            return self._answer[name]
        except KeyError:
            raise LookupError(f"TestShim has no answer for {name}") from None
