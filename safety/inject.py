"""Fault injection on logged drives: corrupted plans and perception faults, judged by the monitors.

Every ``every_s`` seconds of each logged drive the observation (:func:`av.observe.observe`) and
the logged future are taken, and from the human plan (log replay) faulty plans are derived (:data:`PLAN_FAULTS`):

* ``speed_up``: the logged path driven with 2.5 m/s^2 more acceleration;
* ``no_brake``: the logged path at the current speed throughout (ignores every stop);
* ``swerve_left`` / ``swerve_right``: the logged plan with a lateral offset ramping to 3.5 m in 2 s;
* ``straight``: the current speed straight ahead (ignores the road's curvature).

Perception faults (:data:`PERCEPTION_FAULTS`) corrupt what the monitors see while the plan is
``no_brake``: ``noise`` (0.3 m Gaussian on agent positions), ``dropped_agent`` (the agent the
plan hits is missing), ``ghost`` (a stopped car 15 m ahead that is not there: a false alarm test).

Ground truth: a plan is *hazardous* if the ego footprint along it overlaps a logged agent's box
at the same time within ``horizon_s`` (3 s); this uses ``av.checks.box_overlap``, the oriented-box test
the evaluator uses, not any monitor's code. Every hazardous plan is an event of the catch
matrix (events x monitors: vetoed or not); non-hazardous human plans give each monitor's false
alarm rate. The fallback (:class:`av.fallback.ComfortableStopPlanner`) is judged on every vetoed
event: does it collide within the horizon too?
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from av.batch import collate
from av.checks import box_overlap
from av.fallback import ComfortableStopPlanner
from av.observation import Observation, Privileged, Trajectory
from av.observe import ObservationSpec, observe, prepare_map, privileged
from av.types import Scenario
from av.vehicle import ego_box

HORIZON_S = 3.0


def _along_path(path: Tensor, s: Tensor) -> Tensor:
    """Poses ``[B, K, 3]`` at arc lengths ``s`` ``[B, K]`` (m) along polylines ``path`` ``[B, P, 2]``
    (starting at the ego, the origin); beyond the end the last segment's direction continues."""
    seg = path[:, 1:] - path[:, :-1]  # [B, P-1, 2]
    length = seg.norm(dim=-1)
    cum = torch.cat([torch.zeros_like(length[:, :1]), length.cumsum(1)], 1)  # [B, P]
    i = (torch.searchsorted(cum.contiguous(), s.contiguous(), right=True) - 1).clamp(0, seg.shape[1] - 1)
    # direction of the segment (or of the last moving one, or +x when the path never moves)
    moving = length > 1e-3
    last_moving = torch.where(moving, torch.arange(seg.shape[1], device=s.device), -1).cummax(1).values
    first = torch.where(moving.any(1, keepdim=True), moving.float().argmax(1, keepdim=True), 0)
    j = torch.where(last_moving >= 0, last_moving, first.expand_as(last_moving)).gather(1, i)
    d = seg.gather(1, j[..., None].expand(-1, -1, 2))
    d = torch.where(d.norm(dim=-1, keepdim=True) > 1e-6, d, torch.tensor([1e-3, 0.0], dtype=d.dtype, device=d.device))
    u = d / d.norm(dim=-1, keepdim=True)
    base = path.gather(1, i[..., None].expand(-1, -1, 2))
    xy = base + u * (s - cum.gather(1, i))[..., None]
    return torch.cat([xy, torch.atan2(u[..., 1:], u[..., :1])], -1)


def _speed_profile(obs: Observation, steps: int, dt: float, accel: float) -> Tensor:
    t = torch.arange(1, steps + 1, dtype=obs.ego_history.dtype) * dt
    return obs.speed[:, None] * t + 0.5 * accel * t**2


def _logged_path(nominal: Trajectory) -> Tensor:
    p = nominal.poses[..., :2]
    return torch.cat([torch.zeros_like(p[:, :1]), p], 1)


