"""How long a fresh interpreter takes to import task-shim and to answer ``shim --help``,
side by side with ``import httpx``.

    python bench/startup.py                 # 21 runs of each command
    python bench/startup.py --quick         # 5 runs, for CI
    python bench/startup.py --tree DIR      # the source tree DIR instead (PYTHONPATH=DIR),
                                            # e.g. an older commit from `git archive`

Each command runs in a new interpreter (a subprocess, from a temporary directory, as an
app would start), round-robin so that a slow moment falls on every command alike. Per
command: the best wall time over the runs, process start included, which is what the
targets and the ratios use (on a machine others share, their load only ever adds time:
the best run is the closest to the machine's own speed); the median wall time; and the
median CPU time (user + system). The anchor is ``import httpx``, which every user of
task-shim imports anyway; ``python -c pass`` is the floor. ``import shim; shim.Shim``
loads the decorator's core (httpx, pydantic, structlog, the flags), what an app pays at
its first ``Shim``. Interpreters start with their ``.pyc`` files written
(``PYTHONDONTWRITEBYTECODE`` and the other ``PYTHON*`` variables are dropped), as an
installed package has them.

Targets: ``import shim`` <= 150 ms, ``shim --help`` <= 300 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS_MS = {"import shim": 150.0, "shim --help": 300.0}
ANCHOR = "import httpx"


def commands(tree: Path | None) -> dict[str, list[str]]:
    """Name -> argv. ``shim --help`` is the console script next to this interpreter when
    there is one (and no other tree is measured), else ``python -m shim --help``."""
    python = sys.executable
    script = Path(python).with_name("shim")
    shim_help = [str(script), "--help"] if script.exists() and tree is None else []
    return {
        "python -c pass": [python, "-c", "pass"],
        ANCHOR: [python, "-c", "import httpx"],
        "import shim": [python, "-c", "import shim"],
        "import shim; shim.Shim": [python, "-c", "import shim; shim.Shim"],
        "shim --help": shim_help or [python, "-m", "shim", "--help"],
    }


def measure(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run, in ms; the run must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall * 1000, cpu * 1000


def run(runs: int, tree: Path | None) -> dict[str, Any]:
    argvs = commands(tree)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["COLUMNS"] = "80"  # the same help text, whatever terminal runs the benchmark
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve())
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in argvs}
    with tempfile.TemporaryDirectory() as cwd:
        for argv in argvs.values():  # warm-up: the file cache, .pyc files
            measure(argv, cwd, env)
        for _ in range(runs):
            for name, argv in argvs.items():
                samples[name].append(measure(argv, cwd, env))
    anchor = min(wall for wall, _ in samples[ANCHOR])
    figures: dict[str, Any] = {"runs": runs, "tree": str(tree) if tree else None, "commands": {}}
    for name, times in samples.items():
        walls = [wall for wall, _ in times]
        figures["commands"][name] = {
            "argv": " ".join([Path(argvs[name][0]).name, *argvs[name][1:]]),
            "best_ms": round(min(walls), 1),
            "median_ms": round(statistics.median(walls), 1),
            "cpu_ms": round(statistics.median(cpu for _, cpu in times), 1),
            "ratio_to_httpx": round(min(walls) / anchor, 2),
        }
    figures["targets_ms"] = TARGETS_MS
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs of each command")
    parser.add_argument("--runs", type=int, help="runs of each command (default 21)")
    parser.add_argument("--tree", type=Path, help="measure this source tree (PYTHONPATH)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args.runs or (5 if args.quick else 21), args.tree)
    rows = figures["commands"]
    print(
        f"fresh interpreters, {figures['runs']} runs each (best wall time; median; median "
        f"CPU time), Python {sys.version.split()[0]}"
    )
    for name, row in rows.items():
        print(
            f"  {name:<24} {row['best_ms']:>7.1f} ms  (median {row['median_ms']:>6.1f}, "
            f"CPU {row['cpu_ms']:>6.1f})  {row['ratio_to_httpx']:>5.2f}x import httpx"
        )
    ok = all(rows[name]["best_ms"] <= limit for name, limit in TARGETS_MS.items())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    targets = ", ".join(f"{name} <= {limit:.0f} ms" for name, limit in TARGETS_MS.items())
    print(f"targets: {targets}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
