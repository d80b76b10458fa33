"""A PDM-Closed-style rule planner: IDM proposals at several speeds and lateral offsets of the
route, each driven forward by a kinematic model and scored with evaluator-like checks computed
on the :class:`~av.observation.Observation`; the best proposal is the plan.

The checks mirror the closed-loop score: at-fault collisions with agents extrapolated at
constant velocity and leaving the drivable area are multipliers; progress along the route,
time-to-collision and comfort are weighted 5 : 5 : 2. Ties go to the proposal whose first
violation comes latest, then to the one with more progress.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from av.geometry import box_corners, boxes_overlap, point_segment_distance
from av.observation import Observation, Privileged, Trajectory
from closedloop.evaluator.comfort import BOUNDS as COMFORT_BOUNDS
from closedloop.planners.common import (
    AgentsOnPath,
    IDMParams,
    RoutePath,
    Simulated,
    agents_on_path,
    blend_length,
    build_path,
    current_accel,
    idm_rollout,
    lane_speed_limit,
    lateral_profile,
    path_poses,
    simulate_proposals,
)


@dataclass(frozen=True)
class PDMConfig:
    """Proposal grid and scoring settings (SI units).

    ``speed_fractions`` (of the speed limit) x ``lateral_offsets`` (m, left positive) make the
    IDM proposals (fraction 0 brakes to a stop at the comfortable deceleration), plus an
    emergency stop at the planner's hard braking limit;
    ``score_steps`` trajectory steps (0.1 s each) are simulated and scored, collisions and TTC
    every ``check_every`` steps, the drivable area every ``dac_every`` steps, against the
    ``max_agents`` agents that could come nearest. ``corridor_margin`` (m) is added to the ego's
    half width to decide which agents IDM brakes for. ``ttc_horizons`` (s): the ego moving on at
    its speed must not hit anyone ahead within these times. Comfort limits are nuPlan's. The
    score is scaled by ``1 - offset_penalty * |offset|`` (per m) so that the ego leaves the
    centreline only for a clear gain (passing an obstacle), not for a marginal one.
    """

    speed_fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    lateral_offsets: tuple[float, ...] = (-1.0, 0.0, 1.0)
    score_steps: int = 40
    check_every: int = 2
    dac_every: int = 5
    max_agents: int = 24
    corridor_margin: float = 0.5
    ttc_horizons: tuple[float, ...] = (0.5, 1.0)
    weight_progress: float = 5.0
    weight_ttc: float = 5.0
    weight_comfort: float = 2.0
    min_progress: float = 1.0
    offset_penalty: float = 0.1


@dataclass(frozen=True)
class ProposalScores:
    """Per-proposal results ``[B, K]``: the multipliers ``no_collision`` and ``drivable``, the
    sub-scores ``progress`` (fraction of the best safe progress), ``ttc`` and ``comfort`` in
    {0, 1}, ``total`` in [0, 1], ``progress_m`` (m along the route), ``first_violation`` (s,
    the horizon when there is none) and the proposal's lateral ``offset`` (m)."""

    no_collision: Tensor
    drivable: Tensor
    progress: Tensor
    ttc: Tensor
    comfort: Tensor
    total: Tensor
    progress_m: Tensor
    first_violation: Tensor
    offset: Tensor