def speed_up(obs: Observation, nominal: Trajectory) -> Tensor:
    H = nominal.poses.shape[1]
    t = torch.arange(1, H + 1, dtype=nominal.poses.dtype) * nominal.dt
    s_log = torch.cat([torch.zeros_like(nominal.poses[:, :1, 0]), nominal.poses[..., :2].diff(dim=1).norm(dim=-1)], 1)
    s_log = s_log + nominal.poses[:, :1, :2].norm(dim=-1)
    return _along_path(_logged_path(nominal), s_log.cumsum(1) + 1.25 * t**2)


def no_brake(obs: Observation, nominal: Trajectory) -> Tensor:
    return _along_path(_logged_path(nominal), _speed_profile(obs, nominal.poses.shape[1], nominal.dt, 0.0))


def _swerve(sign: float) -> Callable[[Observation, Trajectory], Tensor]:
    def fault(obs: Observation, nominal: Trajectory) -> Tensor:
        p = nominal.poses
        t = torch.arange(1, p.shape[1] + 1, dtype=p.dtype) * nominal.dt
        off = sign * 3.5 * (0.5 - 0.5 * torch.cos(torch.pi * (t / 2.0).clamp(max=1.0)))
        normal = torch.stack([-p[..., 2].sin(), p[..., 2].cos()], -1)
        return torch.cat([p[..., :2] + off[None, :, None] * normal, p[..., 2:]], -1)

    return fault


def straight(obs: Observation, nominal: Trajectory) -> Tensor:
    x = _speed_profile(obs, nominal.poses.shape[1], nominal.dt, 0.0)
    return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)


PLAN_FAULTS: dict[str, Callable[[Observation, Trajectory], Tensor]] = {
    "speed_up": speed_up, "no_brake": no_brake, "swerve_left": _swerve(1.0), "swerve_right": _swerve(-1.0),
    "straight": straight,
}
PERCEPTION_FAULTS = ("noise", "dropped_agent", "ghost")


STOPPED_MPS = 0.05  # m/s; an ego slower than this at contact is stopped (not at fault, as in nuPlan)


def first_collision(poses: Tensor, obs: Observation, priv: Privileged, horizon_s: float = HORIZON_S) -> tuple[Tensor, Tensor]:
    """Ground truth: bool ``[B]`` whether the ego footprint along ``poses`` ``[B, H, 3]`` overlaps a
    logged agent box (same time) within ``horizon_s`` in a collision the ego would be at fault for,
    and the index ``[B]`` of the first agent hit (-1 none). As in nuPlan, contacts while the ego is
    stopped (slower than ``STOPPED_MPS`` along the plan) and contacts with an agent whose centre is
    behind the ego's rear axle (hit from behind), both judged at each agent's first contact, do not
    count: a plan cannot avoid those, so no
    monitor is asked to veto them."""
    K = min(poses.shape[1], priv.agents_future.shape[2], int(round(horizon_s / obs.dt)))
    p = poses[:, :K]
    ego = ego_box(p, obs.ego_dims[:, None, :].expand(-1, K, -1))  # [B, K, 5]
    a = priv.agents_future[:, :, :K]  # [B, N, K, 5]
    agents = torch.cat([a[..., :3], obs.agent_sizes[:, :, None].expand(-1, -1, K, -1)], -1)
    hit = box_overlap(ego[:, None], agents) & priv.agents_future_valid[:, :, :K]  # [B, N, K]
    previous = torch.cat([torch.zeros_like(p[:, :1, :2]), p[:, :-1, :2]], 1)
    moving = (p[..., :2] - previous).norm(dim=-1) / obs.dt >= STOPPED_MPS  # [B, K]
    ahead = (torch.cos(p[:, None, :, 2]) * (a[..., 0] - p[:, None, :, 0])
             + torch.sin(p[:, None, :, 2]) * (a[..., 1] - p[:, None, :, 1])) >= 0.0  # [B, N, K]
    contact = hit.float().argmax(2, keepdim=True)  # [B, N, 1]: each agent's first contact, judged there
    fault = (moving[:, None].expand_as(hit) & ahead).gather(2, contact)[..., 0]
    any_hit = hit.any(2) & fault
    first = torch.where(any_hit.any(1), any_hit.float().argmax(1), torch.full_like(any_hit[:, 0], -1, dtype=torch.long))
    return any_hit.any(1), first


