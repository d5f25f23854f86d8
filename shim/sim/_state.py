"""What the simulated coordinator remembers: allocations (with their expiry), stream
grants, counters, warm models; and the shared moves of every route (faults, latency,
outputs, replies)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from shim.base.orch import ModelEntry, OrchConfig

from ._judge import DriftMemory, verdict
from ._outputs import apply_drift, generate, kind_for
from ._profile import NodeSpec, Profile, Settings

__all__ = ["SimAllocation", "SimState", "StreamGrant", "error", "usage"]

#: How many released or expired ids (allocations, tokens) are remembered, so that late
#: traffic on one gets a clear "released" / "expired" rather than "unknown".
_ENDED_KEPT = 10_000


@dataclass(slots=True)
class SimAllocation:
    """One allocation: a model on a node's GPU, held until released or ``expires_at``."""

    id: str
    node_id: str
    gpu_id: int
    service: str
    model: str
    task: str | None
    via_task: bool  # the task path's allocations may drift; direct ones never do
    ttl_s: float
    expires_at: float


@dataclass(slots=True)
class StreamGrant:
    """A one-time token for one recipe stream, and the model that will write it."""

    token: str
    product: str
    caller: str
    task: str
    node_id: str
    model: str
    expires_at: float
    used: bool = False
    done: bool = False
    #: what the stream answers (the same content as the task path for the same prompt)
    prompt: str | None = None


