"""Deadline watchdog: the plan of each cycle must be fresh and on time.

Method family: timing supervision. Input: the clock (not the plan's content: timing is the one
failure the content cannot show).

Wrap the planner with :meth:`DeadlineWatchdog.timed` (or report latencies with :meth:`record`
where the runtime times planning itself). :meth:`judge` vetoes every row of the cycle when no
plan was produced since the last judgement (stale) or the last one took longer than
``budget_s``. The clock is injectable (``clock``), so tests and simulations are deterministic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from av.monitor import Verdict
from av.observation import Observation, Privileged, Trajectory


@dataclass
class DeadlineWatchdog:
    """Veto late or stale plans: ``budget_s`` (s) per plan, ``clock`` returning seconds."""

    budget_s: float = 0.1
    clock: Callable[[], float] = time.monotonic

    name: ClassVar[str] = "deadline"
    inputs: ClassVar[tuple[str, ...]] = ("clock",)
    method: ClassVar[str] = "timing supervision"
    requirements: ClassVar[tuple[str, ...]] = ("SR-LAT-01",)

    latency_s: float | None = field(default=None, init=False)
    fresh: bool = field(default=False, init=False)

    def record(self, latency_s: float) -> None:
        """Report that a plan was produced in ``latency_s`` seconds."""
        self.latency_s = float(latency_s)
        self.fresh = True

    def timed(self, planner: Any) -> "TimedPlanner":
        """``planner`` wrapped so that each ``plan`` call is timed and recorded here."""
        return TimedPlanner(planner, self)

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        B = observation.batch_size
        if not self.fresh:
            why = "no new plan since the last cycle (stale)"
        elif self.latency_s is not None and self.latency_s > self.budget_s:
            why = f"planning took {self.latency_s * 1e3:.0f} ms > {self.budget_s * 1e3:.0f} ms budget"
        else:
            why = ""
        self.fresh = False
        return Verdict(torch.full((B,), bool(why), dtype=torch.bool), (why,) * B)


@dataclass
class TimedPlanner:
    """A planner whose ``plan`` calls are timed by a :class:`DeadlineWatchdog`; other attributes
    (``name``, ``privileged``, ``observation_spec``, ...) are the wrapped planner's."""

    planner: Any
    watchdog: DeadlineWatchdog

    def __getattr__(self, item: str) -> Any:
        return getattr(self.planner, item)

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        start = self.watchdog.clock()
        out = self.planner.plan(observation, privileged)
        self.watchdog.record(self.watchdog.clock() - start)
        return out
