"""Each package's public surface is explicit, sorted and importable."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["shim", "shim.sim", "shim.flags", "shim.comparators"])
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)

    # isort-style, as ruff keeps it: CONSTANTS, then Classes, then functions
    def order(n: str) -> tuple[int, str]:
        return (0 if n.isupper() else 1 if n[0].isupper() else 2, n)

    assert module.__all__ == sorted(module.__all__, key=order)
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.{public} is in __all__ but missing"
        assert getattr(module, public).__doc__ or public.isupper(), (
            f"{name}.{public} lacks a docstring"
        )


def test_shim_exports_the_contract_names() -> None:
    import shim

    expected = {
        "AsyncTaskClient",
        "ShimError",
        "TaskClient",
        "TaskFailed",
        "TaskNotRegistered",
        "TaskRequest",
        "TaskResult",
    }
    assert expected <= set(shim.__all__)


def test_importing_shim_does_not_import_the_simulator_stack() -> None:
    """Production installs have no fastapi; ``import shim`` must not need it."""
    import subprocess
    import sys

    code = "import sys, shim, shim.flags, shim.comparators; print('fastapi' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