def _perceive(fault: str, obs: Observation, target: Tensor, gen: torch.Generator) -> Observation:
    """The observation the monitors see under a perception ``fault`` (``target`` ``[B]`` the agent
    the plan hits, -1 none)."""
    if fault == "noise":
        noise = torch.randn(obs.agents[..., :2].shape, generator=gen, dtype=obs.agents.dtype) * 0.3
        agents = torch.cat([obs.agents[..., :2] + noise * obs.agent_valid[..., None], obs.agents[..., 2:]], -1)
        return replace(obs, agents=agents)
    if fault == "dropped_agent":
        drop = torch.arange(obs.agents.shape[1])[None] == target[:, None]  # [B, N]
        return replace(obs, agent_valid=obs.agent_valid & ~drop[..., None])
    if fault == "ghost":
        agents, valid, sizes = obs.agents.clone(), obs.agent_valid.clone(), obs.agent_sizes.clone()
        free = (~valid[..., -1]).float().argmax(1)  # the first free slot (slot 0 if none is free)
        b = torch.arange(obs.batch_size)
        agents[b, free] = 0.0
        agents[b, free, :, 0] = 15.0
        valid[b, free] = True
        sizes[b, free] = torch.tensor([4.5, 1.9], dtype=sizes.dtype)
        return replace(obs, agents=agents, agent_valid=valid, agent_sizes=sizes)
    raise ValueError(f"unknown perception fault {fault!r}")


@dataclass
class InjectionResult:
    """Events x monitors. ``caught`` bool ``[E, M]`` for the hazardous events (``faults`` their
    fault type, ``scenario`` and ``time_s`` where); ``fallback_collides`` bool ``[E]`` of the
    fallback plan at the vetoed events; ``false_alarms`` per monitor: vetoes of the human plan
    and of ghost-free non-hazardous plans, over ``nominal_plans``; ``plans`` per fault type."""

    monitors: list[str]
    faults: list[str]
    scenario: list[str]
    time_s: list[float]
    caught: np.ndarray
    fallback_collides: np.ndarray
    nominal_plans: int
    false_alarms: dict[str, int]
    plans: dict[str, int]

    def catches_json(self) -> dict[str, Any]:
        """The catch file of ``av safety diversity --catches``."""
        return {"monitors": self.monitors, "events": [
            {"fault": f, "scenario": s, "time_s": t, "caught": [bool(c) for c in row]}
            for f, s, t, row in zip(self.faults, self.scenario, self.time_s, self.caught)]}

    def summary(self) -> dict[str, Any]:
        hazardous = self.caught.shape[0]
        plan_events = np.array([f in PLAN_FAULTS for f in self.faults], dtype=bool)
        caught_any = self.caught.any(1) if hazardous else np.zeros(0, bool)
        per_fault = {}
        for f in sorted(set(self.faults)):
            m = np.array([x == f for x in self.faults])
            per_fault[f] = {"plans": self.plans.get(f, 0), "hazardous": int(m.sum()),
                            "caught_by_any": float(caught_any[m].mean()),
                            "per_monitor": {n: float(self.caught[m, i].mean()) for i, n in enumerate(self.monitors)}}
        vetoed = caught_any
        return {
            "hazardous_events": hazardous,
            "hazardous_injected_plans": int(plan_events.sum()),
            "injected_plans_vetoed_by_any": float(caught_any[plan_events].mean()) if plan_events.any() else None,
            "per_monitor_catch_rate": {n: float(self.caught[:, i].mean()) if hazardous else None
                                       for i, n in enumerate(self.monitors)},
            "per_fault": per_fault,
            "fallback_applied": int(vetoed.sum()),
            "fallback_collides_within_horizon": int(self.fallback_collides[vetoed].sum()),
            "nominal_plans": self.nominal_plans,
            "false_alarm_rate_on_human_plans": {n: c / max(self.nominal_plans, 1) for n, c in self.false_alarms.items()},
        }


