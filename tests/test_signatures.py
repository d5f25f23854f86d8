"""Decorating checks the decorator's callables against the call site's signature: a
mismatch is a TypeError at import time naming the call site and the keyword, not a
failed comparison in the background later."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from shim import TaskRequest
from shim.core.decorate import SHADOWED
from shim.testing import TestShim

SHADOW = {"kiwi.meal_plan": {"shadow": 100}, "kiwi.ocr": {"shadow": 100}}


@pytest.fixture
def s() -> Iterator[TestShim]:
    with TestShim(SHADOW, answer=lambda request: "ok") as shim:
        yield shim


def test_a_request_that_misses_a_keyword_only_parameter_names_site_keyword_and_both_shapes(
    s: TestShim,
) -> None:
    with pytest.raises(TypeError) as raised:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda system, user: TaskRequest(prompt=user, system=system),
        )
        def complete(system: str, user: str, *, temperature: float = 0.7) -> str:
            return user

    message = str(raised.value)
    assert "tests.test_signatures:" in message and "complete" in message
    assert "request= takes (system, user)" in message
    assert "the call site passes (system, user, *, temperature)" in message
    assert "give it the same parameters" in message


def test_a_key_that_takes_fewer_arguments_is_refused(s: TestShim) -> None:
    shapes = r"key= takes \(user\) but the call site passes \(user, day\)"
    with pytest.raises(TypeError, match=shapes):

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda user, day: TaskRequest(prompt=day),
            key=lambda user: user,
        )
        def plan(user: str, day: str) -> str:
            return day


def test_kwargs_at_the_call_site_need_kwargs_in_request(s: TestShim) -> None:
    with pytest.raises(TypeError, match=r"passes \(system, user, \*\*kw\)"):

        @s.shadow(
            product="kiwi", task="meal_plan", request=lambda system, user: TaskRequest(prompt=user)
        )
        def complete(system: str, user: str, **kw: Any) -> str:
            return user

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda system, user, **kw: TaskRequest(prompt=user, params=kw),
    )
    def fitting(system: str, user: str, **kw: Any) -> str:
        return user

    assert fitting("s", "u", temperature=0.1) == "u"


def test_a_response_must_take_one_argument(s: TestShim) -> None:
    shapes = r"response= takes \(result, extra\) but is called with one"
    with pytest.raises(TypeError, match=shapes):

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda q: TaskRequest(prompt=q),
            response=lambda result, extra: result.text,
        )
        def plan(q: str) -> str:
            return q


def test_async_call_sites_are_checked_too(s: TestShim) -> None:
    with pytest.raises(TypeError, match="request= takes"):

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest())
        async def plan(q: str) -> str:
            return q


def test_a_method_passes_self_to_request(s: TestShim) -> None:
    """The wrapped function of a method takes ``self``; so must ``request``."""

    class Planner:
        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda self, q: TaskRequest(prompt=q),
        )
        def plan(self, q: str) -> str:
            return q

    assert Planner().plan("soup") == "soup"
    assert s.comparisons[0]["call_site"].endswith("Planner.plan")
    shapes = r"request= takes \(q\) but the call site passes \(self, q\)"
    with pytest.raises(TypeError, match=shapes):

        class Forgetful:
            @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q))
            def plan(self, q: str) -> str:
                return q


def test_allocation_sites_check_service_hint_product_and_task(s: TestShim) -> None:
    @contextlib.contextmanager
    def allocate(product: str, task: str, *, service_hint: str) -> Iterator[str]:
        yield "legacy"

    fits = s.shadow(
        product=lambda product, task, **kw: product,
        task=lambda product, task, **kw: task,
        allocation=True,
        service_hint=lambda product, task, *, service_hint: service_hint,
    )(allocate)
    with fits("kiwi", "ocr", service_hint="cf-docuvision") as held:
        assert held == "legacy"
    with pytest.raises(TypeError, match=r"task= takes \(product\) but the call site passes"):
        s.shadow(product="kiwi", task=lambda product: "ocr", allocation=True)(allocate)
    with pytest.raises(TypeError, match="service_hint= takes"):
        s.shadow(product="kiwi", task="ocr", allocation=True, service_hint=lambda: "cf-docuvision")(
            allocate
        )


def test_callables_without_a_signature_are_taken_on_trust(s: TestShim) -> None:
    @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q), key=str)
    def plan(q: str) -> str:  # str: a class whose signature cannot be read
        return q

    @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q), key=max)
    def plan_max(q: str) -> str:  # max has no signature to read
        return q

    biggest = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest())(max)
    assert plan("x") == "x" and plan_max("y") == "y" and biggest(1, 3) == 3


def test_kiwis_example_call_sites_all_decorate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call site in examples/kiwi, in kiwi's own shapes, passes the checks."""
    monkeypatch.delenv("CF_ORCH_URL", raising=False)  # a disabled Shim decorates the same
    package = "shim.demo.kiwi"
    fresh = [m for m in sys.modules if m.startswith(f"{package}.")]
    for name in fresh:
        monkeypatch.delitem(sys.modules, name)
    try:
        callsites = importlib.import_module(f"{package}.callsites")
        wrapped = [
            value
            for module in list(sys.modules.values())
            if getattr(module, "__name__", "").startswith(f"{package}.")
            for owner in (module, *[v for v in vars(module).values() if isinstance(v, type)])
            for value in vars(owner).values()
            if hasattr(value, SHADOWED)
        ]
        assert len({id(w) for w in wrapped}) >= 5  # each @shim.shadow in the example
        callsites.close()
    finally:
        for name in [m for m in sys.modules if m.startswith(f"{package}.")]:
            del sys.modules[name]
