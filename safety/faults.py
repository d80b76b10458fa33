"""Closed-loop fault injection through the one driver (:func:`closedloop.driver.rollout`).

A base planner (the CLI's default: IDM) drives each scenario closed-loop on the builtin
simulator with log-replayed agents (so the agents' logged future is the truth the hazard is
judged on). A :class:`FaultyPlanner` wraps it: every ``every_s`` seconds (the *injection
steps*, at most every second plan) it injects one fault, otherwise it passes the base plan
through. The runtime monitors ride along in the driver as its ``monitors`` (wrapped by
:class:`Perceived` so that they see the same perception the planner saw) and the driver's
fallback (:class:`av.fallback.ComfortableStopPlanner`) drives wherever one vetoes. The
deadline watchdog times the planner (``DeadlineWatchdog.timed``) on a
simulated clock (:class:`SimClock`), so its verdicts are deterministic.

Faults (:data:`FAULTS`), one type per rollout:

* plan faults (:data:`safety.inject.PLAN_FAULTS`: ``speed_up``, ``no_brake``, ``swerve_left``,
  ``swerve_right``, ``straight``) corrupt the base plan; perception is intact;
* perception faults corrupt what the planner *and* the monitors see, and the plan is the base
  plan made on that perception without braking (``no_brake``): ``noise``, ``dropped_agent``
  (the agent that plan would hit is missing), ``ghost`` (a stopped car 15 m ahead that is not
  there), ``delayed`` (the agents shown are ``DELAY_S`` old: stale perception);
* ``late``: the ``no_brake`` plan arrives ``LATE_S`` after the cycle started (over the 0.1 s
  budget of the deadline watchdog).

Ground truth (:func:`safety.inject.first_collision`, the evaluator's box test, no monitor code):
an injected plan is *hazardous* when it would collide with a logged agent within 3 s while the
base plan made at the same state on the true perception would not (the fault caused it). For each
hazardous event the driver's records (``Rollout.vetoes`` ``[B, T, M]``, ``fallback_used``) say
which monitors vetoed it and whether the fallback drove. Base-planner steps that are not
hazardous give the monitors' false-alarm counts in closed loop. The result is a
:class:`safety.inject.InjectionResult`, so the catch file, the per-monitor rates and the
diversity statistics (:mod:`safety.diversity`) are the same as for the open-loop injection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from av.batch import collate
from av.fallback import ComfortableStopPlanner
from av.monitor import Monitor, Verdict
from av.observation import Observation, Privileged, Trajectory
from av.types import Scenario
from closedloop.driver import observation_spec, rollout
from closedloop.planner import Planner
from closedloop.sim import make_simulator
from safety.inject import HORIZON_S, PLAN_FAULTS, InjectionResult, _perceive, first_collision, no_brake

DELAY_S = 1.0
LATE_S = 0.25
NOMINAL_LATENCY_S = 0.02
FAULTS: tuple[str, ...] = (*PLAN_FAULTS, "noise", "dropped_agent", "ghost", "delayed", "late")


@dataclass
class SimClock:
    """A clock (s) that only moves when told (:meth:`advance`); the watchdog's time source."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def delay_agents(obs: Observation, steps: int) -> Observation:
    """``obs`` with the agents' history ``[B, N, H, 5]`` shifted ``steps`` into the past: the
    latest agent states shown are ``steps`` steps old (the oldest repeat)."""
    if steps <= 0:
        return obs
    H = obs.agents.shape[2]
    idx = (torch.arange(H) - steps).clamp_min(0)
    return replace(obs, agents=obs.agents[:, :, idx], agent_valid=obs.agent_valid[:, :, idx])


@dataclass
class Event:
    """One injection step: the driver step ``k`` (log step ``start + k``), the fault, bool
    ``[B]`` hazardous rows, and bool ``[B]`` whether the fallback plan itself collides there."""

    k: int
    fault: str
    hazardous: np.ndarray
    fallback_collides: np.ndarray


