"""The one closed-loop driver: every backend, planner, monitor and fallback meet here.

``rollout(simulator, batch, planner, monitors, fallback)`` owns the loop for every backend.
Each planning step: observe (:func:`av.observe.observe`, from the history the driver keeps) ->
plan -> each monitor judges the plan -> where one vetoes, the fallback's plan is driven instead ->
``simulator.step``. Between planning steps the backend keeps tracking the last plan. Backends
only ``reset``, ``step``, ``snapshot`` and ``close``. The evaluation runner, the benchmarks, the
adversarial scorer, the teacher's search and closed-loop training all call this function.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from av.batch import ScenarioBatch
from av.errors import AvError
from av.fallback import ComfortableStopPlanner
from av.geometry import wrap_angle
from av.monitor import Monitor
from av.observation import Trajectory
from av.observe import ObservationSpec, Window, log_window, observe, prepare_map, privileged
from closedloop.planner import Planner
from closedloop.rollout import Rollout
from closedloop.sim.base import Simulator, Snapshot


def observation_spec(planner: Planner) -> ObservationSpec:
    """What ``planner`` is shown: its own ``observation_spec`` (learned planners carry the one
    they were trained with) or the default."""
    spec = getattr(planner, "observation_spec", None)
    return spec if isinstance(spec, ObservationSpec) else ObservationSpec()


def _merge(plan: Trajectory, other: Trajectory, use_other: Tensor, dt: float) -> Trajectory:
    """``plan`` with the rows ``use_other`` (bool ``[B]``) taken from ``other``, both resampled at
    ``dt``; the shorter horizon is extended by holding its last pose."""
    a, b = plan.resampled(dt), other.resampled(dt).to(plan.poses)
    H = max(a.shape[1], b.shape[1])
    a = torch.cat([a, a[:, -1:].expand(-1, H - a.shape[1], -1)], 1)
    b = torch.cat([b, b[:, -1:].expand(-1, H - b.shape[1], -1)], 1)
    return Trajectory(torch.where(use_other[:, None, None], b, a), dt)


def rollout(
    simulator: Simulator,
    batch: ScenarioBatch,
    planner: Planner,
    monitors: Sequence[Monitor] = (),
    fallback: Planner | None = None,
    plan_every: int = 1,
    record_plans: bool = True,
    spec: ObservationSpec | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Rollout:
    """Drive ``planner`` closed-loop through every scenario of ``batch`` on ``simulator``.

    The planner is called every ``plan_every`` 10 Hz steps with the observation built by
    :func:`av.observe.observe` under ``spec`` (default: :func:`observation_spec` of the planner),
    and with the logged futures too where ``planner.privileged``. Each of ``monitors`` judges
    every plan; where any vetoes, ``fallback`` (default: a comfortable stop along the route,
    :class:`av.fallback.ComfortableStopPlanner`) plans instead. A monitor with a ``timed``
    method (the deadline watchdog) is given the planner to time, unless the planner is already
    timed by it. The loop runs until the longest
    scenario ends; steps past a scenario's end are masked out of the rollout (``step_valid``).

    Returns the :class:`Rollout` with, per step, which monitors vetoed and whether the fallback
    drove (``vetoes`` ``[B, T, M]``, ``fallback_used`` ``[B, T]``, ``veto_reasons``).
    ``on_step(done, total)`` is called after each simulated step (progress reporting).
    """
    if plan_every < 1:
        raise AvError(f"plan_every must be >= 1, got {plan_every}")
    spec = (spec or observation_spec(planner)).validate()
    monitors = tuple(monitors)
    for m in monitors:  # a deadline watchdog times the planner it supervises (unless it already does)
        if callable(getattr(m, "timed", None)) and getattr(planner, "watchdog", None) is not m:
            planner = m.timed(planner)
    if monitors and fallback is None:
        fallback = ComfortableStopPlanner()
    state = simulator.reset(batch)
    snap = simulator.snapshot(state)
    batch = snap.batch
    B, T = batch.step_valid.shape
    dev = snap.ego.device
    start = snap.t.clone()
    last = (batch.step_valid.long().sum(1) - 1).clamp_min(0)
    steps = int((last - start).max())
    cache = prepare_map(batch, spec)
    # The history is the log's; the present is the backend's (its ego state may differ from the
    # logged row, e.g. no lateral velocity in a bicycle model).
    log = log_window(batch, start - 1, spec.history_steps - 1) if spec.history_steps else None
    window = Window(snap.ego[:, None], (snap.agents * snap.agent_valid[..., None])[:, :, None],
                    snap.agent_valid[:, :, None])
    if log is not None:
        window = Window(torch.cat([log.ego, window.ego], 1), torch.cat([log.agents, window.agents], 2),
                        torch.cat([log.agent_valid, window.agent_valid], 2))
    M = len(monitors)
    snaps: list[Snapshot] = [snap]
    plans: list[Tensor | None] = []
    vetoes = torch.zeros(B, T, M, dtype=torch.bool, device=dev)
    fallback_used = torch.zeros(B, T, dtype=torch.bool, device=dev)
    reasons: list[tuple[str, int, str, str]] = []
    current: Tensor | None = None  # the tracked plan, world frame, for the record
    for k in range(steps):
        traj = None
        if k % plan_every == 0:
            t = snap.t
            obs = observe(batch, t, spec, window=window, cache=cache)
            priv = privileged(batch, t, spec, window=window) if planner.privileged else None
            traj = planner.plan(obs, priv)
            if monitors:
                step_veto = torch.zeros(B, dtype=torch.bool, device=dev)
                for m, monitor in enumerate(monitors):
                    verdict = monitor.judge(obs, traj)
                    veto = verdict.veto.to(dev).bool()
                    step_veto |= veto
                    live = t < T
                    rows = torch.arange(B, device=dev)[live]
                    vetoes[rows, t[live], m] = veto[live]
                    for b in veto.nonzero().flatten().tolist():
                        if int(t[b]) <= int(last[b]):
                            reasons.append((batch.ids[b], int(t[b]), monitor.name, verdict.reasons[b]))
                if bool(step_veto.any()):
                    fb_priv = priv if fallback.privileged else None
                    if fallback.privileged and priv is None:
                        fb_priv = privileged(batch, t, spec, window=window)
                    traj = _merge(traj, fallback.plan(obs, fb_priv), step_veto, batch.dt)
                    live = t < T
                    fallback_used[torch.arange(B, device=dev)[live], t[live]] = step_veto[live]
            if record_plans:
                current = traj.in_world(window.pose, batch.dt)
        state = simulator.step(state, traj)
        snap = simulator.snapshot(state)
        window = window.push(snap.ego, snap.agents, snap.agent_valid)
        snaps.append(snap)
        plans.append(current)
        if on_step is not None:
            on_step(k + 1, steps)
    return _assemble(batch, start, snaps, plans, planner.name, simulator.agent_mode,
                     record_plans, vetoes, fallback_used, tuple(m.name for m in monitors), tuple(reasons))


def _log_derivatives(batch: ScenarioBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Body-frame acceleration ``[B, T, 2]``, yaw rate and yaw acceleration ``[B, T]`` of the
    logged ego by backward differences (0 at step 0)."""
    ego, dt = batch.ego, batch.dt
    speed = ego[..., 3] * torch.cos(ego[..., 2]) + ego[..., 4] * torch.sin(ego[..., 2])

    def back(x: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1) / dt

    yaw_rate = torch.cat([torch.zeros_like(speed[:, :1]), wrap_angle(ego[:, 1:, 2] - ego[:, :-1, 2])], 1) / dt
    return torch.stack([back(speed), speed * yaw_rate], -1), yaw_rate, back(yaw_rate)


