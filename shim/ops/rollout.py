"""``shim rollout``: walk one task through a plan's steps, advancing and retreating on
its own, on evidence that stays valid however often it is looked at.

:class:`Rollout` is the controller. It takes the log's records in order
(:meth:`Rollout.take`): change records start a step's evidence again, approvals are
noted, and each comparison of the task in the current stage goes into the step's
always-valid tests (:class:`~shim.analysis.stage_tests.StageTests`; from Prometheus:
:meth:`Rollout.take_gains`). :meth:`Rollout.decide` then, in order:

1. stops if the flags moved under it (someone else's change is the last word);
2. rolls back (to the plan's ``on_breach``) when a bound crosses a rollback line (the
   error increase, the mismatch rate, ``min_quality``, the typical and p95 latency
   ratios, with prices the cost per call);
3. holds while the step's soak time, its pairs or a promotion gate is short (a step
   that compares nothing, ``shadow: 0``, needs its soak time only);
4. completes at the last step, once it held like any other;
5. waits for an approval (``confirm``), then advances.

Every decision is a ``shim.rollout`` record (``action``: ``start``, ``take_up``,
``hold`` (the first of each step), ``advance``, ``await_approval``, ``rollback``,
``complete``, ``stopped``, ``webhook_failed``; the evidence it used), told to the plan's
webhook. The state is the flags and the log: a controller started again reads the log
from its start and takes up the same step with the same evidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim.analysis.policy import Gates, Policy
from shim.analysis.stage_tests import StageTests
from shim.flags import FlagState
from shim.flags.store import Change, FlagStore, Setting, setting_of
from shim.ops.logtail import seconds_of
from shim.ops.promote import OpsError, record
from shim.ops.rollout_plan import Plan
from shim.ops.webhook import notify

if TYPE_CHECKING:
    from shim.ops.prom_evidence import Gains

__all__ = ["Decision", "Rollout"]

_CHANGES = ("shim.promote", "shim.rollback", "shim.rollout")


@dataclass(frozen=True, slots=True)
class Decision:
    """What one look decided: ``action`` (``hold`` or a recorded action), the step the
    task is at afterwards (None: off the plan), why, whether the rollout ended, and the
    evidence it rested on (as its record has it; None for a hold)."""

    action: str
    step: int | None
    reasons: tuple[str, ...] = ()
    done: bool = False
    evidence: dict[str, Any] | None = None


class _Moved(Exception):
    """The task's flags are not what the controller set."""