@dataclass
class FaultyPlanner:
    """``base`` with ``fault`` injected every ``every`` plans (see the module docstring); the
    driver plans every ``plan_every`` 10 Hz steps, so plan ``k`` is made at log step
    ``start + k * plan_every``.

    Privileged (it needs the logged future for the ground truth); the base planner receives it
    only where it is privileged itself. Records :attr:`events` (injection steps) and
    :attr:`nominal` (``(k, bool [B] ok)``: base plans with a full horizon that do not collide).
    """

    base: Planner
    fault: str
    every: int
    clock: SimClock
    plan_every: int = 1
    seed: int = 0
    privileged: bool = True
    horizon_s: float = HORIZON_S
    events: list[Event] = field(default_factory=list)
    nominal: list[tuple[int, np.ndarray]] = field(default_factory=list)
    seen: Observation | None = None
    start: Tensor | None = None  # [B] first simulated log step
    last: Tensor | None = None  # [B] last valid log step
    k: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r} (known: {', '.join(FAULTS)})")
        self.name = f"{self.base.name}+{self.fault}"
        self.observation_spec = observation_spec(self.base)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._fallback = ComfortableStopPlanner()

    def _base(self, obs: Observation, priv: Privileged | None) -> Trajectory:
        return self.base.plan(obs, priv if self.base.privileged else None)

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        """The base plan, or at an injection step the faulty one; ``privileged`` is required."""
        if privileged is None:
            raise ValueError("FaultyPlanner needs the privileged inputs (the logged future) for the ground truth")
        k, self.k = self.k, self.k + 1
        horizon = int(round(self.horizon_s / observation.dt))
        alive = torch.ones(observation.batch_size, dtype=torch.bool)
        if self.start is not None and self.last is not None:  # a full horizon of log left
            alive = (self.start + k * self.plan_every + horizon) <= self.last
        inject = k % self.every == self.every // 2
        self.seen = observation
        if not inject:
            self.clock.advance(NOMINAL_LATENCY_S)
            plan = self._base(observation, privileged)
            hit, _ = first_collision(plan.poses, observation, privileged, self.horizon_s)
            self.nominal.append((k, (alive & ~hit).numpy()))
            return plan
        f = self.fault
        clean = self._base(observation, privileged)
        if f in PLAN_FAULTS:
            nominal = clean
            poses = PLAN_FAULTS[f](observation, nominal)
        else:
            target = first_collision(no_brake(observation, clean), observation, privileged, self.horizon_s)[1]
            if f == "delayed":
                self.seen = delay_agents(observation, int(round(DELAY_S / observation.dt)))
            elif f != "late":
                self.seen = _perceive(f, observation, target, self._gen)
            nominal = self._base(self.seen, privileged)
            poses = no_brake(observation, nominal)
        self.clock.advance(LATE_S if f == "late" else NOMINAL_LATENCY_S)
        hit, _ = first_collision(poses, observation, privileged, self.horizon_s)
        # the fault caused it: the base plan on the true perception is collision-free here
        hit &= ~first_collision(clean.poses, observation, privileged, self.horizon_s)[0]
        fb = first_collision(self._fallback.plan(observation).poses, observation, privileged, self.horizon_s)[0]
        self.events.append(Event(k, f, (alive & hit).numpy(), fb.numpy()))
        return Trajectory(poses, nominal.dt)


@dataclass
class Perceived:
    """``monitor`` judging the perception the :class:`FaultyPlanner` saw this cycle."""

    monitor: Any
    planner: FaultyPlanner

    def __post_init__(self) -> None:
        self.name = self.monitor.name

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        return self.monitor.judge(self.planner.seen if self.planner.seen is not None else observation, trajectory)


def _monitors(names: Sequence[str] | None, clock: SimClock) -> list[Monitor]:
    from safety.monitors import MONITORS, make_monitor

    return [make_monitor(n, clock=clock) if n == "deadline" else make_monitor(n) for n in (names or MONITORS)]


