"""task-shim installs like a library: a wheel built from this tree, in a fresh virtualenv
outside the repository (``scripts/check-install.sh``, which a person can run as well)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check-install.sh"


@pytest.mark.subprocess
def test_the_wheel_installs_and_runs_beside_an_apps_own_flags_module(tmp_path: Path) -> None:
    """Wheel top level only `shim`; without extras `import shim` works and `shim` says
    what to install; with [cli,sim] an app's own flags.py and comparators.py sit beside
    shim.flags and shim.comparators, a Shim records a comparison, `shim demo` completes.
    The demo runs its shortest story here (300 calls): test_cli runs the whole one.
    (About 50 s, most of it pip and the demo; pip's cache keeps later runs close to it.)"""
    work = tmp_path / "install"
    try:
        done = subprocess.run(
            [str(SCRIPT), "--demo", str(work)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHON": sys.executable, "DEMO_CALLS": "300"},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a virtualenv is 250 MB
    out = done.stdout
    assert re.search(r"^top level: shim task_shim-[\w.]+\.dist-info$", out, re.M), out
    assert "install it with: pip install 'task-shim[cli]'" in out
    assert "shim --help: ok" in out and "shim check (embedded defaults): ok" in out
    assert "app: its own flags and comparators beside shim" in out
    assert "one comparison recorded (served by legacy" in out
    assert re.search(r"^shim demo: ok in \d+ s \(\d+ records, report.html\)$", out, re.M), out
    assert "== installs like a library: ok" in out
