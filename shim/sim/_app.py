"""A cf-orch coordinator on one machine: the task endpoint, the legacy endpoints,
allocations, and per-node OpenAI-compatible APIs, with fault knobs."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._orch import ModelEntry, OrchConfig
from ._outputs import apply_drift, generate, kind_for
from ._profile import NodeSpec, Profile, Settings

__all__ = ["SimState", "create_app"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskBody(_Body):
    product: str = Field(min_length=1)
    task: str = Field(min_length=1)
    prompt: str | None = None
    system: str | None = None
    payload: Any = None
    params: dict[str, Any] | None = None
    mode: Literal["output", "allocate"] | None = None


class LegacyBody(_Body):
    model: str = Field(min_length=1)
    prompt: str | None = None
    system: str | None = None
    payload: Any = None
    params: dict[str, Any] | None = None
    # Optional hints so the simulator answers in the right shape; real callers omit them.
    product: str | None = None
    task: str | None = None


class AllocateBody(_Body):
    model: str = Field(min_length=1)
    caller: str | None = None
    product: str | None = None
    task: str | None = None


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send many optional fields

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class _Allocation:
    id: str
    node_id: str
    gpu_id: int
    service: str
    model: str
    task: str | None
    via_task: bool  # the task path's allocations may drift; legacy ones never do


def _error(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class SimState:
    """Everything the simulator remembers. Touched by the server's event loop; the lock
    makes snapshots and profile swaps from other threads safe."""

    def __init__(self, config: OrchConfig, profile: Profile) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.allocations: dict[str, _Allocation] = {}
        self.warm: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._turn: Counter[str] = Counter()
        self.set_profile(profile)

    def set_profile(self, profile: Profile) -> None:
        """Use ``profile`` from the next request on; a seed restarts the random stream."""
        with self.lock:
            self.profile = profile
            if profile.seed is not None or not hasattr(self, "rng"):
                self.rng = random.Random(profile.seed)
            self.nodes = {n.id: n for n in profile.nodes}

    def forget_allocations(self) -> int:
        """Drop every active allocation (one a client never learnt of, say); how many."""
        with self.lock:
            count = len(self.allocations)
            self.allocations.clear()
        return count

    def snapshot(self) -> dict[str, Any]:
        """Counters and allocation state, as ``GET /_sim/stats`` shows them."""
        with self.lock:
            return {
                "counts": dict(sorted(self.counts.items())),
                "allocations_active": len(self.allocations),
                "active": sorted(self.allocations),
            }

    def count(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.counts[key] += 1

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

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

    async def fault(self, s: Settings, where: str) -> Response | None:
        """Hang, or answer with an injected error, as the knobs say."""
        if s.hang_rate and self.rng.random() < s.hang_rate:
            self.count(f"fault.hang.{where}")
            await asyncio.sleep(s.hang_s)
        if s.error_rate and self.rng.random() < s.error_rate:
            self.count(f"fault.error.{where}")
            retry = {"Retry-After": "1"} if s.error_status in (429, 503) else {}
            return _error(s.error_status, "injected", f"simulated {s.error_status}", **retry)
        return None

    async def produce(self, s: Settings, kind: str, node: str, model: str, *, drift: bool) -> Any:
        """Wait as the model would (cold start included), then make its output."""
        cold = (node, model) not in self.warm
        self.warm.add((node, model))
        delay = s.latency_s(self.rng) + (s.cold_start_ms / 1000.0 if cold else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        output = generate(kind, self.rng)
        if drift and s.drift_rate and self.rng.random() < s.drift_rate:
            change = self.rng.choice(s.drift_kinds)
            self.count(f"fault.drift.{change}")
            output = apply_drift(output, kind, change, self.rng)
        return output

    def reply(self, body: dict[str, Any], s: Settings, status: int = 200) -> Response:
        content = json.dumps(body).encode()
        if s.malformed_rate and self.rng.random() < s.malformed_rate:
            self.count("fault.malformed")
            content = content[: len(content) // 2]
        return Response(content, status_code=status, media_type="application/json")

    def task_of_model(self, model_id: str, product: str | None, task: str | None) -> str | None:
        if product and task:
            return f"{product}.{task}"
        tasks = self.config.tasks_of_model(model_id)
        return tasks[0] if tasks else None

    def kind(self, task: str | None) -> str:
        if task is None:
            return "chat"
        entry = self.config.assignments.assignments.get(task)
        return kind_for(task, entry.modality if entry else "text")


def _usage(prompt: str | None, output: Any) -> dict[str, int]:
    text = output if isinstance(output, str) else json.dumps(output)
    prompt_tokens = max(1, len((prompt or "").split()) * 4 // 3)
    completion_tokens = max(1, len(text) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _prompt(messages: list[dict[str, Any]]) -> str:
    return " ".join(str(m.get("content", "")) for m in messages)


def create_app(
    config: OrchConfig, profile: Profile | None = None, *, require_key: str | None = None
) -> FastAPI:
    """The simulator as an ASGI app; ``app.state.sim`` is its :class:`SimState`."""
    state = SimState(config, profile or Profile())
    app = FastAPI(title="cf-orch simulator", docs_url=None, redoc_url=None)
    app.state.sim = state

    async def check_key(authorization: Annotated[str | None, Header()] = None) -> None:
        if require_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(given.encode(), require_key.encode()):
            state.count("unauthorized")
            raise _Unauthorized

    api = APIRouter(dependencies=[Depends(check_key)])

    @api.post("/api/inference/task")
    async def infer_task(body: TaskBody, request: Request) -> Response:
        name = f"{body.product}.{body.task}"
        state.count("requests.task", f"task.{name}")
        entry = config.assignments.assignments.get(name)
        if entry is None:
            return _error(404, "task_not_registered", f"{name} is not in assignments.yaml")
        registered = state.lookup(entry.model)
        if registered is None:
            return _error(
                500,
                "model_not_registered",
                f"{entry.model} (assigned to {name}) is not in model_registry.yaml",
            )
        model_id, model = registered
        s = state.profile.settings(name, legacy=False)
        if (failure := await state.fault(s, "task")) is not None:
            return failure
        placed = state.pick_node(model.service_type)
        if placed is None:
            return _error(
                503, "no_capacity", f"no node runs {model.service_type}", **{"Retry-After": "1"}
            )
        node, gpu = placed
        if body.mode == "allocate":
            return _allocate(request, s, node, gpu, model_id, model, name, via_task=True)
        output = await state.produce(s, state.kind(name), node.id, model_id, drift=True)
        return state.reply(
            {
                "output": output,
                "model": model_id,
                "service_type": model.service_type,
                "node_id": node.id,
                "allocation_id": state.next_id("alloc"),
                "usage": _usage(body.prompt, output),
            },
            s,
        )

    @api.post("/api/inference")
    async def infer_legacy(body: LegacyBody) -> Response:
        state.count("requests.legacy")
        registered = state.lookup(body.model)
        if registered is None:
            return _error(404, "model_not_found", f"{body.model} is not in model_registry.yaml")
        model_id, model = registered
        task = state.task_of_model(model_id, body.product, body.task)
        s = state.profile.settings(task, legacy=True)
        if (failure := await state.fault(s, "legacy")) is not None:
            return failure
        placed = state.pick_node(model.service_type)
        if placed is None:
            return _error(503, "no_capacity", f"no node runs {model.service_type}")
        output = await state.produce(s, state.kind(task), placed[0].id, model_id, drift=False)
        return state.reply(
            {
                "output": output,
                "model": body.model,
                "service_type": model.service_type,
                "node_id": placed[0].id,
                "usage": _usage(body.prompt, output),
            },
            s,
        )

    @api.post("/api/services/{service}/allocate")
    async def allocate(service: str, body: AllocateBody, request: Request) -> Response:
        state.count("requests.allocate")
        registered = state.lookup(body.model)
        if registered is None:
            return _error(404, "model_not_found", f"{body.model} is not in model_registry.yaml")
        model_id, model = registered
        if model.service_type != service:
            return _error(
                400, "wrong_service", f"{model_id} is served by {model.service_type}, not {service}"
            )
        task = state.task_of_model(model_id, body.product, body.task)
        s = state.profile.settings(task, legacy=True)
        if (failure := await state.fault(s, "allocate")) is not None:
            return failure
        placed = state.pick_node(service)
        if placed is None:
            return _error(503, "no_capacity", f"no node runs {service}")
        return _allocate(request, s, *placed, model_id, model, task, via_task=False)

    @api.delete("/api/services/{service}/allocations/{allocation_id}")
    async def release(service: str, allocation_id: str) -> Response:
        state.count("requests.release")
        with state.lock:
            alloc = state.allocations.get(allocation_id)
            if alloc is None or alloc.service != service:
                return _error(
                    404,
                    "allocation_not_found",
                    f"{service} has no active allocation {allocation_id}",
                )
            del state.allocations[allocation_id]
        return Response(status_code=204)

    def _allocate(
        request: Request,
        s: Settings,
        node: NodeSpec,
        gpu: int,
        model_id: str,
        model: ModelEntry,
        task: str | None,
        *,
        via_task: bool,
    ) -> Response:
        alloc = _Allocation(
            state.next_id("alloc"), node.id, gpu, model.service_type, model_id, task, via_task
        )
        with state.lock:
            state.allocations[alloc.id] = alloc
        base = str(request.base_url).rstrip("/")
        return state.reply(
            {
                "url": f"{base}/nodes/{node.id}",
                "allocation_id": alloc.id,
                "service": model.service_type,
                "node_id": node.id,
                "gpu_id": gpu,
                "model": model_id,
                "started": True,
                "warm": (node.id, model_id) in state.warm,
            },
            s,
        )

    @app.post("/nodes/{node_id}/v1/chat/completions")
    async def chat(
        node_id: str, body: ChatBody, x_allocation_id: Annotated[str | None, Header()] = None
    ) -> Response:
        state.count("requests.chat")
        node = state.nodes.get(node_id)
        if node is None:
            return _error(404, "node_not_found", f"no node {node_id}")
        alloc = state.allocations.get(x_allocation_id) if x_allocation_id else None
        if x_allocation_id and (alloc is None or alloc.node_id != node_id):
            return _error(
                409,
                "allocation_not_active",
                f"allocation {x_allocation_id} is not active on {node_id}",
            )
        name = body.model or (alloc.model if alloc else None)
        registered = state.lookup(name) if name else None
        if registered is None or registered[1].service_type not in node.services:
            return _error(404, "model_not_loaded", f"{name} is not served by {node_id}")
        model_id = registered[0]
        task = alloc.task if alloc else state.task_of_model(model_id, None, None)
        via_task = alloc is not None and alloc.via_task
        s = state.profile.settings(task, legacy=not via_task)
        output = await state.produce(s, state.kind(task), node_id, model_id, drift=via_task)
        content = output if isinstance(output, str) else json.dumps(output)
        return state.reply(
            {
                "id": state.next_id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": _usage(_prompt(body.messages), content),
            },
            s,
        )

    @app.get("/nodes/{node_id}/v1/models")
    async def models(node_id: str) -> Response:
        node = state.nodes.get(node_id)
        if node is None:
            return _error(404, "node_not_found", f"no node {node_id}")
        data = [
            {"id": m, "object": "model", "owned_by": "cf-orch"}
            for m, e in config.registry.models.items()
            if e.service_type in node.services
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/_sim/stats")
    async def stats() -> dict[str, Any]:
        return state.snapshot()

    @app.put("/_sim/profile")
    async def put_profile(request: Request) -> Response:
        try:
            state.set_profile(Profile.model_validate(await request.json()))
        except (ValidationError, ValueError) as exc:
            return _error(422, "invalid_profile", str(exc)[:2000])
        return Response(status_code=204)

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized) -> Response:
        return _error(
            401, "unauthorized", "missing or wrong Bearer token", **{"WWW-Authenticate": "Bearer"}
        )

    app.include_router(api)
    return app


class _Unauthorized(Exception):
    pass
