"""``shim demo``: a whole rollout of kiwi's tasks on the simulator, in about a minute.

Kiwi's wrapped call sites (``examples/kiwi``) take its app's requests
(``examples/kiwi/traffic.py``) against ``shim sim``. Shadow every task, read the
report, ramp the task that earned it to live on autopilot (``shim rollout``), drill an
automatic rollback of the task that did not, and end with the report as a table and an
HTML page. The CLI steps run as an operator would type them, against the flags file and the
log of the running call sites.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shim.analysis.policy import Policy
from shim.analysis.report import build_report
from shim.analysis.report_format import table
from shim.analysis.report_html import render_html
from shim.base.orch import default_config_path
from shim.base.text import escape_markup
from shim.demo.background import Background
from shim.flags import FileFlags
from shim.flags.store import FileStore

__all__ = ["run_demo"]

TASKS = (
    "kiwi.meal_plan",
    "kiwi.recipe_generation",
    "kiwi.ocr",
    "kiwi.barcode_scan",
    "kiwi.recipe_scan",
)


#: The simulator's knobs: legacy services a little slower than the task path; the
#: vision task path drifts, as a new vision model that sometimes renames or drops a
#: key, or keeps the shape and reads the values wrong, would.
SIM_KNOBS = (
    "--latency-ms",
    "8",
    "--latency-p99-ms",
    "30",
    "--knob",
    "legacy:latency_ms=10",
    "--knob",
    "legacy:latency_p99_ms=40",
    "--knob",
    "kiwi.ocr:drift_rate=0.3",
    "--knob",
    "kiwi.ocr:drift_kinds=missing_key,renamed_key,values",
)


@contextmanager
def _simulator(seed: int) -> Iterator[str]:
    """``shim sim`` in a process of its own, as an operator would start it (kiwi's call
    sites and the shim keep this interpreter to themselves); yields its URL."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "shim", "sim", "--port", "0", "--seed", str(seed), *SIM_KNOBS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        first = sim.stdout.readline()
        if not first.startswith("listening on "):
            raise RuntimeError(f"shim sim did not start: {first.strip() or 'no output'}")
        threading.Thread(target=sim.stdout.read, name="shim-sim-out", daemon=True).start()
        yield first.split()[-1]
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()


# The example app (``examples/kiwi`` in the repository), shipped inside the package so an
# installed ``shim demo`` has it too.
_KIWI = "shim.demo.kiwi"


def _callsites(env: dict[str, str]) -> Any:
    """Import kiwi's call sites with this environment, fresh, as a new process would:
    every module of the example is imported again, so its decorators see ``env``."""
    os.environ.update(env)
    for name in [m for m in sys.modules if m.startswith(f"{_KIWI}.")]:
        del sys.modules[name]
    return importlib.import_module(f"{_KIWI}.callsites")


class _Story:
    """The demo's running parts: the simulator, kiwi's call sites, flags, log, output."""

    def __init__(self, kiwi: Any, out: Path, console: Console, rng: random.Random) -> None:
        self.kiwi = kiwi
        self.out = out
        self.log = out / "comparisons.jsonl"
        self.flags = out / "flags.yaml"
        self.console = console
        self.rng = rng

    def command(self, args: list[str], note: str = "") -> None:
        """Show a CLI command as an operator would type it (paths short)."""
        shown = self.short(" ".join(["shim", *args]))
        self.console.print(f"[bold]$ {escape_markup(shown)}[/]{note}")

    def output(self, text: str) -> None:
        """Show a command's output, indented (paths short)."""
        for line in text.strip().splitlines():
            self.console.print("  " + self.short(line), markup=False)

    def short(self, text: str) -> str:
        """``text`` with the output folder's full path shown as its name."""
        folder = str(self.out)
        return text.replace(folder, self.out.name) if self.out.name else text

    def shim_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``shim`` CLI as an operator would, showing the command and its output."""
        self.command(list(args))
        done = subprocess.run(
            [sys.executable, "-m", "shim", *args], capture_output=True, text=True, timeout=120
        )
        self.output(done.stdout + done.stderr)
        return done

    def progress(self) -> Progress:
        """A progress bar on the demo's console."""
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )

    def traffic(self, description: str, plan: list[str]) -> None:
        with self.progress() as progress:
            bar = progress.add_task(description, total=len(plan))
            _drive(self.kiwi, plan, self.rng, lambda: progress.advance(bar))
        self.kiwi.shim.flush(timeout=30)

    def serve_percent(self, task: str) -> int:
        """The task's serve % in the flags file (what the CLI left there)."""
        return FileStore(self.flags).read().tasks[task].serve

    def until_running(self, task: str) -> int:
        """Wait until the running process has picked up the file's serve % for ``task``."""
        serve = self.serve_percent(task)
        deadline = time.monotonic() + 5
        running: FileFlags = self.kiwi.shim.flags
        while running.rules.state.tasks[task].serve != serve:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the running process did not pick up {task}'s flags")
            time.sleep(0.02)
        return serve

    def served(self, task: str, since: int) -> Counter[str]:
        """How the comparisons of ``task`` logged after byte ``since`` were served."""
        with self.log.open("rb") as handle:
            handle.seek(since)
            rows = [json.loads(line) for line in handle]
        name = task.partition(".")[2]
        return Counter(
            r["served_by"] for r in rows if r["event"] == "shim.comparison" and r["task"] == name
        )

    def report(self, title: str) -> dict[str, Any]:
        policy = Policy.load(self.flags.parent / "policy.yaml")  # the demo's, as promote's
        report = build_report([str(self.log)], policy=policy)
        self.console.rule(title)
        self.console.print(table(report))
        return report


