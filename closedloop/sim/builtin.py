"""The builtin batched closed-loop simulator: many scenarios at once as torch tensors, 10 Hz.

One immutable :class:`SimState` flows through ``reset -> step -> step -> ...``; ``step`` returns
a new state and ``snapshot`` reports it. The loop around it (observe, plan, monitors, fallback)
is :func:`closedloop.driver.rollout`, shared by every backend. The ego follows the planner's latest trajectory through the tracking controller and
kinematic bicycle of :mod:`closedloop.sim.vehicle`; background agents replay the log or react
with IDM (:mod:`closedloop.sim.agents`); oriented-box overlaps are flagged every step
(:mod:`closedloop.sim.collision`). The only Python loop is over time steps. Device: the batch's
(or ``SimConfig.device``); results are bit-identical for identical inputs on one device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from av.batch import ScenarioBatch
from av.errors import AvError
from av.geometry import wrap_angle
from av.observation import Trajectory
from av.vehicle import VehicleLimits, VehicleState, bicycle_step, ego_box
from closedloop.sim import agents as agent_model
from closedloop.sim.base import SimConfig, Snapshot
from closedloop.sim.collision import collision_flags
from closedloop.sim.pairs import SortedItems, Sweep, along, make_sweep, sort_items
from closedloop.sim.vehicle import GainTable, Plan, make_plan, place_on_plan, track


@dataclass(frozen=True)
class SimStatic:
    """What a simulation derives once from its batch (never changes during a run).

    * ``batch``: the :class:`ScenarioBatch` on the simulation device; ``config``: the settings.
    * ``start`` long ``[B]``: first simulated step (each scenario's ``history_steps``);
      ``last`` long ``[B]``: its last valid step.
    * ``paths``: the reactive agents' logged paths; ``valid_by_step`` bool ``[B, T, N]``: the
      log's agent validity, time-major (one step is one contiguous row per scenario).
    * ``gains``: the tracker's lateral LQR gains tabulated for the batch's ``dt``.
    * ``collision_rows`` long ``[B, C]``: the boxes (0 = ego, ``1 + n`` = agent ``n``) tested
      against all others every step; ``collision_row_valid`` bool ``[B, C]``: which slots hold one
      (:func:`~closedloop.sim.collision.overlapping_pairs`).
    * ``body_sizes`` ``[B, 1 + N, 2]``: (length, width) of the ego (body 0) and the agents (m);
      ``sweep``: the candidate-pair search's axis and radius bound per scenario
      (:func:`~closedloop.sim.pairs.make_sweep`, from the logged ego path and the agents at the start).
    """

    batch: ScenarioBatch
    config: SimConfig
    start: Tensor
    last: Tensor
    paths: agent_model.AgentPaths
    valid_by_step: Tensor
    gains: GainTable
    collision_rows: Tensor
    collision_row_valid: Tensor
    body_sizes: Tensor
    sweep: Sweep

    @property
    def wheelbase(self) -> Tensor:
        """``[B]`` m."""
        return self.batch.ego_dims[:, 2]


@dataclass(frozen=True)
class SimState:
    """The whole simulation at one instant, for ``B`` scenarios and ``N`` agents (immutable).

    * ``step``: simulation steps taken since the start; ``t`` long ``[B]``: the log step index of
      now (``start + step``; it may pass a scenario's last step: see ``done``).
    * ``ego``: the bicycle model state (pose ``[B, 3]``, speed, acceleration, steering, yaw rate
      and yaw acceleration ``[B]``).
    * ``agents`` ``[B, N, 5]`` box-centre states (x, y, yaw, vx, vy); ``agent_valid`` bool ``[B, N]``.
    * IDM internals, one per reactive slot (``static.paths.index`` ``[B, R]`` names each slot's
      agent): ``agent_s`` ``[B, R]`` arc length along the agent's logged path (m),
      ``agent_speed`` ``[B, R]`` (m/s, over the last step) and ``agent_curvature`` ``[B, R, C]``
      (1/m, mean curvatures of the path ahead over ``agents.CURVATURE_REACH``; zeros in log
      mode, where ``agent_s``/``agent_speed`` follow the log); all three are 0 in the slots
      that hold no reactive agent.
    * ``ego_collision`` bool ``[B, N]``: the ego's box overlaps agent ``n`` now;
      ``agent_collision`` bool ``[B, N]``: agent ``n`` overlaps another agent now, in a pair with
      at least one reactive agent (so all False in log mode: contacts between log-replayed
      agents are the log's own, annotation overlaps included).
    * ``sorted_bodies``: the valid bodies now (the ego's box, then the agents) sorted along each
      scenario's sweep axis, shared by this step's collision check and the next step's leader
      search (:func:`~closedloop.sim.pairs.sort_items`).
    * ``plan``: the trajectory being tracked (world frame) or ``None`` before the first one.
    * ``static``: the per-batch data (:class:`SimStatic`).
    """

    step: int
    t: Tensor
    ego: VehicleState
    agents: Tensor
    agent_valid: Tensor
    agent_s: Tensor
    agent_speed: Tensor
    agent_curvature: Tensor
    ego_collision: Tensor
    agent_collision: Tensor
    sorted_bodies: SortedItems
    plan: Plan | None
    static: SimStatic

    @property
    def done(self) -> Tensor:
        """bool ``[B]``: the scenario has no step after now."""
        return self.t >= self.static.last


def _limits(cfg: SimConfig) -> VehicleLimits:
    return VehicleLimits(cfg.max_accel, cfg.max_decel, cfg.max_jerk, cfg.max_steer, cfg.max_steer_rate)


def _idm(cfg: SimConfig) -> agent_model.IDMParams:
    return agent_model.IDMParams(
        min_gap=cfg.idm_min_gap, headway=cfg.idm_headway, accel=cfg.idm_accel, decel=cfg.idm_decel
    )


def _ego_from_log(batch: ScenarioBatch, t: Tensor) -> VehicleState:
    """Model state from the logged ego at ``t`` ``[B]``: logged pose and speed along the heading;
    acceleration, yaw rate and steering from backward differences (no future information)."""
    b = torch.arange(batch.batch_size, device=t.device)
    now, prev = batch.ego[b, t], batch.ego[b, (t - 1).clamp_min(0)]
    has_prev = (t >= 1).to(now.dtype)
    dt = batch.dt

    def along(s: Tensor) -> Tensor:
        return s[:, 3] * torch.cos(s[:, 2]) + s[:, 4] * torch.sin(s[:, 2])

    speed = along(now)
    accel = (speed - along(prev)) / dt * has_prev
    yaw_rate = wrap_angle(now[:, 2] - prev[:, 2]) / dt * has_prev
    L = batch.ego_dims[:, 2]
    moving = speed > 1.0
    steer = torch.where(moving, torch.atan(L * yaw_rate / speed.clamp_min(1.0)), torch.zeros_like(speed))
    return VehicleState(now[:, :3].clone(), speed.clamp_min(0.0), accel, steer, yaw_rate, torch.zeros_like(speed))


def _path_pose_and_curvature(paths: agent_model.AgentPaths, s: Tensor) -> tuple[Tensor, Tensor]:
    """Pose ``[B, R, 3]`` on each slot's path at ``s`` ``[B, R]`` and the path's curvatures ahead
    ``[B, R, C]`` there (see :class:`~closedloop.sim.agents.AgentPaths`)."""
    sample = agent_model.sample_path(paths, s[..., None])[..., 0, :]
    return sample[..., :3], sample[..., 3:]


def _slots(x: Tensor, paths: agent_model.AgentPaths) -> Tensor:
    """``x[b, paths.index[b, r], ...]`` ``[B, R, ...]`` of a per-agent tensor ``x`` ``[B, N, ...]``
    (one ``index_select`` of whole rows)."""
    B, R = paths.index.shape
    rows = x.reshape(x.shape[0] * x.shape[1], math.prod(x.shape[2:]))
    return rows.index_select(0, paths.slot_rows).reshape(B, R, *x.shape[2:])


def _ego_box(ego: VehicleState, dims: Tensor) -> Tensor:
    """Ego box ``[B, 5]`` (centre x, y, yaw, length, width) from the rear-axle pose."""
    return ego_box(ego.pose, dims)


def _collisions(static: SimStatic, ego: VehicleState, agents: Tensor, valid: Tensor, ego_valid: Tensor
                ) -> tuple[Tensor, Tensor, SortedItems]:
    """Ego-agent overlaps, and in reactive mode overlaps of the reactive agents with any agent
    (contacts between two log-replayed agents are the log's own); and the valid bodies sorted
    along the sweep axis (the state's ``sorted_bodies``)."""
    batch = static.batch
    poses = torch.cat([_ego_box(ego, batch.ego_dims)[:, None, :3], agents[..., :3]], 1)
    body_valid = torch.cat([ego_valid[:, None], valid], 1)
    bodies = sort_items(body_valid, along(poses[..., :2], static.sweep.axis))
    ego_hit, agent_hit = collision_flags(torch.cat([poses, static.body_sizes], -1), body_valid, static.collision_rows,
                                         static.collision_row_valid, static.sweep, bodies)
    return ego_hit, agent_hit, bodies


class BuiltinSimulator:
    """Batched torch simulator implementing :class:`closedloop.sim.base.Simulator`."""

    name = "builtin"

    def __init__(self, config: SimConfig | None = None, **settings: object) -> None:
        """Settings are a :class:`SimConfig` or its fields as keywords (not both)."""
        if config is not None and settings:
            raise AvError("builtin simulator: give a SimConfig or keyword settings, not both")
        self.config = (config or SimConfig(**settings)).validate()  # type: ignore[arg-type]
        self.limits = _limits(self.config)
        self.idm = _idm(self.config)

    # ------------------------------------------------------------------ reset / step
    def reset(self, batch: ScenarioBatch) -> SimState:
        """The state at each scenario's ``history_steps``: ego and agents as logged there."""
        cfg = self.config
        if cfg.device is not None:
            batch = batch.to(cfg.device)
        dev = batch.ego.device
        B, T = batch.step_valid.shape
        start = batch.history_steps.to(dev)
        last = (batch.step_valid.long().sum(1) - 1).clamp_min(0)
        if bool((start > last).any()):
            bad = batch.ids[int((start > last).nonzero()[0, 0])]
            raise AvError(f"scenario {bad}: history_steps is past its last step; nothing to simulate")
        paths = agent_model.build_paths(batch)
        rows = torch.zeros(B, 1, dtype=torch.long, device=dev)
        row_valid = torch.ones(B, 1, dtype=torch.bool, device=dev)
        if cfg.agents == "idm":
            rows = torch.cat([rows, paths.index + 1], 1)
            row_valid = torch.cat([row_valid, paths.slot], 1)
        valid_by_step = batch.agent_valid.transpose(1, 2).contiguous()
        agents, valid = agent_model.log_states(batch, valid_by_step, start)
        body_sizes = torch.cat([batch.ego_dims[:, None, :2], batch.agent_sizes], 1)
        sweep = make_sweep(torch.cat([batch.ego[..., :2], agents[..., :2]], 1),
                           torch.cat([batch.step_valid, valid], 1), body_sizes)
        static = SimStatic(
            batch=batch, config=cfg, start=start, last=last, paths=paths, valid_by_step=valid_by_step,
            gains=GainTable.build(batch.dt, batch.ego.dtype, str(dev)),
            collision_rows=rows, collision_row_valid=row_valid, body_sizes=body_sizes, sweep=sweep,
        )
        ego = _ego_from_log(batch, start)
        ego_hit, agent_hit, bodies = _collisions(static, ego, agents, valid, torch.ones(B, dtype=torch.bool, device=dev))
        agent_s = agent_model.path_length_at(static.paths, start)
        agent_speed = agent_model.logged_speed(static.paths, start)
        if cfg.agents == "idm":
            curvature = _path_pose_and_curvature(static.paths, agent_s)[1]
        else:
            curvature = agent_s.new_zeros(*agent_s.shape, len(agent_model.CURVATURE_REACH))
        return SimState(
            step=0, t=start, ego=ego, agents=agents, agent_valid=valid,
            agent_s=agent_s, agent_speed=agent_speed, agent_curvature=curvature,
            ego_collision=ego_hit, agent_collision=agent_hit, sorted_bodies=bodies, plan=None, static=static,
        )

    def set_plan(self, state: SimState, trajectory: Trajectory) -> SimState:
        """``state`` tracking ``trajectory`` (ego frame at ``state``) from now on."""
        B = state.t.shape[0]
        shape = trajectory.poses.shape
        if trajectory.poses.dim() != 3 or shape[0] != B or shape[1] < 1 or shape[2] != 3:
            raise AvError(f"planner returned poses of shape {list(trajectory.poses.shape)}, expected [{B}, H, 3]")
        if not bool(torch.isfinite(trajectory.poses).all()):
            raise AvError("planner returned non-finite poses")
        world = trajectory.in_world(state.ego.pose, state.static.batch.dt)
        return replace(state, plan=make_plan(world, state.static.wheelbase, self.limits, state.step))

    def step(self, state: SimState, trajectory: Trajectory | None = None) -> SimState:
        """Advance one step. ``trajectory`` (ego frame at ``state``) replaces the tracked plan;
        with ``None`` the ego keeps tracking the last plan, time-shifted (with no plan at all it
        coasts: zero acceleration and steering rate)."""
        if trajectory is not None:
            state = self.set_plan(state, trajectory)
        static, cfg, dt = state.static, self.config, state.static.batch.dt
        batch = static.batch
        wheelbase = static.wheelbase
        ego = state.ego
        if state.plan is None:
            zero = torch.zeros_like(ego.speed)
            new_ego = bicycle_step(ego, zero, zero, wheelbase, self.limits, dt)
        elif cfg.controller == "perfect":
            new_ego = place_on_plan(ego, state.plan, state.step, wheelbase, dt)
        else:
            accel, steer_rate = track(ego, state.plan, state.step, wheelbase, self.limits, dt, static.gains)
            new_ego = bicycle_step(ego, accel, steer_rate, wheelbase, self.limits, dt)

        t_next = state.t + 1
        log_next, valid_next = agent_model.log_states(batch, static.valid_by_step, t_next)
        paths = static.paths
        s_log = agent_model.path_length_at(paths, t_next)
        v_log = agent_model.logged_speed(paths, t_next)
        if cfg.agents == "idm":
            agents, agent_s, agent_speed, curvature = self._react(state, ego, log_next, valid_next, s_log, v_log)
        else:
            agents, agent_s, agent_speed, curvature = log_next, s_log, v_log, state.agent_curvature
        ego_hit, agent_hit, bodies = _collisions(static, new_ego, agents, valid_next, t_next <= static.last)
        return SimState(
            step=state.step + 1, t=t_next, ego=new_ego, agents=agents, agent_valid=valid_next,
            agent_s=agent_s, agent_speed=agent_speed, agent_curvature=curvature,
            ego_collision=ego_hit, agent_collision=agent_hit, sorted_bodies=bodies, plan=state.plan, static=static,
        )

    def _react(self, state: SimState, ego: VehicleState, log_next: Tensor, valid_next: Tensor, s_log: Tensor,
               v_log: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """IDM update of the reactive agents (the others take ``log_next``): agent states
        ``[B, N, 5]``, and per slot arc lengths and speeds ``[B, R]`` and path curvatures ``[B, R, C]`` at the next
        step. Obstacles: the ego and every valid agent, as they are now."""
        static, batch = state.static, state.static.batch
        paths = static.paths
        box, ego5 = _ego_box(ego, batch.ego_dims), ego.state5()
        ego_body = torch.cat([box[:, :3], ego5[:, 3:5]], 1)  # box centre, yaw, velocity
        bodies = torch.cat([ego_body[:, None], state.agents], 1)  # [B, 1 + N, 5]
        body_valid = torch.cat([(state.t <= static.last)[:, None], state.agent_valid], 1)
        present = paths.slot & _slots(state.agent_valid, paths)
        pressure = agent_model.leader_pressure(
            _slots(state.agents, paths)[..., :3], _slots(batch.agent_sizes, paths), state.agent_speed,
            state.agent_curvature, present, bodies, static.body_sizes, body_valid, self.idm, static.sweep,
            state.sorted_bodies,
        )
        v_now = agent_model.logged_speed(paths, state.t)
        speed, dist = agent_model.idm_speed_update(state.agent_speed, v_now, v_log, pressure, self.idm, batch.dt)
        driven = present & _slots(valid_next, paths)  # present now and next: keeps its IDM state
        s_next = torch.where(driven, state.agent_s + dist, s_log)
        v_next = torch.where(driven, speed, v_log)
        pose, curvature = _path_pose_and_curvature(paths, s_next)
        idm_states = torch.cat([pose, (v_next * torch.cos(pose[..., 2]))[..., None],
                                (v_next * torch.sin(pose[..., 2]))[..., None]], -1)
        slot_states = torch.where(driven[..., None], idm_states, _slots(log_next, paths))
        # Slots name distinct agents, so copying them back is exact (padding slots write the log).
        B, N, _ = log_next.shape
        agents = log_next.reshape(B * N, 5).index_copy(0, paths.slot_rows, slot_states.reshape(-1, 5)).reshape(B, N, 5)
        return agents, s_next, v_next, curvature * paths.slot[..., None]

    # ------------------------------------------------------------------ driver interface
    @property
    def agent_mode(self) -> str:
        return self.config.agents

    def snapshot(self, state: SimState) -> Snapshot:
        """The world in ``state`` (see :class:`~closedloop.sim.base.Snapshot`)."""
        e = state.ego
        return Snapshot(batch=state.static.batch, t=state.t, ego=e.state5(), ego_accel=e.body_accel(),
                        ego_yaw_rate=e.yaw_rate, ego_yaw_accel=e.yaw_accel, agents=state.agents,
                        agent_valid=state.agent_valid)

    def close(self) -> None:
        """Nothing to release: the state lives in the tensors the caller holds."""

    def __enter__(self) -> "BuiltinSimulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
