"""A Shim's life in its process, under stress: a fork with calls in flight, SIGTERM with
comparisons queued, and exit without close() against a coordinator that never answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim import BreakerPolicy, Limits, TaskRequest
from shim.core.breaker import CircuitBreaker
from shim.core.gate import Gate
from shim.sim import Profile, Simulator
from shim.testing import TestShim

from .shimkit import dropped, records, wait_for

#: Python 3.12+ warns that a fork with threads running may deadlock the child: these
#: tests fork with the shim's threads running on purpose, to show that it does not.
FORKS_WITH_THREADS = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


def _in_child(body: str, scope: dict[str, object]) -> int:
    """Fork; the child runs ``body`` (a Python expression that must be true) with a
    deadline of its own, and leaves with 0 if it was, 1 if not, 2 if it raised or hung."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            signal.alarm(5)  # a child stuck on a lock the parent held never comes back
            code = 0 if eval(body, scope) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@FORKS_WITH_THREADS
@pytest.mark.parametrize("stage", [{"serve": 50, "shadow": 0}, {"serve": 100, "shadow": 0}])
def test_a_child_forked_while_calls_are_served_serves(stage: dict[str, int]) -> None:
    """canary and live: the parent's in-flight calls fill the serving gate when it
    forks; the child's own calls are served by the task path all the same."""
    release = threading.Event()

    def answer(request: TaskRequest) -> str:
        if request.prompt == "held":
            release.wait(10)
        return "task"

    s = TestShim({"kiwi.meal_plan": stage}, answer=answer, limits=Limits(max_serving=2))

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda prompt, user: TaskRequest(prompt=prompt),
        response=lambda result: result.text,
        key=lambda prompt, user: user,
    )
    def plan(prompt: str, user: str) -> str:
        return "legacy"

    # A user the serve share draws at 50 % as at 100 %.
    user = next(u for u in map(str, range(1000)) if s.flags.decide("kiwi.meal_plan", u).serve)
    callers = [threading.Thread(target=plan, args=("held", user)) for _ in range(2)]
    for caller in callers:
        caller.start()
    wait_for(lambda: s._engine.serving.inside == 2)
    try:
        assert plan("now", user) == "legacy", "the parent's gate is full"
        assert _in_child("plan('now', user) == 'task'", {"plan": plan, "user": user}) == 0
    finally:
        release.set()
        for caller in callers:
            caller.join(10)
        s.close()


@FORKS_WITH_THREADS
def test_a_lock_held_at_the_fork_does_not_wedge_the_child() -> None:
    """Another thread inside the serving gate's lock at the moment of the fork: the
    child's gate is a new one, free."""
    gate = Gate(4)
    with gate._lock:  # as a thread of the parent would hold it, mid-call
        code = _in_child("gate.try_enter()", {"gate": gate})
    assert code == 0


@FORKS_WITH_THREADS
def test_a_call_the_forking_thread_was_serving_leaves_the_childs_gate_empty() -> None:
    """The thread that forks is inside the gate (a request handler that forks): in the
    child its call ends all the same, and leaves. The gate stays at its limit, never
    below empty (which would let one caller too many in)."""
    gate = Gate(1)
    assert gate.try_enter()
    try:
        child = "(gate.leave(), gate.inside)[1] == 0 and gate.try_enter() and not gate.try_enter()"
        assert _in_child(child, {"gate": gate}) == 0
    finally:
        gate.leave()
    assert gate.inside == 0


@FORKS_WITH_THREADS
def test_a_breaker_probe_in_flight_at_the_fork_is_not_awaited_by_the_child() -> None:
    """The parent's half-open probe never answers in the child: the child probes at
    once instead of waiting another cooldown."""
    now = [0.0]
    breaker = CircuitBreaker(
        "kiwi.meal_plan", BreakerPolicy(failures=1, cooldown=30), clock=lambda: now[0]
    )
    breaker.failure(breaker.allow())  # type: ignore[arg-type]
    now[0] = 31.0
    assert breaker.allow() is not None, "the parent's probe goes out"
    assert breaker.allow() is None, "one probe at a time"
    assert _in_child("breaker.allow() is not None", {"breaker": breaker}) == 0


# -- SIGTERM ---------------------------------------------------------------------------

SIGTERM_APP = """
import signal, sys
import shim
from shim import Limits, Shim, TaskRequest, flags

url, flag_file, log, mode = sys.argv[1:5]
if mode == "app":
    def on_term(signum, frame):
        print("the app's own handler ran", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, on_term)
if mode != "default":
    shim.drain_on_sigterm(timeout=float(sys.argv[5]))
s = Shim(url, flags=flags.FileFlags(flag_file), log_path=log, limits=Limits(workers=2))
wrapped = s.shadow(product="kiwi", task="meal_plan",
                   request=lambda i: TaskRequest(prompt=str(i)))(lambda i: i)
for i in range(100):
    wrapped(i)
print("queued", s.stats()["pending"], flush=True)
signal.pause()
"""