@dataclass
class Rollout:
    """One task's rollout (see the module's docstring). ``log``: where its records go;
    ``clock``: seconds since the epoch, as the records' ``ts``."""

    task: str
    plan: Plan
    store: FlagStore
    log: Path | None
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = time.time
    tell: Callable[..., str | None] = notify
    tests: StageTests = field(default_factory=StageTests)
    since: float | None = None
    approved: set[int] = field(default_factory=set)
    expected: Setting | None = None
    awaiting: int | None = None
    #: the step whose first hold the webhook heard of
    held: int | None = None
    done: bool = False
    #: take up the plan whatever the log says ended the last rollout of the task
    fresh: bool = False
    #: read back from the log: the last change's setting, what ended a rollout (and
    #: whether it completed), whether one is in progress
    last_to: Setting | None = None
    ended_by: str | None = None
    completed: bool = False
    rolling: bool = False
    #: the comparisons come from the logs (False: from Prometheus, :meth:`take_gains`)
    log_evidence: bool = True

    @property
    def gates(self) -> Gates:
        return self.policy.for_task(self.task)

    # -- evidence ----------------------------------------------------------------------

    def take(self, rec: dict[str, Any]) -> None:
        """One record of the logs, in their order."""
        if f"{rec.get('product')}.{rec.get('task')}" != self.task:
            return
        event, action = rec.get("event"), rec.get("action")
        if event == "shim.rollout" and action == "approved":
            if isinstance(rec.get("step"), int):
                self.approved.add(rec["step"])
            return
        if event in _CHANGES:
            if self.expected is None:  # reading the log back
                self._read_back(rec)
            # running, it started each step itself (and a change of someone else's is
            # found in the flags, where it stops the rollout)
            return
        if event != "shim.comparison" or rec.get("schema") != 1 or not self.log_evidence:
            return
        current = self.expected or self.last_to
        if current is not None and rec.get("stage") != current.stage:
            return  # made before the change, recorded after it (or another step's)
        made = seconds_of(rec.get("ts"))
        if self.since is not None and made is not None and made < self.since:
            return  # from before the step began, read late (another log, read after)
        try:
            pair = StageTests.read_pair(rec)
        except (KeyError, TypeError, AttributeError):
            return
        costs = self.policy.costs(rec["legacy"], rec["candidate"], self.gates)
        self.tests.add(**pair, legacy_cost=costs[0], candidate_cost=costs[1])

    def take_gains(self, stage: str, gains: Gains) -> None:
        """What the task's ``stage`` gained across replicas since the last read
        (``--prometheus``), counted from when the step began (the caller rebases its
        evidence on :attr:`since`); another stage's is not this step's."""
        current = self.expected or self.last_to
        if current is None or stage == current.stage:
            if self.tests.promotion is None:  # buckets: the promotion tests read their side
                self.tests.promotion = StageTests()
            gains.into(self.tests)

    def _read_back(self, rec: dict[str, Any]) -> None:
        """A change record read back from the log: a new step's evidence begins (its
        approvals with it); a rollback, or a rollout that stopped or completed, ended
        the last rollout of the task."""
        event, action = rec.get("event"), rec.get("action")
        if event == "shim.rollout" and action in ("stopped", "complete"):
            self.ended_by = f"the last rollout of {self.task} " + (
                "completed" if action == "complete" else "stopped"
            )
            self.completed, self.rolling = action == "complete", False
        if event == "shim.rollout" and action == "hold" and isinstance(rec.get("step"), int):
            self.held = rec["step"]
        before, after = rec.get("from"), rec.get("to")
        take_up = event == "shim.rollout" and action == "take_up"
        if not isinstance(after, dict) or (before == after and not take_up):
            return
        if not take_up or rec.get("restarted"):
            self.tests = self.tests.fresh()
            self.approved.clear()
        self.since, self.held = seconds_of(rec.get("ts")), None
        try:
            self.last_to = Setting(int(after["serve"]), int(after["shadow"]))
        except (KeyError, TypeError, ValueError):
            self.last_to = None
        if event == "shim.rollback" or (event == "shim.rollout" and action == "rollback"):
            how = "automatically" if rec.get("automatic") else f"by {rec.get('who', 'someone')}"
            self.ended_by = f"{self.task} was rolled back ({how})"
        elif event == "shim.promote" and self.rolling:
            # a human's change in the middle of a rollout is the last word
            who = rec.get("who", "someone")
            self.ended_by = f"{self.task} was promoted by {who} during its rollout"
        elif (
            event == "shim.rollout" and action in ("start", "advance", "take_up")
        ) or event == "shim.promote":
            self.ended_by = None
        self.completed = False
        self.rolling = event == "shim.rollout" and self.ended_by is None

    # -- deciding ----------------------------------------------------------------------

    def decide(self) -> Decision:
        """Look once, and act (see the module's docstring)."""
        if self.done:
            raise OpsError(f"the rollout of {self.task} has ended")
        setting = setting_of(self.store.read([self.task]), self.task)
        if self.expected is not None and setting != self.expected:
            why = (
                f"the flags of {self.task} moved to serve {setting.serve} %, shadow "
                f"{setting.shadow} % (someone else changed them): stopped, nothing changed"
            )
            return self._note("stopped", setting, why, done=True)
        step = self.plan.index_of(setting.serve, setting.shadow)
        if self.expected is None:  # first look: take up where the flags and log are
            if self.rolling and self.last_to is not None and setting != self.last_to:
                # the rollout's last decision set other flags: someone changed them since
                self.ended_by = (
                    f"the flags of {self.task} are serve {setting.serve} %, shadow "
                    f"{setting.shadow} %, not what its rollout last set (someone else "
                    "changed them)"
                )
            if self.ended_by is not None and not self.fresh:
                self.done = True
                why = f"{self.ended_by}: nothing changed; to start again, add --fresh"
                return Decision("complete" if self.completed else "stopped", step, (why,), True)
            # a fresh rollout, or flags changed where no record says when: the step's
            # evidence starts now
            restarted = self.fresh or (self.last_to is not None and setting != self.last_to)
            if restarted:  # changed where no record says when: the evidence starts now
                self.tests, self.since, self.approved = self.tests.fresh(), None, set()
            self.expected = setting
            if step is None:
                return self._move(setting, 0, "start", "the plan's first step")
            if self.since is None or restarted:
                # no record says when this step began (or a fresh rollout takes it up):
                # one does now, so that a controller started again counts from it too
                now = self.clock()
                why = f"took up {self.task} at step {step}"
                self._note(
                    "take_up", setting, why, step=step, when=now, more={"restarted": restarted}
                )
                self.since, self.ended_by, self.held = now, None, None
        assert step is not None
        crossed = self.tests.breaches(
            error_increase=self.gates.rollback_error_increase,
            mismatch=self.gates.rollback_mismatch,
            latency_ratio=self.gates.max_latency_ratio_p50,
            min_quality=self.gates.min_quality,
            p95_ratio=self.gates.max_latency_ratio_p95,
            cost_ratio=self.gates.max_cost_ratio,
        )
        if crossed:
            back = self.plan.on_breach
            # a step below this one, or off: a breach never serves more
            low = None if isinstance(back, str) or back.step >= step else back.step
            target = Setting(0, 0) if low is None else self._setting(low)
            why = "; ".join(crossed)
            return self._apply(setting, target, "rollback", why, step=low, done=True)
        short = self._shortfalls(step)
        if short:
            return self._hold(setting, step, short)
        if step == len(self.plan.steps) - 1:
            why = "the plan's last step held its gates for its soak time"
            return self._note("complete", setting, why, done=True, step=step)
        if self.plan.confirm and step + 1 not in self.approved:
            if self.awaiting != step + 1:
                self.awaiting = step + 1
                why = f"step {step + 1} waits for `shim rollout approve {self.task}`"
                self._note("await_approval", setting, why, step=step + 1)
            return Decision("hold", step, (f"waiting for approval of step {step + 1}",))
        return self._move(setting, step + 1, "advance", "every gate passed")

    def _hold(self, setting: Setting, step: int, short: list[str]) -> Decision:
        """Not yet: the first hold of each step is recorded and told (not every look)."""
        if self.held != step:
            self.held = step
            self._note("hold", setting, "; ".join(short), step=step)
        return Decision("hold", step, tuple(short))

    def _setting(self, index: int) -> Setting:
        step = self.plan.steps[index]
        return Setting(step.serve, step.shadow)

    def _shortfalls(self, index: int) -> list[str]:
        """Why the step cannot advance yet (empty: it can)."""
        step, gates, tests = self.plan.steps[index], self.gates, self.tests
        short = []
        elapsed = self.clock() - (self.since or self.clock())
        if elapsed < step.soak:
            short.append(f"soaked {elapsed:.0f} of {step.soak:.0f} s")
        if step.shadow == 0:  # nothing is compared: time is all it can show
            return short
        if tests.errors.n < step.min_pairs:
            short.append(f"{tests.errors.n} of {step.min_pairs} pairs")
        short += tests.shortfalls(
            error_increase=gates.max_error_increase,
            mismatch=gates.max_mismatch,
            latency_ratio=gates.max_latency_ratio_p50,
            min_quality=gates.min_quality,
        )
        return short

    def evidence(self) -> dict[str, Any]:
        """What the step's decisions rest on, for records and the live view."""
        return {
            "pairs": self.tests.errors.n,
            "seconds": max(0.0, round(self.clock() - (self.since or self.clock()), 1)),
        } | self.tests.summary(
            error_increase=self.gates.max_error_increase, mismatch=self.gates.max_mismatch
        )

    # -- acting ------------------------------------------------------------------------

    def _move(self, setting: Setting, index: int, action: str, why: str) -> Decision:
        return self._apply(setting, self._setting(index), action, why, step=index)

    def _apply(
        self,
        before: Setting,
        after: Setting,
        action: str,
        why: str,
        *,
        step: int | None = None,
        done: bool = False,
    ) -> Decision:
        """Set the task's flags (if they are still ``before``), record and tell; the
        step begins when the change is made, as its record says (read back alike)."""
        evidence, now = self.evidence(), self.clock()
        changes: list[Change] = []

        def plan(state: FlagState) -> dict[str, Setting]:
            if setting_of(state, self.task) != before:
                raise _Moved
            return {self.task: after}

        def then(applied: list[Change]) -> None:
            changes.extend(applied)
            self._write(action, applied, why, evidence, step, now)

        try:
            self.store.update(plan, tasks=[self.task], on_applied=then)
        except _Moved:
            moved = setting_of(self.store.read([self.task]), self.task)
            self.expected = moved
            return self._note("stopped", moved, "the flags moved while changing them", done=True)
        if not changes:  # already there
            self._write(action, [Change(self.task, before, after)], why, evidence, step, now)
        self.expected, self.tests, self.since = after, self.tests.fresh(), now
        self.awaiting = self.held = None
        self.approved.clear()
        self.done = done
        found = self.plan.index_of(after.serve, after.shadow)
        self._tell(action, before, after, why, evidence, step)
        return Decision(action, found, (why,), done, evidence)

    def _note(
        self,
        action: str,
        setting: Setting,
        why: str,
        *,
        done: bool = False,
        step: int | None = None,
        when: float | None = None,
        more: dict[str, Any] | None = None,
    ) -> Decision:
        """A decision that changes no flag: recorded and told."""
        evidence = self.evidence()
        same = [Change(self.task, setting, setting)]
        self._write(action, same, why, evidence, step, when, more)
        self._tell(action, setting, setting, why, evidence, step)
        self.done = done
        found = self.plan.index_of(setting.serve, setting.shadow)
        return Decision(action, found, (why,), done, evidence)

    def _write(
        self,
        action: str,
        changes: list[Change],
        why: str,
        evidence: dict[str, Any],
        step: int | None,
        when: float | None = None,
        more: dict[str, Any] | None = None,
    ) -> None:
        extra: dict[str, Any] = {
            "action": action,
            "steps": len(self.plan.steps),
            "evidence": evidence,
            "automatic": True,
            **(more or {}),
        }
        if step is not None:
            extra["step"] = step
        when = self.clock() if when is None else when
        record("shim.rollout", changes, self.store, self.log, reason=why, extra=extra, when=when)

    def _tell(
        self,
        action: str,
        before: Setting,
        after: Setting,
        why: str,
        evidence: dict[str, Any],
        step: int | None,
    ) -> None:
        hook = self.plan.webhook
        if hook is None:
            return
        body = {
            "task": self.task,
            "action": action,
            "step": step,
            "from": before.as_record(),
            "to": after.as_record(),
            "reason": why,
            "evidence": evidence,
        }
        failed = self.tell(hook, body)
        if failed is not None:
            extra = {"action": "webhook_failed", "error": failed, "automatic": True}
            same = [Change(self.task, after, after)]
            when = self.clock()
            record(
                "shim.rollout", same, self.store, self.log, reason=action, extra=extra, when=when
            )