def inject(scenarios: Sequence[Scenario], monitor_factory: Callable[[], list], every_s: float = 1.0,
           seed: int = 0, horizon_s: float = HORIZON_S) -> InjectionResult:
    """Run the plan and perception faults at every ``every_s`` of each drive (module docstring).

    ``monitor_factory`` returns fresh monitors (one set per judged stream, so the stateful ones
    start clean); the deadline watchdog is told that each plan was on time (timing faults are not
    injected here).
    """
    from closedloop.planners.log_replay import LogReplayPlanner

    gen = torch.Generator().manual_seed(seed)
    batch = collate(list(scenarios))
    spec = ObservationSpec()
    cache = prepare_map(batch, spec)
    start = batch.history_steps
    last = batch.step_valid.long().sum(1) - 1
    replay, fallback = LogReplayPlanner(), ComfortableStopPlanner()
    every = max(1, int(round(every_s / batch.dt)))
    steps = int((last - start).max())
    names = [m.name for m in monitor_factory()]
    rows: list[np.ndarray] = []
    faults: list[str] = []
    where: list[str] = []
    times: list[float] = []
    fb: list[bool] = []
    plans: dict[str, int] = {}
    false_alarms = {n: 0 for n in names}
    nominal_count = 0

    def judge(obs: Observation, plan: Trajectory) -> np.ndarray:
        out = []
        for m in monitor_factory():
            if hasattr(m, "record"):
                m.record(0.0)
            out.append(m.judge(obs, plan).veto.cpu().numpy())
        return np.stack(out, 1)  # [B, M]

    for k in range(0, steps, every):
        t = start + k
        obs, priv = observe(batch, t, spec, cache=cache), privileged(batch, t, spec)
        alive = (t + int(round(horizon_s / batch.dt))) <= last  # a full horizon of log left
        nominal = replay.plan(obs, priv)
        nominal_hit, _ = first_collision(nominal.poses, obs, priv, horizon_s)
        ok = alive & ~nominal_hit
        vet = judge(obs, nominal)
        nominal_count += int(ok.sum())
        for i, n in enumerate(names):
            false_alarms[n] += int((vet[:, i] & ok.numpy()).sum())
        fb_plan = fallback.plan(obs)
        fb_hit = first_collision(fb_plan.poses, obs, priv, horizon_s)[0].numpy()
        cases: list[tuple[str, Tensor, Observation]] = [
            (name, fn(obs, nominal), obs) for name, fn in PLAN_FAULTS.items()]
        nb = no_brake(obs, nominal)
        target = first_collision(nb, obs, priv, horizon_s)[1]
        cases += [(f, nb, _perceive(f, obs, target, gen)) for f in PERCEPTION_FAULTS]
        for name, poses, seen in cases:
            hit, _ = first_collision(poses, obs, priv, horizon_s)
            use = (ok & hit).numpy()
            plans[name] = plans.get(name, 0) + int(ok.sum())
            if name == "ghost":  # the ghost is not there: a veto of a safe plan is a false alarm
                continue
            if not use.any():
                continue
            vet = judge(seen, Trajectory(poses, nominal.dt))
            for b in np.nonzero(use)[0]:
                rows.append(vet[b])
                faults.append(name)
                where.append(batch.ids[b])
                times.append(round(k * batch.dt, 1))
                fb.append(bool(fb_hit[b]))
    caught = np.stack(rows) if rows else np.zeros((0, len(names)), bool)
    return InjectionResult(names, faults, where, times, caught, np.array(fb, dtype=bool), nominal_count,
                           false_alarms, plans)