def run_demo(*, seed: int, calls: int, out: Path, console: Console) -> dict[str, Any]:
    """The whole rollout on the simulator; returns the final report."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("comparisons.jsonl", "report.html"):
        (out / stale).unlink(missing_ok=True)
    (out / "policy.yaml").write_text(DEMO_POLICY)
    (out / "plan.yaml").write_text(DEMO_PLAN)
    (out / "flags.yaml").write_text(
        "# written by shim demo; `shim promote` and `shim rollback` edit it from here on\n"
        + "".join(f"{t}: {{serve: 0, shadow: 100}}\n" for t in TASKS)
    )
    rng = random.Random(seed)
    started = time.perf_counter()
    with _simulator(seed) as url:
        env = {
            "CF_ORCH_URL": url,
            "SHIM_FLAGS": str(out / "flags.yaml"),
            "SHIM_LOG": str(out / "comparisons.jsonl"),
            "SHIM_REGISTRY": str(default_config_path("model_registry.yaml")),
            "SHIM_ASSIGNMENTS": str(default_config_path("assignments.yaml")),
            # kiwi's product key for its recipe streams (the simulator takes any)
            "COORDINATOR_KIWI_KEY": "kiwi-demo-product-key",
            # a judge (kiwi.judge on the coordinator) reads a fifth of the pairs
            "SHIM_JUDGE": "kiwi.judge",
            "SHIM_JUDGE_SAMPLE": "0.2",
            # legacy runs again on a tenth of the shadowed calls: its own noise, which
            # the mismatch and quality gates read the candidate against
            "SHIM_NOISE_SAMPLE": "0.1",
        }
        story = _Story(_callsites(env), out, console, rng)
        console.print(f"simulator on {url}; kiwi's call sites wrapped; flags {story.flags}")
        _act_shadow(story, calls)
        _act_autopilot(story, "kiwi.meal_plan")
        _act_drill(story, "kiwi.ocr")
        story.kiwi.close()
    report = story.report("4. Final report")
    html = out / "report.html"
    html.write_text(render_html(report))
    story.shim_cli("status", "--flags", str(story.flags))
    console.print(
        f"The story took {time.perf_counter() - started:.0f} s. The log is {story.log}, "
        f"the HTML report {html}; read the log again with: shim report {story.log}"
    )
    return report


def _act_shadow(story: _Story, calls: int) -> None:
    story.console.rule("1. Shadow every kiwi task at 100 %")
    share = {
        "kiwi.meal_plan": 0.3,
        "kiwi.recipe_generation": 0.25,
        # the recipe streamed to the browser: kiwi.recipe_generation's streaming call site
        "kiwi.recipe_stream": 0.05,
        "kiwi.ocr": 0.15,
        "kiwi.recipe_scan": 0.1,
    }
    plan = [t for t, p in share.items() for _ in range(round(calls * p))]
    plan += ["kiwi.barcode_scan"] * (calls - len(plan))
    story.rng.shuffle(plan)
    story.traffic("kiwi traffic, legacy serving, task path compared", plan)
    story.report("2. What the comparisons say")
    story.console.print(
        "meal_plan and recipe_generation (its streams too: time to first chunk) may go "
        "further; ocr's vision output drifts "
        "from legacy's structure, and where the shape holds its values are off (its "
        "content quality; the judge prefers legacy's answers), so it stays on legacy."
    )


#: The demo's promotion policy: the built-in gates, but no soak time (a demo has no
#: ten minutes per rung) and a 1 pp error margin, which 300 clean pairs can show.
DEMO_POLICY = """\
# written by shim demo: the built-in gates (examples/kiwi/policy.yaml lists them), except
defaults:
  min_soak: 0                # a demo has no ten minutes to soak each rung
  max_error_increase: 0.01   # 300 clean pairs show this; 0.5 pp needs about 550
