"""Every command in the runbooks, run in order as an operator would paste them: each
runbook's ``sh`` blocks make one script, run with bash in a scratch directory beside a
clone's ``examples`` and ``.venv``. The simulator's port is swapped for a free one."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = sorted(p.stem for p in (ROOT / "runbooks").glob("*.md"))

#: What each runbook's output must show, beyond every command succeeding.
EXPECT: dict[str, list[str]] = {
    "rollout": [
        "ok: 6 tasks, 9 models",
        "promoted kiwi.meal_plan: off",
        "PROMOTE",
        "-> live (serve 100 %",
        "refused (exit 1)",
        "kiwi.ocr: start (step 0 of 1)",
        "kiwi.ocr: advance (step 1 of 1): every gate passed",
        "rollout complete",
    ],
    "shadow-spend": ["skipped for budget", "task path spent"],
    "fleet": [
        "read 900 comparison records of 1 task(s); no breach",
        "archived 900 JSON lines of 3 log(s) in fleet.parquet",
        "900 records, 0 bad lines",
    ],
}
#: Ports a runbook names, each made a free one when it runs (8700: the simulator's).
PORTS = ("8700", "9790", "9461", "9462", "9463")


def commands(name: str) -> str:
    text = (ROOT / "runbooks" / f"{name}.md").read_text()
    return "\n".join(re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_runbook(
    name: str, tmp_path: Path, subs: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    for link in ("examples", ".venv", "scripts"):
        (tmp_path / link).symlink_to(ROOT / link)
    script = commands(name)
    for old, new in subs.items():
        script = script.replace(old, new)
    (tmp_path / "runbook.sh").write_text(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n" + script
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIM_", "CF_"))}
    return subprocess.run(
        ["bash", "runbook.sh"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        # shim on PATH, as it is wherever task-shim is installed
        env={**env, "COLUMNS": "200", "PATH": f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"},
    )


def test_every_runbook_has_commands() -> None:
    assert {"rollout", "unleash"} <= set(RUNBOOKS)
    for name in RUNBOOKS:
        assert commands(name).strip(), f"runbooks/{name}.md has no sh block"


@pytest.mark.subprocess
@pytest.mark.parametrize("name", [n for n in RUNBOOKS if n != "unleash"])
def test_runbook_commands_run(name: str, tmp_path: Path) -> None:
    if name == "fleet" and shutil.which("prometheus") is None:
        pytest.skip("needs the prometheus binary: run through `make test`")
    done = run_runbook(name, tmp_path, {port: str(_free_port()) for port in PORTS})
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    seen = done.stdout + done.stderr  # what the operator sees
    for expected in EXPECT.get(name, []):
        assert expected in seen, f"{name}: {expected!r} not in\n{seen}"


@pytest.mark.subprocess
@pytest.mark.skipif(
    not os.environ.get("UNLEASH_ADMIN_TOKEN") or not os.environ.get("UNLEASH_URL"),
    reason="needs a running Unleash server: run through `make test` (scripts/with-unleash.sh)",
)
def test_unleash_runbook_commands_run(tmp_path: Path) -> None:
    """The runbook's placeholders become the suite's server and tokens. Its last command,
    `scripts/unleash.sh stop`, is left to `make test`, which runs it after the suite."""
    from shim.flags.store import Setting, UnleashAdminStore

    store = UnleashAdminStore(
        os.environ["UNLEASH_URL"], os.environ["UNLEASH_ADMIN_TOKEN"], environment="development"
    )
    store.apply({"kiwi.meal_plan": Setting(0, 0)})  # the runbook starts from an off task
    store.close()
    done = run_runbook(
        "unleash",
        tmp_path,
        {
            "https://unleash.example.internal/api": os.environ["UNLEASH_URL"],
            "'*:production.<backend token>'": shlex.quote(os.environ["UNLEASH_API_TOKEN"]),
            "'<admin token>'": shlex.quote(os.environ["UNLEASH_ADMIN_TOKEN"]),
            "UNLEASH_ENVIRONMENT=production": "UNLEASH_ENVIRONMENT=development",
            "scripts/unleash.sh stop": "true",
        },
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout + done.stderr
    assert "would promote kiwi.meal_plan" in out and "promoted kiwi.meal_plan: off" in out
    assert "Unleash http://127.0.0.1" in out, "shim status reads the server"
