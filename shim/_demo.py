"""``shim demo``: the simulator, kiwi's registrations, one call per task and mode."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ._client import TaskClient, TaskRequest
from ._errors import ShimError
from ._orch import OrchConfig

__all__ = ["run_demo"]

_PROMPTS = {
    "kiwi.meal_plan": TaskRequest(
        system="You plan meals from a pantry.", prompt="Plan a week of dinners for two, vegetarian."
    ),
    "kiwi.recipe_generation": TaskRequest(prompt="A recipe using chickpeas and spinach."),
    "kiwi.ocr": TaskRequest(prompt="Read this receipt.", payload={"image_b64": "iVBORw0KG..."}),
    "kiwi.barcode_scan": TaskRequest(
        prompt="Decode this barcode.", payload={"image_b64": "R0lGODlh..."}
    ),
    "kiwi.recipe_scan": TaskRequest(
        prompt="Transcribe this recipe card.", payload={"image_b64": "/9j/4AAQ..."}
    ),
}


def _shape(output: object) -> str:
    """A one-word description of an output: what a parser downstream would meet."""
    if isinstance(output, dict):
        return f"JSON object, {len(output)} keys"
    if isinstance(output, list):
        return f"JSON list, {len(output)} items"
    text = str(output).strip()
    if text[:1] in "[{":
        return f"JSON text, {len(text):,} chars"
    return f"text, {len(text.splitlines())} lines"


def run_demo(*, seed: int, console: Console) -> None:
    """Call each kiwi task once per response mode and print where it ran."""
    from .sim import Profile, Simulator

    config = OrchConfig.default()
    profile = Profile(
        seed=seed, defaults={"latency_ms": 30, "latency_p99_ms": 120, "cold_start_ms": 200}
    )
    table = Table(title="kiwi tasks on cf-orch's task endpoint", title_justify="left")
    for column in ("task", "mode", "model", "service", "node", "ms", "output"):
        table.add_column(
            column,
            justify="right" if column == "ms" else "left",
            no_wrap=column in ("mode", "service", "node", "ms"),
        )
    with Simulator(config, profile) as sim, TaskClient(sim.url, api_key="") as client:
        console.print(f"simulator listening on {sim.url}")
        for task in config.tasks:
            product, _, name = task.partition(".")
            base = _PROMPTS.get(task, TaskRequest(prompt="hello"))
            for mode in ("output", "allocate"):
                request = TaskRequest(base.prompt, base.system, base.payload, mode=mode)
                try:
                    result = client.infer(product, name, request)
                except ShimError as exc:
                    table.add_row(task, mode, "-", "-", "-", "-", f"[red]{exc}[/]")
                    continue
                preview = _shape(result.output)
                table.add_row(
                    task,
                    mode,
                    result.model or "?",
                    result.service_type or "?",
                    result.node_id or "?",
                    f"{result.latency_ms:.1f}",
                    preview,
                )
        stats = sim.stats()
    console.print(table)
    console.print(
        f"allocations left open: {stats['allocations_active']} "
        "(each allocation was completed on its node and released)"
    )