def inject_closed_loop(scenarios: Sequence[Scenario], planner_factory: Any, faults: Sequence[str] = FAULTS,
                       every_s: float = 1.0, seed: int = 0, monitors: Sequence[str] | None = None,
                       plan_every: int = 5, horizon_s: float = HORIZON_S) -> tuple[InjectionResult, dict[str, Any]]:
    """Drive ``scenarios`` once per fault type with ``planner_factory()`` wrapped by a
    :class:`FaultyPlanner`, the ``monitors`` (names; default all registered) and the fallback in
    the loop; the driver plans every ``plan_every`` 10 Hz steps. Returns the catch matrix of
    the hazardous events (an :class:`InjectionResult`) and
    per fault type the closed-loop facts the driver recorded: ``injections``, ``hazardous``,
    ``vetoed``, ``fallback_drove_at_vetoed`` (events where the driver drove the fallback)."""
    batch = collate(list(scenarios))
    every = max(2, int(round(every_s / (batch.dt * plan_every))))  # every other plan at least is the base's
    last = batch.step_valid.long().sum(1) - 1
    names: list[str] = []
    rows: list[np.ndarray] = []
    labels: list[str] = []
    where: list[str] = []
    times: list[float] = []
    fb_collides: list[bool] = []
    plans: dict[str, int] = {}
    false_alarms: dict[str, int] = {}
    nominal_plans = 0
    closed: dict[str, Any] = {}
    for i, fault in enumerate(faults):
        clock = SimClock()
        mons = _monitors(monitors, clock)
        faulty = FaultyPlanner(planner_factory(), fault, every, clock, plan_every, seed + i, horizon_s=horizon_s,
                               start=batch.history_steps, last=last)
        deadline: Any = next((m for m in mons if m.name == "deadline"), None)
        driven: Any = deadline.timed(faulty) if deadline is not None else faulty
        with make_simulator("builtin", agents="log") as sim, torch.no_grad():
            result = rollout(sim, batch, driven, monitors=[Perceived(m, faulty) for m in mons],
                             plan_every=plan_every, record_plans=False)  # fallback: the comfortable stop
        names = list(result.monitor_names)
        false_alarms = false_alarms or {n: 0 for n in names}
        start = result.start_step
        assert result.vetoes is not None and result.fallback_used is not None  # recorded with monitors
        vetoes, fb_used = result.vetoes.cpu().numpy(), result.fallback_used.cpu().numpy()
        T = vetoes.shape[1]
        stats = {"injections": 0, "hazardous": 0, "vetoed": 0, "fallback_drove_at_vetoed": 0,
                 "vetoed_non_hazardous": 0}
        for ev in faulty.events:
            for b in range(batch.batch_size):
                t = int(start[b]) + ev.k * plan_every
                if t >= T or t > int(last[b]):
                    continue
                stats["injections"] += 1
                caught = vetoes[b, t]
                if not ev.hazardous[b]:
                    stats["vetoed_non_hazardous"] += int(caught.any())
                    continue
                stats["hazardous"] += 1
                stats["vetoed"] += int(caught.any())
                stats["fallback_drove_at_vetoed"] += int(caught.any() and fb_used[b, t])
                rows.append(caught)
                labels.append(fault)
                where.append(batch.ids[b])
                times.append(round(float(t * batch.dt), 1))
                fb_collides.append(bool(ev.fallback_collides[b]))
        plans[fault] = stats["injections"]
        for k, ok in faulty.nominal:
            for b in np.nonzero(ok)[0]:
                t = int(start[b]) + k * plan_every
                if t < T and t <= int(last[b]):
                    nominal_plans += 1
                    for m, n in enumerate(names):
                        false_alarms[n] += int(vetoes[b, t, m])
        closed[fault] = stats
    caught = np.stack(rows) if rows else np.zeros((0, len(names)), bool)
    res = InjectionResult(names, labels, where, times, caught, np.array(fb_collides, dtype=bool), nominal_plans,
                          false_alarms, plans)
    return res, closed