def _terminated(
    sim: Simulator, tmp_path: Path, mode: str, timeout: float = 10.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run SIGTERM_APP, SIGTERM it once its 100 comparisons are queued; what it did,
    and the seconds from the signal to its end."""
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.meal_plan: {shadow: 100}\n")
    args = [sim.url, str(flag_file), str(tmp_path / "log.jsonl"), mode, str(timeout)]
    with subprocess.Popen(
        [sys.executable, "-c", SIGTERM_APP, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("queued"), first + (proc.stderr.read() if proc.stderr else "")
        assert int(first.split()[1]) > 50, "most comparisons are still queued at the signal"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err), took


@pytest.fixture
def slow_sim(sim: Simulator) -> Simulator:
    """Each task-path call takes 20 ms: 100 comparisons on two workers take a second."""
    sim.set_profile(Profile(seed=1, defaults={"latency_ms": 20, "latency_p99_ms": 20}))
    return sim


def test_sigterm_drains_queued_comparisons_then_dies_of_the_signal(
    slow_sim: Simulator, tmp_path: Path
) -> None:
    done, _ = _terminated(slow_sim, tmp_path, "drain")
    assert done.returncode == -signal.SIGTERM, done.stderr
    log = tmp_path / "log.jsonl"
    assert len(records(log)) == 100, "every queued comparison is written"


def test_sigterm_drain_chains_to_the_apps_own_handler(slow_sim: Simulator, tmp_path: Path) -> None:
    done, _ = _terminated(slow_sim, tmp_path, "app")
    assert "the app's own handler ran" in done.stdout
    assert done.returncode == 3, done.stderr
    assert len(records(tmp_path / "log.jsonl")) == 100


def test_sigterm_drain_keeps_its_deadline_and_counts_the_rest(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.set_profile(Profile(seed=1, defaults={"hang_rate": 1.0}))
    done, took = _terminated(sim, tmp_path, "drain", timeout=0.5)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert took < 3.0
    log = tmp_path / "log.jsonl"
    assert len(records(log)) + dropped(log, "shutdown") == 100, "each written or counted"


def test_without_the_drain_sigterm_loses_queued_comparisons_uncounted(
    slow_sim: Simulator, tmp_path: Path
) -> None:
    """Python's default: what the docs say is lost without drain_on_sigterm()."""
    done, _ = _terminated(slow_sim, tmp_path, "default")
    assert done.returncode == -signal.SIGTERM
    log = tmp_path / "log.jsonl"
    assert len(records(log)) + dropped(log) < 100


def test_drain_on_sigterm_is_for_the_main_thread() -> None:
    import shim

    failed: list[BaseException] = []

    def install() -> None:
        try:
            shim.drain_on_sigterm()
        except RuntimeError as exc:
            failed.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert failed and "main thread" in str(failed[0])


# -- exit without close() ----------------------------------------------------------------


@pytest.fixture
def hanging_coordinator() -> Iterator[str]:
    """A coordinator that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


MANY_SHIMS = """
import sys, time
from shim import Shim, TaskRequest, Timeouts, flags
url, flag_file, log = sys.argv[1:4]
shims = []
for n in range(20):
    s = Shim(url, flags=flags.FileFlags(flag_file), log_path=log, timeouts=Timeouts(shadow=60))
    wrapped = s.shadow(product="kiwi", task="meal_plan",
                       request=lambda: TaskRequest(prompt="x"))(lambda: "legacy")
    wrapped()
    shims.append(s)
deadline = time.monotonic() + 10
while any(s.stats()["pending"] == 0 for s in shims) and time.monotonic() < deadline:
    time.sleep(0.01)
print("in flight", flush=True)
"""


def _time_to_exit(script: str, url: str, flag_file: Path, log: Path) -> float:
    """Seconds from ``script`` saying its calls are in flight to its (clean) exit."""
    with subprocess.Popen(
        [sys.executable, "-c", script, url, str(flag_file), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in flight"
        started = time.monotonic()
        try:
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
        took = time.monotonic() - started
    assert proc.returncode == 0, err
    return took


def test_exit_without_close_is_bounded_in_total_not_per_shim(
    hanging_coordinator: str, tmp_path: Path
) -> None:
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.meal_plan: {shadow: 100}\n")
    log = tmp_path / "log.jsonl"
    took = _time_to_exit(MANY_SHIMS, hanging_coordinator, flag_file, log)
    assert took < 2.5 + 0.5, f"20 Shims took {took:.1f} s to exit"
    assert dropped(log, "shutdown") == 20, "each hanging comparison is counted"


SLOW_DISKS = """
import sys, time
from shim import FileSink, Shim, TaskRequest, Timeouts, flags

class SlowDisk(FileSink):
    '''Each write takes 0.3 s: a disk under load.'''
    def write(self, lines):
        time.sleep(0.3)
        super().write(lines)

url, flag_file, log = sys.argv[1:4]
shims = []
for n in range(8):
    s = Shim(url, flags=flags.FileFlags(flag_file), sink=SlowDisk(log),
             timeouts=Timeouts(shadow=60))
    wrapped = s.shadow(product="kiwi", task=f"task{n}",
                       request=lambda: TaskRequest(prompt="x"))(lambda: "legacy")
    wrapped()
    shims.append(s)
deadline = time.monotonic() + 10
while any(s.stats()["pending"] == 0 for s in shims) and time.monotonic() < deadline:
    time.sleep(0.01)
print("in flight", flush=True)
"""


def test_exit_writes_every_shims_drop_counts_in_the_time_of_the_slowest_disk(
    hanging_coordinator: str, tmp_path: Path
) -> None:
    """Eight Shims whose disks take 0.3 s a write, their comparisons hanging: at exit
    each is counted (``shutdown``) and written within the one deadline, the disks
    written at once, not one after another (2.4 s)."""
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("".join(f"kiwi.task{n}: {{shadow: 100}}\n" for n in range(8)))
    log = tmp_path / "log.jsonl"
    took = _time_to_exit(SLOW_DISKS, hanging_coordinator, flag_file, log)
    assert took < 3.0, f"8 Shims took {took:.1f} s to exit"
    counted = {r["task"] for r in records(log, "shim.dropped") if r["reason"] == "shutdown"}
    assert counted == {f"task{n}" for n in range(8)}