class PDMClosedPlanner:
    """PDM-Closed-style planner over a batch (car-visible inputs only); see the module doc.

    Its IDM proposals are jerk-limited (``params.max_jerk``) for comfort; the emergency stop
    is not (it scores as uncomfortable, so it wins only when every IDM proposal fares worse).

    Returns the winning proposal's IDM trajectory: ``horizon_steps`` poses ``step`` s apart.
    """

    name = "pdm_closed"
    privileged = False

    def __init__(
        self,
        params: IDMParams = IDMParams(max_jerk=3.0),
        config: PDMConfig = PDMConfig(),
        horizon_steps: int = 80,
        step: float = 0.1,
    ) -> None:
        self.params = params
        self.config = config
        self.horizon_steps = horizon_steps
        self.step = step

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        """``B`` observations -> :class:`Trajectory` ``[B, horizon_steps, 3]`` (ego frame)."""
        poses, scores = self.proposals(observation)
        best = select(scores)  # [B]
        idx = best[:, None, None, None].expand(-1, 1, *poses.shape[2:])
        return Trajectory(poses=poses.gather(1, idx)[:, 0], dt=self.step)

    def proposals(self, obs: Observation) -> tuple[Tensor, ProposalScores]:
        """All proposals ``[B, K, horizon_steps, 3]`` (ego frame) and their scores ``[B, K]``."""
        cfg, dev = self.config, obs.ego_dims.device
        B = obs.batch_size
        fr = torch.tensor(cfg.speed_fractions, device=dev)
        off = torch.tensor(cfg.lateral_offsets, device=dev)
        fractions = fr[:, None].expand(-1, len(off)).reshape(-1)  # [K]
        offsets = off[None, :].expand(len(fr), -1).reshape(-1)
        K = fractions.shape[0]
        path = build_path(obs, self.params)
        agents = agents_on_path(obs, path)
        dims = obs.ego_dims
        speed = obs.speed
        limit = lane_speed_limit(obs)
        offset = offsets[None].expand(B, K)
        steps = max(self.horizon_steps, cfg.score_steps)
        s, v, d, slope = idm_rollout(
            path,
            agents,
            speed=speed,
            accel=current_accel(obs),
            target_speed=limit[:, None] * fractions[None],
            offset=offset,
            corridor=0.5 * dims[:, 1] + cfg.corridor_margin,
            ego_front=dims[:, 3] + 0.5 * dims[:, 0],
            params=self.params,
            steps=steps,
            dt=self.step,
        )
        # One more proposal: an emergency stop along the centreline, at the hard braking limit.
        s_stop, v_stop = _emergency_stop(path, speed, self.params.max_decel, steps, self.step)
        zero = torch.zeros(B, 1, device=dev, dtype=speed.dtype)
        d_stop, slope_stop = lateral_profile(path, s_stop, zero, blend_length(speed)[:, None])
        s, v = torch.cat([s, s_stop], 1), torch.cat([v, v_stop], 1)
        d, slope = torch.cat([d, d_stop], 1), torch.cat([slope, slope_stop], 1)
        offset = torch.cat([offset, zero], 1)
        poses = path_poses(path, s, d, slope)
        sim = simulate_proposals(path, s, v, offset, speed, dims[:, 2], self.params, cfg.score_steps, self.step)
        scores = score_proposals(obs, path, agents, sim, s[..., : cfg.score_steps], offset, cfg, self.step)
        return poses[:, :, : self.horizon_steps], scores


def _emergency_stop(path: RoutePath, speed: Tensor, brake: float, steps: int, dt: float) -> tuple[Tensor, Tensor]:
    """Arc length and speed ``[B, 1, steps]`` braking at ``brake`` m/s^2 from ``speed`` ``[B]``."""
    t = dt * torch.arange(1, steps + 1, device=speed.device, dtype=speed.dtype)
    tb = torch.minimum(t[None], (speed / brake)[:, None])  # time spent braking
    s = path.ego_s[:, None] + speed[:, None] * tb - 0.5 * brake * tb * tb
    v = (speed[:, None] - brake * t[None]).clamp_min(0.0)
    return s[:, None], v[:, None]


def select(scores: ProposalScores, tol: float = 1e-6) -> Tensor:
    """Index ``[B]`` of the best proposal: highest ``total``, then latest first violation, then
    most progress (within 1 mm), then the smallest lateral offset."""
    best = scores.total >= scores.total.amax(1, keepdim=True) - tol
    late = torch.where(best, scores.first_violation, torch.full_like(scores.first_violation, -1.0))
    best = best & (late >= late.amax(1, keepdim=True) - tol)
    prog = torch.where(best, scores.progress_m, torch.full_like(scores.progress_m, -float("inf")))
    best = best & (prog >= prog.amax(1, keepdim=True) - 1e-3)
    return torch.where(best, scores.offset.abs(), torch.full_like(scores.offset, float("inf"))).argmin(1)


