"""The coordinator's routes: the task endpoint, the legacy inference endpoint, direct
allocation and release.

``POST /api/inference/task``
    Kiwi's body ``{product, task, payload: {}}`` answers an allocation
    ``{url, allocation_id, service, gpu_id, started, warm}`` (``service`` left out
    with the profile's ``omit_service``, as before cf-orch#63). ``mode: allocate``
    answers the same with ``node_id`` and ``model`` added. A body carrying an input
    (``prompt``, ``system``, a non-empty ``payload``) or ``mode: output`` answers
    output ``{output, model, service_type, node_id, allocation_id, usage}``: this
    project's extension, which the profile's ``allocate_only`` turns off (every answer
    an allocation, as the real coordinator gives). 404 for a task not in
    assignments.yaml.
``POST /api/inference``
    The seed's route with an explicit ``model``; answers output, never drifts.
``POST /api/services/{service}/allocate``
    ``{model_candidates, ttl_s, caller}``: the first candidate registered for the
    service (by id or alias, any case), or with no candidates the service's default
    model (the one assigned to a task on it, else the first registered). 422 for a
    service no model runs on, 503 when every candidate fails or there is no node. The
    allocation serves the task its model is assigned to, else the one its ``caller``
    names (``kiwi-ocr`` -> ``kiwi.ocr``): that decides what its node writes.
``DELETE /api/services/{service}/allocations/{id}``
    200 ``{released: true, allocation_id}``; 404 for unknown, ended or other service.

Allocations live ``ttl_s`` (direct: the body's; task path: the profile's
``task_ttl_s``) unless released first. Their node URL is
``{base}/nodes/{node_id}/a/{allocation_id}`` (see :mod:`._nodes`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from shim.base.orch import ModelEntry

from ._bodies import AllocateBody, LegacyBody, TaskBody, content_key
from ._outputs import asks_for_timing
from ._profile import NodeSpec
from ._state import SimAllocation, SimState, error, usage

__all__ = ["coordinator_routes", "node_url"]


def node_url(request: Request, alloc: SimAllocation) -> str:
    """Where the allocation's node answers: its own path, so that no header is needed."""
    base = str(request.base_url).rstrip("/")
    return f"{base}/nodes/{alloc.node_id}/a/{alloc.id}"


def coordinator_routes(state: SimState) -> APIRouter:
    """The coordinator's API routes over ``state``."""
    router = APIRouter()
    config = state.config

    def allocation(
        request: Request,
        placed: tuple[NodeSpec, int],
        model_id: str,
        model: ModelEntry,
        task: str | None,
        *,
        via_task: bool,
        ttl_s: float,
    ) -> tuple[SimAllocation, dict[str, Any]]:
        node, gpu = placed
        warm = (node.id, model_id) in state.warm
        alloc = state.add_allocation(
            node, gpu, model_id, model.service_type, task, via_task=via_task, ttl_s=ttl_s
        )
        answer = {
            "url": node_url(request, alloc),
            "allocation_id": alloc.id,
            "service": model.service_type,
            "gpu_id": gpu,
            "started": not warm,
            "warm": warm,
        }
        return alloc, answer

    @router.post("/api/inference/task")
    async def infer_task(body: TaskBody, request: Request) -> Response:
        name = f"{body.product}.{body.task}"
        state.count("requests.task", f"task.{name}")
        entry = config.assignments.assignments.get(name)
        if entry is None:
            return error(404, "task_not_registered", f"{name} is not in assignments.yaml")
        registered = state.lookup(entry.model)
        if registered is None:
            return error(
                500,
                "model_not_registered",
                f"{entry.model} (assigned to {name}) is not in model_registry.yaml",
            )
        model_id, model = registered
        found = await state.place(name, model.service_type, legacy=False, where="task", retry=True)
        if isinstance(found, Response):
            return found
        s, placed = found
        node, _ = placed
        if state.profile.allocate_only or not body.wants_output():
            state.count("allocations.task")
            ttl_s = state.profile.task_ttl_s
            alloc, answer = allocation(
                request, placed, model_id, model, name, via_task=True, ttl_s=ttl_s
            )
            if body.mode == "allocate":
                answer |= {"node_id": alloc.node_id, "model": model_id}
            if state.profile.omit_service:
                del answer["service"]
            return state.reply(answer, s)
        kind = "timing" if asks_for_timing(body.system) else state.kind(name)
        key = content_key(body.system, body.prompt)
        output = await state.produce(
            s, kind, node.id, model_id, drift=True, key=key, prompt=body.prompt
        )
        return state.reply(
            {
                "output": output,
                "model": model_id,
                "service_type": model.service_type,
                "node_id": node.id,
                "allocation_id": state.next_id("alloc"),
                "usage": usage(body.prompt, output),
            },
            s,
        )

    @router.post("/api/inference")
    async def infer_legacy(body: LegacyBody) -> Response:
        state.count("requests.legacy")
        registered = state.lookup(body.model)
        if registered is None:
            return error(404, "model_not_found", f"{body.model} is not in model_registry.yaml")
        model_id, model = registered
        task = state.task_of_model(model_id, body.product, body.task)
        found = await state.place(task, model.service_type, legacy=True, where="legacy")
        if isinstance(found, Response):
            return found
        s, placed = found
        kind = "timing" if asks_for_timing(body.system) else state.kind_of(task, model_id)
        key = content_key(body.system, body.prompt)
        output = await state.produce(
            s, kind, placed[0].id, model_id, drift=False, key=key, prompt=body.prompt
        )
        return state.reply(
            {
                "output": output,
                "model": body.model,
                "service_type": model.service_type,
                "node_id": placed[0].id,
                "usage": usage(body.prompt, output),
            },
            s,
        )

    def choose(service: str, candidates: list[str]) -> tuple[str, ModelEntry] | None:
        if not candidates:
            return state.default_model(service)
        for candidate in candidates:
            found = state.lookup(candidate)
            if found is not None and found[1].service_type == service:
                return found
        return None

    @router.post("/api/services/{service}/allocate")
    async def allocate(service: str, body: AllocateBody, request: Request) -> Response:
        state.count("requests.allocate")
        if state.default_model(service) is None:
            return error(422, "unknown_service", f"no registered model runs on {service}")
        candidates = body.candidates()
        chosen = choose(service, candidates)
        if chosen is None:
            return error(
                503,
                "no_candidate",
                f"every candidate failed for {service}: none of {candidates} is registered "
                f"with service_type {service}",
            )
        model_id, model = chosen
        task = state.task_of_model(model_id, body.product, body.task)
        task = task or state.task_of_caller(body.caller)
        found = await state.place(task, service, legacy=True, where="allocate", retry=True)
        if isinstance(found, Response):
            return found
        s, placed = found
        state.count("allocations.direct")
        alloc, answer = allocation(
            request, placed, model_id, model, task, via_task=False, ttl_s=body.ttl_s
        )
        answer = {
            "allocation_id": alloc.id,
            "service": service,
            "node_id": alloc.node_id,
            "gpu_id": alloc.gpu_id,
            "model": model_id,
            "url": answer["url"],
            "started": answer["started"],
            "warm": answer["warm"],
        }
        return state.reply(answer, s)

    @router.delete("/api/services/{service}/allocations/{allocation_id}")
    async def release(service: str, allocation_id: str) -> Response:
        state.count("requests.release")
        if not state.release(service, allocation_id):
            return error(
                404, "allocation_not_found", f"{service} has no active allocation {allocation_id}"
            )
        return JSONResponse({"released": True, "allocation_id": allocation_id})

    return router
