"""Whether the task path may be called for a task now: its circuit breaker, its shadow
spend (budget and back-off), and room for the work. One path for every wrapper."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shim import flags as flagpkg
from shim.client.task import TaskAllocation, TaskResult
from shim.core.breaker import BreakerPolicy, CircuitBreaker, Transition
from shim.core.call import Call
from shim.core.spend import BUSY, Backoff, Replicas, ShadowBudget, Spend
from shim.core.ticket import Ticket
from shim.records.observe import CallSite
from shim.records.recorder import Recorder
from shim.records.usage import usage_record

__all__ = ["Admission", "Admitted"]


class _Task:
    """One task's breaker and shadow spend, and the last admission for a comparison and
    for a serving call (reused while the tickets in it are current: nothing is
    allocated per call while the breaker is closed and shadowing is not paused)."""

    __slots__ = ("breaker", "serving", "shadowing", "spend")

    def __init__(self, breaker: CircuitBreaker, spend: Spend) -> None:
        self.breaker = breaker
        self.spend = spend
        self.shadowing: Admitted | None = None
        self.serving: Admitted | None = None


class Admitted:
    """A call let through to the task path (:meth:`Admission.allow`): what its result
    is reported with (:meth:`Admission.failed`, :meth:`Admission.answered`). Its
    tickets name the breaker's and the back-off's state when it went out, so a result
    that comes back after either changed counts for nothing."""

    __slots__ = ("breaker", "shadow", "site", "spend", "task")

    def __init__(
        self, site: CallSite, task: _Task, breaker: Ticket, spend: Ticket | None, shadow: bool
    ) -> None:
        self.site = site
        self.task = task
        self.breaker = breaker
        #: The back-off's ticket; None for a serving call sent while shadowing is
        #: paused (serving is not paused, and its answer neither ends nor extends it).
        self.spend = spend
        self.shadow = shadow


#: A fleet's share while its replica count is not known: admits nothing (no call finds
#: a whole comparison in a bucket this small).
_NOT_KNOWN = ShadowBudget(per_second=1e-12, burst=1e-12)


class Admission:
    """Each wrapped task's breaker and shadow spend, and the one admission path
    (:meth:`admit`) a comparison goes through. What is turned away is counted
    (``shim.dropped``) by reason: ``breaker_open``, ``backoff``, ``budget``,
    ``queue_full``.

    ``budgets`` are the Shim's per-task :class:`ShadowBudget`; the flags'
    ``shadow_rate``/``shadow_tokens_per_hour`` override them (a fleet's budget, with
    ``replicas``, stays the fleet's: this process takes its share).
    """

    def __init__(
        self,
        *,
        policy: BreakerPolicy,
        backoff: Backoff,
        budgets: Mapping[str, ShadowBudget],
        flags: flagpkg.FlagSource,
        recorder: Recorder,
        on_transition: Transition,
        on_error: Callable[[str, BaseException, CallSite | None], None] | None = None,
    ) -> None:
        self.policy = policy
        self.backoff = backoff
        self._budgets = dict(budgets)
        self._budget_cache: dict[tuple[str, float | None, int | None], ShadowBudget] = {}
        self._flags = flags
        self._recorder = recorder
        self._on_transition = on_transition
        self._on_error = on_error
        self._tasks: dict[str, _Task] = {}
        #: fleet budgets: each one's replica count, and this process's share by count
        self._replicas: dict[int, Replicas] = {}
        self._shares: dict[tuple[int, int], ShadowBudget] = {}

    def add(self, name: str) -> None:
        """Keep a breaker and a spend for the task ``name`` (once per task)."""
        if name not in self._tasks:
            breaker = CircuitBreaker(name, self.policy, on_transition=self._on_transition)
            self._tasks[name] = _Task(breaker, Spend(self.backoff))

    def state(self, name: str) -> str | None:
        """The task's breaker state; None for a task never wrapped."""
        task = self._tasks.get(name)
        return task.breaker.state if task else None

    def admit(self, call: Call, reserve: Callable[[], bool]) -> bool:
        """Room for a comparison of ``call`` (``reserve`` takes a slot for it), and a
        task path that is neither cooling down nor over its spend?"""
        site = call.site
        task = self._tasks[site.name]
        breaker = task.breaker
        if breaker.state != "closed" and not breaker.may_probe():
            self._recorder.dropped(site.product, site.task, "breaker_open")
            return False
        # Most calls have no back-off and no budget: two attribute reads and done.
        if (task.spend.until or call.rule.budgeted or self._budgets) and not self._within_spend(
            site, task.spend, call.rule
        ):
            return False
        if not reserve():
            self._recorder.dropped(site.product, site.task, "queue_full")
            return False
        return True

    def allow(self, site: CallSite, *, shadow: bool) -> Admitted | None:
        """May the task path be called now: the breaker (one probe at a time when half
        open) and, for a comparison (``shadow``), the back-off (one probe at a time once
        a pause is over)? What to report the result with if so; if not, None, counted
        as dropped (``breaker_open``, ``backoff``)."""
        task = self._tasks[site.name]
        breaker = task.breaker.allow()
        if breaker is None:
            self._recorder.dropped(site.product, site.task, "breaker_open")
            return None
        spend = task.spend.current  # the lock-free common case: not backing off
        if spend is None and shadow:
            spend = task.spend.probe()
            if spend is None:
                task.breaker.cancel(breaker)  # it is not going out after all
                self._recorder.dropped(site.product, site.task, "backoff")
                return None
        last = task.shadowing if shadow else task.serving
        if (
            last is not None
            and last.breaker is breaker
            and last.spend is spend
            and last.site is site
        ):
            return last
        admitted = Admitted(site, task, breaker, spend, shadow)
        if shadow:
            task.shadowing = admitted
        else:
            task.serving = admitted
        return admitted

    def paused(self, site: CallSite) -> bool:
        """Shadowing the task is paused (the coordinator said it was full after this
        comparison was queued): counted as dropped (``backoff``)."""
        if not self._tasks[site.name].spend.paused():
            return False
        self._recorder.dropped(site.product, site.task, "backoff")
        return True

    def failed(self, admitted: Admitted, status: int | None) -> None:
        """The task path failed with ``status``: no capacity pauses shadowing; other
        failures count against the breaker (no capacity too, when serving). Only the
        results of calls sent in the breaker's and the back-off's current state count."""
        task, spend = admitted.task, admitted.spend
        if status in BUSY:
            self._busy(admitted, status)
            if admitted.shadow:
                # Full, not broken: the breaker neither counts it nor waits on it.
                task.breaker.cancel(admitted.breaker)
                return
        elif spend is not None and spend.probe:
            task.spend.cancel(spend)  # the back-off learnt nothing: the next call probes
        task.breaker.failure(admitted.breaker)

    def abandoned(self, admitted: Admitted) -> None:
        """The call ended before the task path answered (cancelled, interrupted): its
        result says nothing, and a probe's turn goes to the next call at once."""
        admitted.task.breaker.cancel(admitted.breaker)
        if admitted.spend is not None and admitted.spend.probe:
            admitted.task.spend.cancel(admitted.spend)

    def answered(self, admitted: Admitted, result: TaskResult | TaskAllocation) -> None:
        """The task path answered: the breaker hears of it, the back-off ends if this
        was its probe, and the tokens it spent count against the task's budget."""
        site, task = admitted.site, admitted.task
        task.breaker.success(admitted.breaker)
        ticket = admitted.spend
        if ticket is not None and ticket.probe and task.spend.answered(ticket):
            self._recorder.event("shim.backoff", site.product, site.task, state="resumed")
        budget = self._budget(site, None)
        if budget is None or budget.tokens_per_hour is None:
            return
        usage = usage_record(getattr(result, "usage", None))
        tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
        if tokens:
            task.spend.charge(budget, int(tokens))

    def _within_spend(self, site: CallSite, spend: Spend, rule: flagpkg.Rule | None) -> bool:
        """Not backing off from a full coordinator, and within the task's budget?"""
        budget = self._budget(site, rule)
        if not spend.until and budget is None:
            return True
        reason = spend.admit(budget)
        if reason is None:
            return True
        self._recorder.dropped(site.product, site.task, reason)
        return False

    def _budget(self, site: CallSite, rule: flagpkg.Rule | None) -> ShadowBudget | None:
        """The task's budget: the flags' ``shadow_rate``/``shadow_tokens_per_hour`` over
        the Shim's ``budgets``."""
        budget = self._budgets.get(site.name)
        if rule is None:
            rule = self._flags.rules.active.get(site.name)
        if rule is not None and rule.budgeted:
            rate, tokens = rule.flags.shadow_rate, rule.flags.shadow_tokens_per_hour
            key = (site.name, rate, tokens)
            flagged = self._budget_cache.get(key)
            if flagged is None:
                base = budget or ShadowBudget()
                flagged = self._budget_cache[key] = ShadowBudget(
                    per_second=base.per_second if rate is None else rate,
                    burst=base.burst if rate is None else None,
                    tokens_per_hour=base.tokens_per_hour if tokens is None else tokens,
                    replicas=base.replicas,
                )
            budget = flagged
        if budget is None or budget.replicas is None:
            return budget
        return self._share(site, budget)

    def _share(self, site: CallSite, budget: ShadowBudget) -> ShadowBudget:
        """This process's part of a fleet's budget, by the live replica count."""
        assert budget.replicas is not None
        replicas = self._replicas.get(id(budget))
        if replicas is None:

            def failed(exc: BaseException) -> None:
                if self._on_error is not None:
                    self._on_error("budget.replicas", exc, site)

            replicas = self._replicas[id(budget)] = Replicas(budget.replicas, failed)
        count = replicas.count()
        if count is None:  # not known yet: nothing admitted (counted, reason budget)
            return _NOT_KNOWN
        key = (id(budget), count)
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = budget.share(count)
        return share

    def _busy(self, admitted: Admitted, status: int) -> None:
        """The coordinator had no capacity: stop shadowing the task for a while (unless
        the call was sent before the current pause began, or during it but not as its
        probe)."""
        site, spend = admitted.site, admitted.task.spend
        pause = spend.busy(admitted.spend)
        if not pause:
            return
        self._recorder.event(
            "shim.backoff",
            site.product,
            site.task,
            state="paused",
            status=status,
            seconds=round(pause, 3),
            busy_in_a_row=spend.busy_streak,
        )