def _nearest_agents(agents: AgentsOnPath, horizon: float, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``m`` agents that can come nearest to the ego within ``horizon`` s.

    Returns states ``[B, M, 5]`` (ego frame), sizes-free validity ``[B, M]`` and the gather
    index ``[B, M]`` into the observation's agents.
    """
    st = agents.state
    reach = st[..., :2].norm(dim=-1) - st[..., 3:5].norm(dim=-1) * horizon
    reach = torch.where(agents.valid, reach, torch.full_like(reach, float("inf")))
    m = min(m, reach.shape[1])
    idx = reach.topk(m, dim=1, largest=False).indices.sort(dim=1).values
    return st.gather(1, idx[..., None].expand(-1, -1, 5)), agents.valid.gather(1, idx), idx


def _overlap(
    ca: Tensor, ya: Tensor, la: Tensor, wa: Tensor, cb: Tensor, yb: Tensor, lb: Tensor, wb: Tensor
) -> Tensor:
    """Oriented-box overlap of broadcastable boxes a and b (centres ``[..., 2]``, yaw, length and
    width ``[...]``) -> bool ``[...]``. A bounding-circle test first, so that the exact
    separating-axis test runs only on the few pairs that are close."""
    shape = torch.broadcast_shapes(ca.shape[:-1], ya.shape, la.shape, cb.shape[:-1], yb.shape, lb.shape)
    ra = 0.5 * torch.sqrt(la * la + wa * wa)
    rb = 0.5 * torch.sqrt(lb * lb + wb * wb)
    near = ((ca - cb).norm(dim=-1) <= ra + rb).expand(shape).reshape(-1)
    sel = near.nonzero().squeeze(1)
    out = torch.zeros(near.shape, dtype=torch.bool, device=near.device)
    if sel.numel():

        def pick(x: Tensor, point: bool = False) -> Tensor:
            full = x.expand(*shape, 2) if point else x.expand(shape)
            return full.reshape(-1, 2)[sel] if point else full.reshape(-1)[sel]

        a = box_corners(pick(ca, True), pick(ya), pick(la), pick(wa))
        b = box_corners(pick(cb, True), pick(yb), pick(lb), pick(wb))
        out[sel] = boxes_overlap(a, b)
    return out.reshape(shape)


def known_radius(obs: Observation) -> Tensor:
    """Radius ``[B]`` (m) around the ego within which the observation holds every drivable-area
    edge. Observations carry the edges with the nearest midpoints; when every slot is used,
    farther ones are missing, so only segments inside the farthest carried midpoint distance,
    less the longest carried half edge, are checked (edges are assumed no longer than those)."""
    edges, valid = obs.drivable_edges, obs.drivable_edge_valid
    if edges.shape[1] == 0:
        return torch.full(valid.shape[:1], float("inf"), device=edges.device)
    mid = 0.5 * (edges[..., :2] + edges[..., 2:])
    half = 0.5 * (edges[..., 2:] - edges[..., :2]).norm(dim=-1)
    zero = torch.zeros_like(half)
    radius = torch.where(valid, mid.norm(dim=-1), zero).amax(-1) - torch.where(valid, half, zero).amax(-1)
    return torch.where(valid.all(-1), radius.clamp_min(0.0), torch.full_like(radius, float("inf")))


def _crosses(p: Tensor, q: Tensor, edges: Tensor, valid: Tensor) -> Tensor:
    """Number of edges ``[B, E, 4]`` crossed by segments ``p -> q`` ``[B, ...M, 2]``: ``[B, ...M]``."""
    B = p.shape[0]
    shape = p.shape[:-1]
    p = p.reshape(B, -1, 1, 2)
    q = q.reshape(B, -1, 1, 2)
    e0, e1 = edges[:, None, :, :2], edges[:, None, :, 2:]

    def cross(a: Tensor, b: Tensor) -> Tensor:
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    pq, ee = q - p, e1 - e0
    hit = (cross(pq, e0 - p) * cross(pq, e1 - p) < 0) & (cross(ee, p - e0) * cross(ee, q - e0) < 0)
    return (hit & valid[:, None]).sum(-1).reshape(shape)


def _edges_near(path: RoutePath, s_max: Tensor, edges: Tensor, valid: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """The drivable-area edges ``[B, E', 4]`` (and validity ``[B, E']``) within ``radius`` m of
    the route centreline between the ego and arc length ``s_max`` ``[B]``; ``E'`` is the largest
    such count in the batch, so no relevant edge is dropped."""
    stations = 24
    u = torch.linspace(0.0, 1.0, stations, device=s_max.device, dtype=s_max.dtype)
    span = (s_max - path.ego_s).clamp_min(0.0)
    pts, _ = path.sample(path.ego_s[:, None] + span[:, None] * u)  # [B, stations, 2]
    step = span / (stations - 1)
    dist, _ = point_segment_distance(pts[:, :, None], edges[:, None, :, :2], edges[:, None, :, 2:])
    keep = valid & (dist.amin(1) < radius + 0.5 * step[:, None])
    n = int(keep.sum(1).max()) if keep.numel() else 0
    idx = keep.to(torch.int8).topk(n, dim=1).indices
    return edges.gather(1, idx[..., None].expand(-1, -1, 4)), keep.gather(1, idx)


def score_proposals(
    obs: Observation,
    path: RoutePath,
    agents: AgentsOnPath,
    sim: Simulated,
    s: Tensor,
    offset: Tensor,
    cfg: PDMConfig,
    dt: float,
) -> ProposalScores:
    """Score simulated proposals (``sim`` over ``S`` steps, ``s`` ``[B, K, S]`` their arc lengths,
    ``offset`` ``[B, K]`` their lateral offsets, m)."""
    S = sim.speed.shape[-1]
    dtype = obs.ego_dims.dtype
    times = dt * torch.arange(1, S + 1, device=s.device, dtype=dtype)
    horizon = float(times[-1])
    ck = torch.arange(cfg.check_every - 1, S, cfg.check_every, device=s.device)
    dk = torch.arange(cfg.dac_every - 1, S, cfg.dac_every, device=s.device)
    collided, ttc_bad = _agent_checks(obs, agents, sim, ck, times, cfg)  # [B, K, C]
    off_road = _off_road(obs, path, sim, s, dk)  # [B, K, D]
    no_collision, drivable = ~collided.any(-1), ~off_road.any(-1)
    ttc = (~ttc_bad.any(-1)).to(dtype)

    # First violation time (s), for tie-breaking among zero scores.
    never = torch.full_like(collided, horizon, dtype=dtype)
    t_coll = torch.where(collided, times[ck], never).amin(-1)
    t_off = torch.where(off_road, times[dk], torch.full_like(off_road, horizon, dtype=dtype)).amin(-1)

    # Progress along the route, relative to the best safe proposal.
    progress_m = s[..., -1] - path.ego_s[:, None]
    safe = no_collision & drivable
    best = torch.where(safe, progress_m, torch.zeros_like(progress_m)).amax(1, keepdim=True)
    progress = torch.where(
        best > cfg.min_progress, (progress_m / best.clamp_min(1e-6)).clamp(0.0, 1.0), torch.ones_like(progress_m)
    )
    comfort = _comfortable(sim, dt).to(dtype)

    weights = cfg.weight_progress + cfg.weight_ttc + cfg.weight_comfort
    keep_lane = (1.0 - cfg.offset_penalty * offset.abs()).clamp_min(0.0)
    total = safe.to(dtype) * keep_lane * (
        cfg.weight_progress * progress + cfg.weight_ttc * ttc + cfg.weight_comfort * comfort
    ) / weights
    return ProposalScores(
        no_collision=no_collision.to(dtype),
        drivable=drivable.to(dtype),
        progress=progress,
        ttc=ttc,
        comfort=comfort,
        total=total,
        progress_m=progress_m,
        first_violation=torch.minimum(t_coll, t_off),
        offset=offset,
    )


def _agent_checks(
    obs: Observation, agents: AgentsOnPath, sim: Simulated, ck: Tensor, times: Tensor, cfg: PDMConfig
) -> tuple[Tensor, Tensor]:
    """At-fault collisions and TTC violations ``[B, K, C]`` at the checked steps ``ck`` ``[C]``
    (``times`` ``[S]`` s), against the agents extrapolated at constant velocity.

    At fault: the ego is moving and the agent's centre is ahead of the ego's (rear-end hits
    on the ego do not count); agents already touching the ego now are ignored. TTC: the ego,
    moved on at its speed for each of ``cfg.ttc_horizons``, hits an agent ahead.
    """
    dims = obs.ego_dims
    length, width, rtc = dims[:, 0], dims[:, 1], dims[:, 3]
    horizon = float(times[-1])
    ast, avalid, idx = _nearest_agents(agents, horizon + max(cfg.ttc_horizons), cfg.max_agents)
    asize = obs.agent_sizes.gather(1, idx[..., None].expand(-1, -1, 2))  # [B, M, 2]
    pose = sim.pose[:, :, ck]  # [B, K, C, 3]
    vel = sim.speed[:, :, ck]
    heading = torch.stack([torch.cos(pose[..., 2]), torch.sin(pose[..., 2])], -1)
    centre = pose[..., :2] + rtc[:, None, None, None] * heading
    ego_lw = (length[:, None, None, None], width[:, None, None, None])
    ag_lw = (asize[:, None, None, :, 0], asize[:, None, None, :, 1])
    ag_yaw = ast[:, None, None, :, 2]

    def agents_at(t: Tensor) -> Tensor:  # t [C] s -> centres [B, 1, C, M, 2]
        return (ast[:, None, :, :2] + t[None, :, None, None] * ast[:, None, :, 3:5])[:, None]

    now = torch.stack([rtc, torch.zeros_like(rtc)], -1)[:, None]  # [B, 1, 2] ego box centre now
    zero = torch.zeros(1, device=dims.device, dtype=dims.dtype)
    start_overlap = _overlap(now, torch.zeros_like(now[..., 0]), length[:, None], width[:, None],
                             agents_at(zero)[:, 0, 0], ast[..., 2], asize[..., 0], asize[..., 1])  # [B, M]
    live = (avalid & ~start_overlap)[:, None, None]

    def hits(ego_centre: Tensor, t: Tensor) -> Tensor:  # ego box centres [B, K, C, 2] vs agents at t
        a = agents_at(t)
        touch = _overlap(ego_centre[..., None, :], pose[..., 2, None], *ego_lw, a, ag_yaw, *ag_lw)
        ahead = ((a - ego_centre[..., None, :]) * heading[..., None, :]).sum(-1) > 0
        return touch & ahead & live

    collided = (hits(centre, times[ck]) & (vel > 0.05)[..., None]).any(-1)
    ttc_bad = torch.zeros_like(collided)
    for h in cfg.ttc_horizons:
        ahead = centre + (vel * h)[..., None] * heading
        ttc_bad = ttc_bad | (hits(ahead, times[ck] + h) & (vel > 0.1)[..., None]).any(-1)
    return collided, ttc_bad


def _off_road(obs: Observation, path: RoutePath, sim: Simulated, s: Tensor, dk: Tensor) -> Tensor:
    """Off the drivable area ``[B, K, D]`` at the checked steps ``dk`` ``[D]``: a corner of the
    ego box lies across an odd number of boundary edges from the route centreline point at the
    same arc length (the route is drivable). Only segments the observation fully covers count
    (see :func:`known_radius`)."""
    dims = obs.ego_dims
    pose = sim.pose[:, :, dk]
    heading = torch.stack([torch.cos(pose[..., 2]), torch.sin(pose[..., 2])], -1)
    corners = box_corners(pose[..., :2] + dims[:, 3, None, None, None] * heading, pose[..., 2],
                          dims[:, 0, None, None], dims[:, 1, None, None])  # [B, K, D, 4, 2]
    base, _ = path.sample(s[:, :, dk])  # [B, K, D, 2]
    reach = float((corners - base[..., None, :]).norm(dim=-1).amax()) + 1.0
    edges, edge_valid = _edges_near(path, s[:, :, dk].amax((1, 2)), obs.drivable_edges, obs.drivable_edge_valid, reach)
    n = _crosses(base[..., None, :].expand_as(corners), corners, edges, edge_valid)
    known = known_radius(obs)[:, None, None, None]
    seen = (corners.norm(dim=-1) < known) & (base.norm(dim=-1)[..., None] < known)
    return ((n % 2 == 1) & seen).any(-1)


def _comfortable(sim: Simulated, dt: float) -> Tensor:
    """Within the comfort limits ``[B, K]``; jerk and yaw acceleration over 0.5 s windows."""
    w = max(1, int(round(0.5 / dt)))
    lat = sim.speed * sim.yaw_rate
    jerk = (sim.accel[..., w:] - sim.accel[..., :-w]) / (w * dt)
    yaw_acc = (sim.yaw_rate[..., w:] - sim.yaw_rate[..., :-w]) / (w * dt)
    series = {"lon_accel": sim.accel, "lat_accel": lat, "lon_jerk": jerk, "yaw_rate": sim.yaw_rate,
              "yaw_accel": yaw_acc}
    ok = torch.ones(sim.accel.shape[:2], dtype=torch.bool, device=sim.accel.device)
    for name, x in series.items():  # the evaluator's comfort bounds (nuPlan's)
        lo, hi = COMFORT_BOUNDS[name]
        ok &= (x.amax(-1) <= hi) & (x.amin(-1) >= lo)
    return ok