def error(status: int, code: str, detail: str, **headers: str) -> JSONResponse:
    """The simulator's error body: ``{"error": code, "detail": ...}``."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def usage(prompt: str | None, output: Any) -> dict[str, int]:
    """Token counts, roughly as a tokenizer would count them."""
    text = output if isinstance(output, str) else json.dumps(output)
    prompt_tokens = max(1, len((prompt or "").split()) * 4 // 3)
    completion_tokens = max(1, len(text) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class SimState:
    """Everything the simulator remembers. Touched by the server's event loop; the lock
    makes snapshots and profile swaps from other threads safe. Expired allocations and
    grants are dropped lazily, whenever state is read."""

    def __init__(
        self, config: OrchConfig, profile: Profile, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self.allocations: dict[str, SimAllocation] = {}
        self.grants: dict[str, StreamGrant] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # id or token -> why it ended
        self.warm: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._turn: Counter[str] = Counter()
        self.drifted = DriftMemory()  # what the judge knows to be worse
        self.set_profile(profile)

    def set_profile(self, profile: Profile) -> None:
        """Use ``profile`` from the next request on; a seed restarts the random stream."""
        with self.lock:
            self.profile = profile
            if profile.seed is not None or not hasattr(self, "rng"):
                self.rng = random.Random(profile.seed)
            self.nodes = {n.id: n for n in profile.nodes}

    def forget_allocations(self) -> int:
        """Drop every active allocation and stream grant (one a client never learnt of,
        say); how many allocations."""
        with self.lock:
            count = len(self.allocations)
            self.allocations.clear()
            self.grants.clear()
        return count

    def snapshot(self) -> dict[str, Any]:
        """Counters, allocation and stream state, as ``GET /_sim/stats`` shows them."""
        with self._swept():
            return {
                "counts": dict(sorted(self.counts.items())),
                "allocations_active": len(self.allocations),
                "active": sorted(self.allocations),
                "streams_active": sum(1 for g in self.grants.values() if self._holds(g)),
            }

    def count(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.counts[key] += 1

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    # -- allocations ----------------------------------------------------------------

    def _end(self, key: str, why: str) -> None:
        self._ended[key] = why
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)

    @contextmanager
    def _swept(self) -> Iterator[None]:
        """The lock, held, with expired allocations and spent grants dropped."""
        with self.lock:
            self._sweep()
            yield

    def _sweep(self) -> None:
        """Drop expired allocations and spent grants (lock held)."""
        now = self.clock()
        for alloc in [a for a in self.allocations.values() if a.expires_at <= now]:
            del self.allocations[alloc.id]
            self.counts["allocations.expired"] += 1
            self._end(alloc.id, f"expired (ttl_s {alloc.ttl_s:g} passed without a release)")
        for grant in [g for g in self.grants.values() if not self._holds(g)]:
            del self.grants[grant.token]
            self._end(grant.token, "used" if grant.used else "expired")

    def add_allocation(
        self,
        node: NodeSpec,
        gpu: int,
        model_id: str,
        service: str,
        task: str | None,
        *,
        via_task: bool,
        ttl_s: float,
    ) -> SimAllocation:
        """A new allocation of ``model_id`` on ``node``'s GPU ``gpu``, held ``ttl_s``."""
        until = self.clock() + ttl_s
        alloc = SimAllocation(
            self.next_id("alloc"), node.id, gpu, service, model_id, task, via_task, ttl_s, until
        )
        with self._swept():
            self.allocations[alloc.id] = alloc
        return alloc

    def allocation(self, allocation_id: str) -> SimAllocation | str:
        """The active allocation, or why there is none (released, expired, unknown)."""
        with self._swept():
            alloc = self.allocations.get(allocation_id)
            if alloc is not None:
                return alloc
            return self._ended.get(allocation_id, "unknown")

    def release(self, service: str, allocation_id: str) -> bool:
        """End an active allocation of ``service``; False if there is none."""
        with self._swept():
            alloc = self.allocations.get(allocation_id)
            if alloc is None or alloc.service != service:
                return False
            del self.allocations[allocation_id]
            self._end(allocation_id, "released")
        return True

    # -- stream grants --------------------------------------------------------------

    def _holds(self, grant: StreamGrant) -> bool:
        """A grant holds a stream slot from authorisation until its stream ends, or
        until it expires unused."""
        return not grant.done and (grant.used or grant.expires_at > self.clock())

    def grant(
        self,
        product: str,
        caller: str,
        task: str,
        node_id: str,
        model: str,
        ttl_s: float,
        prompt: str | None = None,
    ) -> StreamGrant | None:
        """A new one-time token; None when ``max_streams`` are already held."""
        with self._swept():
            if len(self.grants) >= self.profile.max_streams:
                return None
            expires_at = self.clock() + ttl_s
            grant = StreamGrant(
                secrets.token_urlsafe(18),
                product,
                caller,
                task,
                node_id,
                model,
                expires_at,
                prompt=prompt,
            )
            self.grants[grant.token] = grant
        return grant

    def claim(self, token: str) -> StreamGrant | str:
        """Use a token (once): its grant, or why it cannot be used."""
        with self._swept():
            grant = self.grants.get(token)
            if grant is None:
                return self._ended.get(token, "unknown")
            if grant.used:
                return "used"
            grant.used = True
        return grant

    def finish(self, grant: StreamGrant) -> None:
        with self.lock:
            grant.done = True
            self._sweep()

    # -- models and nodes -----------------------------------------------------------

    def lookup(self, name: str) -> tuple[str, ModelEntry] | None:
        """A model by id or alias (case-insensitive) -> (model id, entry)."""
        models = self.config.registry.models
        if name in models:
            return name, models[name]
        folded = name.casefold()
        for model_id, entry in models.items():
            if model_id.casefold() == folded or any(a.casefold() == folded for a in entry.alias):
                return model_id, entry
        return None

    def default_model(self, service: str) -> tuple[str, ModelEntry] | None:
        """The model a service runs when asked for none: the one assigned to a task
        on that service, else the first registered for it."""
        models = self.config.registry.models
        assigned = [a.model for a in self.config.assignments.assignments.values()]
        for model_id in [*assigned, *models]:
            entry = models.get(model_id)
            if entry is not None and entry.service_type == service:
                return model_id, entry
        return None

    def pick_node(self, service: str) -> tuple[NodeSpec, int] | None:
        """Round-robin over the nodes (and their GPUs) that run ``service``."""
        slots = [
            (n, g) for n in self.nodes.values() if service in n.services for g in range(n.gpus)
        ]
        if not slots:
            return None
        turn = self._turn[service]
        self._turn[service] += 1
        return slots[turn % len(slots)]

    def task_of_model(self, model_id: str, product: str | None, task: str | None) -> str | None:
        """The task a request for ``model_id`` serves: the caller's hint, else the task
        assigned that model."""
        if product and task:
            return f"{product}.{task}"
        tasks = self.config.tasks_of_model(model_id)
        return tasks[0] if tasks else None

    def task_of_caller(self, caller: str) -> str | None:
        """The task a direct allocation's ``caller`` names, when it names one
        (kiwi's ``kiwi-ocr`` -> ``kiwi.ocr``, ``kiwi-recipe-scan`` -> ``kiwi.recipe_scan``)."""
        product, _, rest = caller.partition("-")
        name = f"{product}.{rest.replace('-', '_')}"
        return name if rest and name in self.config.assignments.assignments else None

    def kind_of(self, task: str | None, model_id: str) -> str:
        """The output kind for ``task``; without one, that of a task on the model's
        service (a text model writes what its service's task asks)."""
        if task is None:
            models = self.config.registry.models
            entry = models.get(model_id)
            for name, assigned in self.config.assignments.assignments.items():
                other = models.get(assigned.model)
                if entry and other and other.service_type == entry.service_type:
                    return self.kind(str(name))
        return self.kind(task)

    def kind(self, task: str | None) -> str:
        if task is None:
            return "chat"
        entry = self.config.assignments.assignments.get(task)
        return kind_for(task, entry.modality if entry else "text")

    # -- behaviour --------------------------------------------------------------------

    async def fault(self, s: Settings, where: str) -> Response | None:
        """Hang, or answer with an injected error, as the knobs say."""
        if s.hang_rate and self.rng.random() < s.hang_rate:
            self.count(f"fault.hang.{where}")
            await asyncio.sleep(s.hang_s)
        if s.error_rate and self.rng.random() < s.error_rate:
            self.count(f"fault.error.{where}")
            retry = {"Retry-After": "1"} if s.error_status in (429, 503) else {}
            return error(s.error_status, "injected", f"simulated {s.error_status}", **retry)
        return None

    async def produce(
        self,
        s: Settings,
        kind: str,
        node: str,
        model: str,
        *,
        drift: bool,
        key: str | None = None,
        prompt: str | None = None,
    ) -> Any:
        """Wait as the model would (cold start included), then make its output. With a
        ``key`` (what the request asked: its prompt, or its image) the content is that
        request's, the same on the legacy path and the task path, so that drift is the
        only difference between them; without one, it is drawn afresh. A judge task's
        output is its verdict on the answers in ``prompt`` (see ``_judge``)."""
        cold = (node, model) not in self.warm
        self.warm.add((node, model))
        delay = s.latency_s(self.rng) + (s.cold_start_ms / 1000.0 if cold else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        content = self.rng if key is None else random.Random(f"{self.profile.seed}|{kind}|{key}")
        if kind == "judge":
            self.count("judge.verdicts")
            return verdict(prompt or "", self.drifted, self.profile.judge_bias, content)
        output = generate(kind, content)
        if drift and s.drift_rate and self.rng.random() < s.drift_rate:
            change = self.rng.choice(s.drift_kinds)
            self.count(f"fault.drift.{change}")
            output = apply_drift(output, kind, change, self.rng)
            self.drifted.add(output)
        return output

    async def place(
        self,
        task: str | None,
        service: str,
        *,
        legacy: bool,
        where: str,
        busy: str = "no_capacity",
        retry: bool = False,
    ) -> tuple[Settings, tuple[NodeSpec, int]] | Response:
        """The knobs for ``task``'s path and a node (and GPU) that runs ``service``; or
        the answer instead: a fault injected at ``where``, or 503 ``busy`` when no node
        runs the service (with ``Retry-After`` if ``retry``)."""
        s = self.profile.settings(task, legacy=legacy)
        if (failure := await self.fault(s, where)) is not None:
            return failure
        placed = self.pick_node(service)
        if placed is None:
            headers = {"Retry-After": "1"} if retry else {}
            return error(503, busy, f"no node runs {service}", **headers)
        return s, placed

    def reply(self, body: dict[str, Any], s: Settings, status: int = 200) -> Response:
        """A JSON answer, cut in half when the malformed knob says so."""
        content = json.dumps(body).encode()
        if s.malformed_rate and self.rng.random() < s.malformed_rate:
            self.count("fault.malformed")
            content = content[: len(content) // 2]
        return Response(content, status_code=status, media_type="application/json")