tasks:                       # content read field by field or section by section
  kiwi.ocr: {min_quality: 0.95, max_judge_loss: 0.1}   # and by the judge (kiwi.judge)
  kiwi.recipe_generation: {min_quality: 0.95}
"""


#: The demo's rollout plan: shadow, a canary rung, live; a breach goes back to shadow.
DEMO_PLAN = """\
# written by shim demo: the rungs `shim rollout` walks a task through
steps:                       # each needs 300 pairs of its own and the policy's gates
  - {serve: 0, shadow: 100, soak: 0, min_pairs: 300}    # a demo has no time to soak
  - {serve: 25, shadow: 100, soak: 0, min_pairs: 300}
  - {serve: 100, shadow: 100, soak: 0, min_pairs: 300}  # watched too, then complete
on_breach: {step: 0}         # back to shadow: the task path serves nothing, pairs go on
"""


def _act_autopilot(story: _Story, task: str, cap: int = 4000) -> None:
    story.console.rule(f"3. Ramp {task} from shadow to live on autopilot")
    plan = story.flags.parent / "plan.yaml"
    story.console.print(
        f"`shim rollout` walks {plan.name}'s rungs on its own: each needs 300 pairs from "
        "that rung, and the policy's gates held by always-valid bounds (looking after "
        "every batch is safe), before the next. Such bounds ask more of a rung: with no "
        "error at all, the 1-point error line takes about 1,100 pairs."
    )
    since = story.log.stat().st_size
    code, sent = _controlled(story, task, plan, cap)
    split = story.served(task, since)
    story.console.print(
        f"{task}: the rollout ended with exit code {code} after {sent} calls; "
        f"{split['task']} of them served by the task path, {split['legacy']} by legacy, "
        f"{split['legacy_fallback']} fell back. Each step is a shim.rollout record with "
        "its evidence."
    )


def _act_drill(story: _Story, task: str) -> None:
    story.console.rule(f"Drill: {task} rolls back on its own")
    story.console.print(
        f"{task}'s verdict says ROLLBACK; to show the controller at work it is forced to "
        "serve 25 % anyway (the record says forced), and a rollout takes it up from there."
    )
    story.shim_cli(
        "promote", task, "--serve", "25", "--force", "--flags", str(story.flags),
        "--log", str(story.log),
    )  # fmt: skip
    story.until_running(task)
    code, sent = _controlled(story, task, story.flags.parent / "plan.yaml", 3000)
    story.until_running(task)
    story.console.print(
        f"{task} is back in shadow (serve {story.serve_percent(task)} %) after {sent} "
        f"calls (exit code {code}); the shim.rollout record in the log says why."
    )


def _controlled(story: _Story, task: str, plan: Path, cap: int) -> tuple[int, int]:
    """Run ``shim rollout`` on ``task`` in the background and drive the task's traffic
    until it ends (or ``cap`` calls); its exit code and the calls sent."""
    policy = story.flags.parent / "policy.yaml"
    command = ["rollout", task, "--plan", str(plan), "--log", str(story.log)]
    command += ["--flags", str(story.flags), "--policy", str(policy), "--interval", "0.2"]
    story.command(command, " (in the background)")
    controller = Background(command)
    sent = 0
    with story.progress() as progress:
        bar = progress.add_task(task, total=None)
        while controller.running and sent < cap:
            serve = story.serve_percent(task)
            progress.update(bar, description=f"{task} at serve {serve} %")
            _drive(story.kiwi, [task] * 100, story.rng, lambda: progress.advance(bar))
            sent += 100
            for line in controller.said():
                progress.console.print("  " + story.short(line), markup=False)
        code = controller.wait(timeout=30)
        for line in controller.said():
            progress.console.print("  " + story.short(line), markup=False)
    story.kiwi.shim.flush(timeout=30)
    return code, sent


def _drive(kiwi: Any, plan: list[str], rng: random.Random, tick: Any) -> None:
    """The app's requests for ``plan`` (kiwi's own traffic driver: sync call sites from
    threads, the async one on its own event loop)."""
    traffic = importlib.import_module(f"{_KIWI}.traffic")
    traffic.drive(kiwi, [t.partition(".")[2] for t in plan], rng, tick)