def _assemble(batch: ScenarioBatch, start: Tensor, snaps: list[Snapshot], plans: list[Tensor | None],
              planner: str, agent_mode: str, record_plans: bool, vetoes: Tensor, fallback_used: Tensor,
              monitor_names: tuple[str, ...], veto_reasons: tuple[tuple[str, int, str, str], ...]) -> Rollout:
    """The per-step snapshots (step ``k`` = log step ``start + k``) as a :class:`Rollout` over the
    batch's ``T`` steps: the log before ``start``, the simulation from ``start`` on, zeros where
    ``step_valid`` is False."""
    B, T = batch.step_valid.shape
    dev = batch.ego.device
    K = len(snaps)
    t = torch.arange(T, device=dev)[None, :]
    k = (t - start[:, None]).clamp(0, K - 1)  # [B, T]
    simulated = t >= start[:, None]
    keep = batch.step_valid

    def place(stacked: Tensor, logged: Tensor) -> Tensor:
        """``stacked`` ``[B, K, ...]`` per step -> ``[B, T, ...]`` with ``logged`` before the start."""
        idx = k.reshape(B, T, *([1] * (stacked.dim() - 2))).expand(B, T, *stacked.shape[2:])
        out = torch.where(simulated.reshape(B, T, *([1] * (stacked.dim() - 2))), stacked.gather(1, idx), logged)
        return out * keep.reshape(B, T, *([1] * (stacked.dim() - 2))).to(out.dtype)

    log_accel, log_yaw_rate, log_yaw_accel = _log_derivatives(batch)
    ego = place(torch.stack([s.ego for s in snaps], 1), batch.ego)
    accel = place(torch.stack([s.ego_accel for s in snaps], 1), log_accel)
    yaw_rate = place(torch.stack([s.ego_yaw_rate for s in snaps], 1), log_yaw_rate)
    yaw_accel = place(torch.stack([s.ego_yaw_accel for s in snaps], 1), log_yaw_accel)
    agents_bt = place(torch.stack([s.agents * s.agent_valid[..., None] for s in snaps], 1),
                      batch.agents.transpose(1, 2))
    valid_bt = place(torch.stack([s.agent_valid for s in snaps], 1), batch.agent_valid.transpose(1, 2)).bool()
    planned = None
    if record_plans:
        H = max((p.shape[1] for p in plans if p is not None), default=1)
        nan = torch.full((B, H, 3), math.nan, dtype=batch.ego.dtype, device=dev)

        def padded(p: Tensor | None) -> Tensor:
            if p is None:
                return nan
            return torch.cat([p, p[:, -1:].expand(B, H - p.shape[1], 3)], 1) if p.shape[1] < H else p

        # The plan tracked during step k (from log step start + k) is recorded at step k.
        per_step = torch.stack([padded(p) for p in plans] + [nan], 1)
        planned = place(per_step, torch.full((B, T, H, 3), math.nan, dtype=batch.ego.dtype, device=dev))
        planned = torch.where(keep[..., None, None], planned, torch.full_like(planned, math.nan))
    return Rollout(
        scenario=batch,
        ego=ego,
        ego_accel=accel,
        ego_yaw_rate=yaw_rate,
        ego_yaw_accel=yaw_accel,
        agents=agents_bt.transpose(1, 2).contiguous(),
        agent_valid=valid_bt.transpose(1, 2).contiguous(),
        step_valid=batch.step_valid,
        start_step=start,
        agent_mode=agent_mode,
        planner=planner,
        planned=planned,
        monitor_names=monitor_names,
        vetoes=vetoes & keep[..., None],
        fallback_used=fallback_used & keep,
        veto_reasons=veto_reasons,
    )
