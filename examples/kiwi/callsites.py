"""Kiwi's cf-orch call sites, each wrapped with task-shim: the index.

Each call site keeps kiwi's shape and its pre-migration body (a direct allocation of a
hardcoded service, then the node's own API; the local models without cf-orch); only a
decorator was added. Importing this module builds the process's one Shim from the
environment (``CF_ORCH_URL``, ``SHIM_FLAGS``, ``SHIM_LOG``, ...).

===========================  ====================  ====================================
call site                    task                  wrapping
===========================  ====================  ====================================
``get_meal_plan_router()``   kiwi.meal_plan        ``allocation="entered"``: returns
                                                   ``(router, ctx)``, ctx entered
``LLMRecipeGenerator``       kiwi.recipe_          a method, ``_call_llm(prompt) -> str``,
``._call_llm``               generation            compared with ``KIWI_RECIPE``
``try_docuvision(image)``    kiwi.ocr              a function, ``str | None``; the image
                                                   goes as ``images=``
``allocate_for(product,      from the arguments    ``allocation=True``: a context manager
task, *, service_hint)``     (kiwi.recipe_scan)    yielding an ``Allocation``
``extract_label(image)``     kiwi.barcode_scan     ``async def`` -> dict, custom
                                                   ``soft_failure=`` (confidence 0)
===========================  ====================  ====================================

What the app calls around them: ``generate_plan`` and ``estimate_timing`` (one router
for both), ``LLMRecipeGenerator.generate``, ``VisionLanguageOCR.extract_receipt_data``,
``RecipeScanner.scan``. ``stream_recipe_chunks`` (kiwi's streaming authorisation,
``coordinator_authorize``, and the stream it opens) is an async generator, wrapped for
``kiwi.recipe_generation`` as a streaming call site; ``stream_recipe`` joins it.
"""

from __future__ import annotations

from .label_capture import extract_label, parse_label, placeholder_label
from .llm_planner import PlanSuggestion, generate_plan
from .llm_recipe import (
    LLMRecipeGenerator,
    RecipeRequest,
    RecipeResult,
    build_recipe_prompt,
    parse_recipe,
)
from .llm_router import OrchTextRouter, get_meal_plan_router
from .llm_timing import estimate_timing
from .local_llm import LocalRouter, LocalVision
from .migration import aclose, close, shim
from .node_allocation import allocate_for
from .recipe_scanner import RecipeScanner, ScannedRecipeResult, call_vision_backend
from .recipe_stream import stream_recipe, stream_recipe_chunks, stream_token
from .task_inference import Allocation
from .vl_model import VisionLanguageOCR, try_docuvision

__all__ = [
    "Allocation",
    "LLMRecipeGenerator",
    "LocalRouter",
    "LocalVision",
    "OrchTextRouter",
    "PlanSuggestion",
    "RecipeRequest",
    "RecipeResult",
    "RecipeScanner",
    "ScannedRecipeResult",
    "VisionLanguageOCR",
    "aclose",
    "allocate_for",
    "build_recipe_prompt",
    "call_vision_backend",
    "close",
    "estimate_timing",
    "extract_label",
    "generate_plan",
    "get_meal_plan_router",
    "parse_label",
    "parse_recipe",
    "placeholder_label",
    "shim",
    "stream_recipe",
    "stream_recipe_chunks",
    "stream_token",
    "try_docuvision",
]
