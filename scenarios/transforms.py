"""The built-in variant transforms: pure, seeded ``(scenario, rng, **params) -> Scenario`` functions.

Each is registered (:func:`scenarios.variants.register_transform`) with the ranges its parameters
are sampled from. Conventions (see :mod:`av.types`): SI units, local frame, ``dt`` steps,
simulation starting at ``history_steps`` ("the start step"); times in parameters are seconds
after the start step, distances metres.

Tracks are edited with numpy over agents x time. A track that is re-timed keeps its logged
*path*: the path is the polyline through its valid positions, parametrised by arc length, with
the logged heading interpolated along it, and extended straight along the first and last heading
so that a re-timed agent may start earlier or end later than its log. Every edited track gets its
velocities from finite differences of its new positions (as the importer computes them), its yaw
wrapped to ``[-pi, pi)``, and zeros where its mask is false. New agents get fresh ids
(``"<transform>-<k>"``).

A transform that does not apply to a scenario (no vehicle ahead, no adjacent lane, ...) raises
:class:`~scenarios.variants.VariantError` saying why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from av.types import VX, VY, X, Y, YAW, AgentType, Scenario, wrap_angle
from scenarios.plausibility import finite_difference_velocity, on_drivable
from scenarios.variants import Choice, Integers, Uniform, VariantError, register_transform

EXTEND_M = 1000.0  # straight extension of a path beyond its logged ends, m
CONFLICT_M = 3.0  # paths this close (m) can conflict
MIN_PATH_M = 2.0  # an agent whose logged path is shorter than this counts as not moving, m
LEAD_RANGE_M = 80.0  # how far ahead a lead vehicle is looked for, m
BRAKE_RAMP_S = 0.5  # time for a hard brake to build up to full deceleration, s
CUT_IN_MIN_SPEED = 2.5  # a slower lane change would be a sideways crawl, m/s
CUT_IN_LEAD_S = 3.0  # the cut-in vehicle appears this long before its lane change starts, s
ROUTE_EXTEND_M = 60.0  # the route is continued by successor lanes this far beyond its logged end, m
PED_RANGE_M = 10.0  # a crossing pedestrian is visible within this lateral distance of the route, m
CAR_SIZE = (4.6, 1.9)  # length, width of spawned vehicles, m
PED_SIZE = (0.7, 0.7)


# ====================================================================== paths and tracks
@dataclass(frozen=True)
class _Paths:
    """``N`` logged paths as polylines over arc length, extended straight at both ends.

    * ``knots`` ``[N, T + 2]``: arc length (m) of each vertex, non-decreasing: the extension's
      start, the ``T`` logged vertices (the valid positions in time order, the last one repeated
      as padding), the extension's end.
    * ``xy`` ``[N, T + 2, 2]`` vertices; ``yaw`` ``[N, T + 2]`` heading at each vertex (unwrapped).
    * ``vertex_step`` ``[N, T]``: step index of each logged vertex; ``s`` ``[N, T]``: arc length of
      each step's position (0 where invalid); ``length`` ``[N]``: logged path length, m.
    """

    knots: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    vertex_step: np.ndarray
    s: np.ndarray
    length: np.ndarray


def _paths(xy: np.ndarray, yaw: np.ndarray, valid: np.ndarray) -> _Paths:
    """Paths of tracks ``xy [N, T, 2]``, ``yaw [N, T]`` over their valid steps ``valid [N, T]``."""
    N, T = valid.shape
    order = np.argsort(~valid, axis=1, kind="stable")  # valid steps first, in time order
    last = np.maximum(valid.sum(axis=1) - 1, 0)
    src = np.take_along_axis(order, np.minimum(np.arange(T)[None, :], last[:, None]), axis=1)
    p = np.take_along_axis(xy, src[..., None], axis=1)
    y = np.unwrap(np.take_along_axis(yaw, src, axis=1), axis=1)
    cum = np.concatenate([np.zeros((N, 1)), np.cumsum(np.linalg.norm(np.diff(p, axis=1), axis=-1), axis=1)], axis=1)
    d0 = np.stack([np.cos(y[:, 0]), np.sin(y[:, 0])], axis=-1)
    d1 = np.stack([np.cos(y[:, -1]), np.sin(y[:, -1])], axis=-1)
    knots = np.concatenate([np.full((N, 1), -EXTEND_M), cum, cum[:, -1:] + EXTEND_M], axis=1)
    vertices = np.concatenate([(p[:, 0] - EXTEND_M * d0)[:, None], p, (p[:, -1] + EXTEND_M * d1)[:, None]], axis=1)
    rank = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    s = np.where(valid, np.take_along_axis(cum, rank, axis=1), 0.0)
    yaw_k = np.concatenate([y[:, :1], y, y[:, -1:]], axis=1)
    return _Paths(knots, vertices, yaw_k, src, s, cum[:, -1])


def _interp_rows(knots: np.ndarray, q: np.ndarray, *values: np.ndarray) -> list[np.ndarray]:
    """Row-wise linear interpolation: for each row ``n``, ``values[n]`` given at ``knots[n]``
    (``[N, K]``, non-decreasing) evaluated at ``q[n]`` (``[N, M]``, clamped to the knots)."""
    N, K = knots.shape
    span = 2.0 * max(float(np.abs(knots).max(initial=0.0)), float(np.abs(q).max(initial=0.0))) + 1.0
    off = np.arange(N)[:, None] * span  # disjoint value ranges per row -> one global search
    flat = (knots + off).ravel()
    idx = np.searchsorted(flat, (q + off).ravel(), side="right").reshape(q.shape) - 1
    idx = np.clip(idx - np.arange(N)[:, None] * K, 0, K - 2)
    k0 = np.take_along_axis(knots, idx, axis=1)
    k1 = np.take_along_axis(knots, idx + 1, axis=1)
    frac = np.clip(np.where(k1 > k0, (q - k0) / np.where(k1 > k0, k1 - k0, 1.0), 0.0), 0.0, 1.0)
    out = []
    for v in values:
        extra = v.shape[2:]
        v0 = np.take_along_axis(v, idx.reshape(*idx.shape, *([1] * len(extra))), axis=1)
        v1 = np.take_along_axis(v, (idx + 1).reshape(*idx.shape, *([1] * len(extra))), axis=1)
        f = frac.reshape(*frac.shape, *([1] * len(extra)))
        out.append(v0 + f * (v1 - v0))
    return out


def _sample(paths: _Paths, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[N, M, 2]`` and headings ``[N, M]`` (unwrapped) at arc lengths ``s [N, M]``."""
    xy, yaw = _interp_rows(paths.knots, s, paths.xy, paths.yaw)
    return xy, yaw


def _s_at_steps(paths: _Paths, steps: np.ndarray, dt: float) -> np.ndarray:
    """Arc length ``[N, M]`` reached at (fractional) step indices ``steps [N, M]``: the logged
    progress, extended before/after the valid steps at the mean speed of the first/last 0.5 s."""
    N, T = paths.s.shape
    vs, cum = paths.vertex_step, paths.knots[:, 1:-1]  # [N, T]: step and arc length of each vertex
    last = np.argmax(vs, axis=1)  # the first occurrence of the last valid step
    k = np.minimum(5, last)
    rows = np.arange(N)
    v0 = (cum[rows, k] - cum[:, 0]) / np.maximum((vs[rows, k] - vs[:, 0]) * dt, dt)
    v1 = (cum[rows, last] - cum[rows, last - k]) / np.maximum((vs[rows, last] - vs[rows, last - k]) * dt, dt)
    far = 1e4
    knots = np.concatenate([vs[:, :1] - far, vs, vs[:, -1:] + far], axis=1).astype(np.float64)
    vals = np.concatenate([(cum[:, 0] - v0 * far * dt)[:, None], cum, (cum[:, -1] + v1 * far * dt)[:, None]], axis=1)
    (out,) = _interp_rows(knots, steps, vals)
    return out


def _track(
    xy: np.ndarray, yaw: np.ndarray, valid: np.ndarray, dt: float
) -> np.ndarray:
    """States ``[N, T, 5]`` from positions ``[N, T, 2]`` and headings ``[N, T]``: yaw wrapped,
    velocity by finite differences over the valid steps, zeros where ``valid`` is false."""
    out = np.zeros((*valid.shape, 5))
    out[..., X : Y + 1] = xy
    out[..., YAW] = wrap_angle(yaw)
    out[..., VX : VY + 1] = finite_difference_velocity(xy, valid, dt)
    out[~valid] = 0.0
    return out


def _along(
    paths: _Paths, s: np.ndarray, lateral: np.ndarray | float = 0.0, dlat_ds: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[N, M, 2]`` and headings ``[N, M]`` at arc length ``s`` along the paths,
    offset ``lateral`` m to the left of the path; ``dlat_ds`` turns the heading accordingly."""
    xy, yaw = _sample(paths, s)
    normal = np.stack([-np.sin(yaw), np.cos(yaw)], axis=-1)
    return xy + np.asarray(lateral)[..., None] * normal, yaw + np.arctan(dlat_ds)


def _speeds(s: Scenario) -> np.ndarray:
    return np.linalg.norm(s.agents[..., VX : VY + 1], axis=-1)


def _moving(paths: _Paths) -> np.ndarray:
    """Bool ``[N]``: the agent's logged path is at least ``MIN_PATH_M`` long."""
    return paths.length >= MIN_PATH_M


def _quintic(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-jerk blend 0 -> 1 over ``u`` in [0, 1] and its derivative ``d/du``."""
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (10 - 15 * u + 6 * u**2), 30 * u**2 * (1 - u) ** 2


def _fresh_id(s: Scenario, prefix: str) -> str:
    taken, k = set(s.agent_ids), 0
    while f"{prefix}-{k}" in taken:
        k += 1
    return f"{prefix}-{k}"


def _with_agent(
    s: Scenario, agent_id: str, kind: AgentType, size: tuple[float, float], track: np.ndarray, valid: np.ndarray
) -> Scenario:
    """``s`` with one more agent: states ``track [T, 5]``, mask ``valid [T]``."""
    return s.replace(
        agent_ids=(*s.agent_ids, agent_id),
        agent_types=np.append(s.agent_types, np.int8(kind)),
        agent_sizes=np.concatenate([s.agent_sizes.reshape(-1, 2), [size]]),
        agents=np.concatenate([s.agents.reshape(-1, s.num_steps, 5), track[None]]),
        agent_valid=np.concatenate([s.agent_valid.reshape(-1, s.num_steps), valid[None]]),
    )


def _replace_agents(s: Scenario, rows: np.ndarray, tracks: np.ndarray, valid: np.ndarray | None = None) -> Scenario:
    agents = s.agents.copy()
    agents[rows] = tracks
    mask = s.agent_valid.copy()
    if valid is not None:
        mask[rows] = valid
    return s.replace(agents=agents, agent_valid=mask)


def _agent_paths(s: Scenario, rows: np.ndarray) -> _Paths:
    return _paths(s.agents[rows, :, :2], s.agents[rows, :, YAW], s.agent_valid[rows])


# ====================================================================== the ego's route
@dataclass(frozen=True)
class _Route:
    """The ego's route centreline as one path, and the ego's progress along it.

    * ``path``: a one-row :class:`_Paths` (knots = arc length along the route, m).
    * ``lane`` ``[P]``: map lane index of each route vertex. ``length``: route length, m.
    * ``ego_s`` ``[T]``: arc length of the logged ego rear axle along the route at each step.
    """

    path: _Paths
    lane: np.ndarray
    length: float
    ego_s: np.ndarray


def _route(s: Scenario, who: str) -> _Route:
    m = s.map
    if s.route.size == 0:
        raise VariantError(f"{who}: the scenario has no route")
    lanes = _extended_route(s)
    pts = np.concatenate([m.lane(i) for i in lanes])
    lane = np.concatenate([np.full(len(m.lane(i)), i) for i in lanes])
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts[:, :2], axis=0), axis=1) > 1e-3])
    pts, lane = pts[keep], lane[keep]
    if len(pts) < 2:
        raise VariantError(f"{who}: the ego's route is too short")
    path = _paths(pts[None, :, :2], pts[None, :, 2], np.ones((1, len(pts)), bool))
    h = s.history_steps
    s_h, _ = _project(path, s.ego[h : h + 1, :2])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(s.ego[:, :2], axis=0), axis=1))])
    return _Route(path, lane, float(path.length[0]), s_h[0] + arc - arc[h])


def _extended_route(s: Scenario) -> list[int]:
    """The route's lanes followed by up to ``ROUTE_EXTEND_M`` of successor lanes (the straightest
    successor each time), so that events may happen beyond where the logged ego stopped."""
    m = s.map
    lanes = [int(i) for i in s.route]
    extra = 0.0
    while extra < ROUTE_EXTEND_M:
        end_heading = m.lane(lanes[-1])[-1, 2]
        nxt = [int(j) for j in m.successors(lanes[-1]) if int(j) not in lanes]
        if not nxt:
            break
        pick = min(nxt, key=lambda j: (abs(float(wrap_angle(m.lane(j)[0, 2] - end_heading))), j))
        lanes.append(pick)
        extra += float(np.linalg.norm(np.diff(m.lane(pick)[:, :2], axis=0), axis=1).sum())
    return lanes


def _project(path: _Paths, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length ``[M]`` and signed lateral offset ``[M]`` (left positive) of points ``q [M, 2]``
    on the nearest segment of a one-row path (its logged part, without the extensions)."""
    v = path.xy[0, 1:-1]
    a, b = v[:-1], v[1:]
    ab = b - a
    seg = np.linalg.norm(ab, axis=1)
    d = q[:, None, :] - a[None]
    t = np.clip((d * ab[None]).sum(-1) / np.maximum(seg**2, 1e-12)[None], 0.0, 1.0)
    dist = np.linalg.norm(d - t[..., None] * ab[None], axis=-1)
    k = np.argmin(dist, axis=1)
    rows = np.arange(len(q))
    u = ab[k] / np.maximum(seg[k], 1e-12)[:, None]
    lat = u[:, 0] * d[rows, k, 1] - u[:, 1] * d[rows, k, 0]
    return path.knots[0, 1:-1][k] + t[rows, k] * seg[k], lat


def _ego_front(s: Scenario) -> float:
    """Distance from the ego's rear axle to its front bumper, m."""
    return s.ego_vehicle.rear_axle_to_center + 0.5 * s.ego_vehicle.length


def _at_step(x: np.ndarray, step: float) -> float:
    """``x [T]`` linearly interpolated at a fractional step index."""
    return float(np.interp(step, np.arange(len(x)), x))


def _start_step(s: Scenario, t_s: float, who: str) -> float:
    """Fractional step index ``t_s`` seconds after the start step (must lie inside the scenario)."""
    step = s.history_steps + t_s / s.dt
    if not 0 <= step <= s.num_steps - 1:
        raise VariantError(f"{who}: the time is outside the scenario")
    return step


# ====================================================================== transforms
@register_transform("speed_scale", {"factor": Uniform(0.7, 1.3)})
def speed_scale(s: Scenario, rng: np.random.Generator, factor: float) -> Scenario:
    """Every moving agent drives its logged path at ``factor`` times its logged speed.

    Progress along the path is scaled about the agent's position at the start step (or its
    first/last valid step), so the start-step scene is unchanged and the future differs. A faster
    agent leaves at the end of its logged path (masked from there), as it would leave the view.
    """
    rows = np.flatnonzero(s.agent_valid.any(axis=1))
    paths = _agent_paths(s, rows)
    moving = _moving(paths)
    if not moving.any():
        raise VariantError("speed_scale: no moving agent")
    rows = rows[moving]
    paths = _agent_paths(s, rows)
    valid = s.agent_valid[rows]
    first = np.argmax(valid, axis=1)
    last = s.num_steps - 1 - np.argmax(valid[:, ::-1], axis=1)
    anchor = np.clip(s.history_steps, first, last)
    s_a = paths.s[np.arange(len(rows)), anchor][:, None]
    s_new = s_a + factor * (paths.s - s_a)
    valid = valid & (s_new >= 0.0) & (s_new <= paths.length[:, None])
    xy, yaw = _along(paths, np.where(valid, s_new, 0.0))
    return _replace_agents(s, rows, _track(xy, yaw, valid, s.dt), valid)


def _near_ego_path(s: Scenario, who: str) -> np.ndarray:
    """Indices of moving road users, most likely to meet the ego first.

    Agents whose logged path comes within ``CONFLICT_M`` of the ego's path from the start step
    on come first, ordered by the time between the agent's and the ego's passing of the closest
    point (a small gap is what a time shift turns into a conflict); the rest follow by distance.
    Ties go by id.
    """
    rows = np.flatnonzero(s.agent_valid.any(axis=1) & (s.agent_types != AgentType.STATIC))
    if rows.size:
        rows = rows[_moving(_agent_paths(s, rows))]
    if rows.size == 0:
        raise VariantError(f"{who}: no moving agent")
    h = s.history_steps
    ego = s.ego[h::2, :2].astype(np.float32)  # every 0.2 s is close enough to rank
    pts = s.agents[rows, ::2, :2].astype(np.float32)
    d = np.linalg.norm(pts[:, :, None] - ego[None, None], axis=-1)  # [n, Ta, Te]
    d = np.where(s.agent_valid[rows, ::2, None], d, np.inf).reshape(len(rows), -1)
    best = np.argmin(d, axis=1)
    closest = d[np.arange(len(rows)), best]
    t_agent, t_ego = best // ego.shape[0] * 2, h + best % ego.shape[0] * 2
    gap = np.abs(t_agent - t_ego) * s.dt
    conflict = closest <= CONFLICT_M
    id_rank = np.argsort(np.argsort(np.array([s.agent_ids[r] for r in rows])))
    return rows[np.lexsort((id_rank, np.where(conflict, gap, closest), ~conflict))]


@register_transform("time_shift", {"agent": Integers(0, 3), "shift_s": Uniform(-2.0, 2.0)}, adversarial=True)
def time_shift(s: Scenario, rng: np.random.Generator, agent: int, shift_s: float) -> Scenario:
    """One agent runs its logged track ``shift_s`` seconds later (negative: earlier).

    ``agent`` picks among the moving agents ranked by how likely they are to meet the ego
    (0 = most; taken modulo their number; see :func:`_near_ego_path`). The agent keeps its mask;
    where the shifted time falls outside its log it continues at its first/last speed along its
    path's straight extension.
    """
    n = _near_ego_path(s, "time_shift")
    row = n[int(agent) % len(n)][None]
    paths = _agent_paths(s, row)
    valid = s.agent_valid[row]
    steps = np.arange(s.num_steps, dtype=np.float64)[None] - shift_s / s.dt
    s_new = _s_at_steps(paths, steps, s.dt)
    xy, yaw = _along(paths, s_new)
    return _replace_agents(s, row, _track(xy, yaw, valid, s.dt))


@register_transform("lateral_offset", {"max_offset_m": Uniform(0.1, 0.6)})
def lateral_offset(s: Scenario, rng: np.random.Generator, max_offset_m: float) -> Scenario:
    """Every moving vehicle and cyclist drives its path shifted sideways (within its lane) by its
    own constant offset drawn uniformly from ``[-max_offset_m, max_offset_m]``."""
    road = np.isin(s.agent_types, [AgentType.VEHICLE, AgentType.CYCLIST]) & s.agent_valid.any(axis=1)
    rows = np.flatnonzero(road)
    if rows.size:
        rows = rows[_moving(_agent_paths(s, rows))]
    if rows.size == 0:
        raise VariantError("lateral_offset: no moving vehicle or cyclist")
    offset = rng.uniform(-max_offset_m, max_offset_m, size=len(rows))
    yaw = s.agents[rows, :, YAW]
    normal = np.stack([-np.sin(yaw), np.cos(yaw)], axis=-1)
    xy = s.agents[rows, :, :2] + offset[:, None, None] * normal
    return _replace_agents(s, rows, _track(xy, yaw, s.agent_valid[rows], s.dt))


def _lead(s: Scenario, route: _Route, who: str) -> int:
    """Index of the nearest vehicle ahead of the ego in its route lane at the start step."""
    h = s.history_steps
    rows = np.flatnonzero(s.agent_valid[:, h] & (s.agent_types == AgentType.VEHICLE))
    if rows.size:
        sa, lat = _project(route.path, s.agents[rows, h, :2])
        _, heading = _sample(route.path, sa[None])
        ahead = sa - route.ego_s[h]
        dyaw = np.abs(wrap_angle(s.agents[rows, h, YAW] - heading[0]))
        ok = (ahead > _ego_front(s)) & (ahead < LEAD_RANGE_M) & (np.abs(lat) < 2.0) & (dyaw < math.pi / 4)
        if ok.any():
            return int(rows[ok][np.argmin(ahead[ok])])
    raise VariantError(f"{who}: no vehicle ahead of the ego on its route")


def _braking(v0: float, decel: float, tau: np.ndarray) -> np.ndarray:
    """Distance (m) covered ``tau`` s after the onset of a brake from ``v0`` m/s whose deceleration
    ramps linearly to ``decel`` m/s^2 over ``BRAKE_RAMP_S`` and holds it until standstill."""
    r = BRAKE_RAMP_S
    if v0 <= decel * r / 2:  # stops during the ramp: v = v0 - decel tau^2 / (2 r)
        t_stop = math.sqrt(2 * r * v0 / decel)
    else:
        t_stop = v0 / decel + r / 2
    t = np.clip(tau, 0.0, t_stop)
    in_ramp = v0 * t - decel * t**3 / (6 * r)
    tr = np.maximum(t - r, 0.0)
    after = v0 * r - decel * r**2 / 6 + (v0 - decel * r / 2) * tr - decel * tr**2 / 2
    return np.where(t <= r, in_ramp, after)


@register_transform("lead_brake", {"decel": Uniform(3.0, 8.0), "onset_s": Uniform(0.5, 5.0)}, adversarial=True)
def lead_brake(s: Scenario, rng: np.random.Generator, decel: float, onset_s: float) -> Scenario:
    """The vehicle ahead of the ego on its route brakes hard to a standstill.

    From ``onset_s`` seconds after the start step its deceleration ramps up over
    ``BRAKE_RAMP_S`` to ``decel`` m/s^2; it stays on its logged path and, once stopped, stays
    (valid) until the end of the scenario.
    """
    route = _route(s, "lead_brake")
    row = np.array([_lead(s, route, "lead_brake")])
    onset = _start_step(s, onset_s, "lead_brake")
    v0 = _at_step(_speeds(s)[row[0]], onset)
    if v0 < 1.0:
        raise VariantError("lead_brake: the vehicle ahead is (nearly) stopped at the onset")
    paths = _agent_paths(s, row)
    valid = s.agent_valid[row].copy()
    first = int(np.argmax(valid[0]))
    valid[0, first:] = True
    steps = np.arange(s.num_steps, dtype=np.float64)
    s_log = _s_at_steps(paths, steps[None], s.dt)[0]
    s_on = _at_step(s_log, onset)
    s_new = np.where(steps <= onset, s_log, s_on + _braking(v0, decel, (steps - onset) * s.dt))
    xy, yaw = _along(paths, np.where(valid[0], s_new, 0.0)[None])
    return _replace_agents(s, row, _track(xy, yaw, valid, s.dt), valid)


def _adjacent_offsets(s: Scenario, route: _Route, at_s: float) -> dict[str, float]:
    """Lateral offsets (m, left positive) of same-direction lanes next to the route at arc
    length ``at_s``: ``{"left": ..., "right": ...}`` for the sides that have one."""
    m = s.map
    (xy,), (heading,) = _sample(route.path, np.array([[at_s]]))
    c, sn = math.cos(heading[0]), math.sin(heading[0])
    d = m.lane_points[:, :2] - xy[0]
    lon, lat = d[:, 0] * c + d[:, 1] * sn, -d[:, 0] * sn + d[:, 1] * c
    lane_of = np.repeat(np.arange(m.num_lanes), np.diff(m.lane_point_offsets))
    same_dir = np.abs(wrap_angle(m.lane_points[:, 2] - heading[0])) < math.radians(30)
    near = (np.abs(lon) < 4.0) & (np.abs(lat) > 2.5) & (np.abs(lat) < 5.5) & same_dir & ~np.isin(lane_of, s.route)
    out = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        pick = near & (np.sign(lat) == sign)
        if pick.any():
            out[side] = float(np.median(lat[pick]))
    return out


@register_transform(
    "cut_in",
    {"gap_m": Uniform(3.0, 20.0), "time_s": Uniform(1.0, 6.0), "duration_s": Uniform(2.5, 4.0),
     "speed_ratio": Uniform(0.6, 1.1)},
    adversarial=True,
)
def cut_in(
    s: Scenario, rng: np.random.Generator, gap_m: float, time_s: float, duration_s: float, speed_ratio: float
) -> Scenario:
    """A new vehicle from an adjacent same-direction lane merges in front of the ego.

    It drives at ``speed_ratio`` times the ego's logged speed at the merge time (at least
    ``CUT_IN_MIN_SPEED``, else the cut-in does not apply), changes lane
    over ``duration_s`` s with a minimum-jerk lateral profile and ends the manoeuvre
    ``time_s`` s after the start step with its rear ``gap_m`` m ahead of the logged ego's front.
    It appears ``CUT_IN_LEAD_S`` before the lane change (or at the start) and disappears where
    the ego's route ends. The side (left/right) is the one that has a lane (random if both do).
    """
    who = "cut_in"
    route = _route(s, who)
    merge = _start_step(s, time_s, who)
    v = _at_step(np.linalg.norm(s.ego[:, VX : VY + 1], axis=1), merge) * speed_ratio
    if v < CUT_IN_MIN_SPEED:
        raise VariantError(f"{who}: the ego is too slow for a cut-in at that time")
    length, width = CAR_SIZE
    s_merge = _at_step(route.ego_s, merge) + _ego_front(s) + gap_m + length / 2
    t = (np.arange(s.num_steps) - merge) * s.dt  # s, relative to the end of the lane change
    s_c = s_merge + v * t
    begin = -duration_s
    lanes = _adjacent_offsets(s, route, s_merge + v * begin)
    if not lanes:
        raise VariantError(f"{who}: no adjacent lane next to the ego")
    side = sorted(lanes)[int(rng.integers(len(lanes)))]
    u = (t - begin) / duration_s
    blend, dblend = _quintic(u)
    lateral = lanes[side] * (1.0 - blend)
    dlat_ds = np.where((u > 0) & (u < 1), -lanes[side] * dblend / duration_s / v, 0.0)
    valid = (t >= begin - CUT_IN_LEAD_S) & (s_c >= 0.0) & (s_c <= route.length)
    if not (valid[int(math.ceil(merge))] and s_merge + v * begin >= 0.0):
        raise VariantError(f"{who}: the ego's route is too short for the cut-in")
    xy, yaw = _along(route.path, np.where(valid, s_c, 0.0)[None], lateral[None], dlat_ds[None])
    track = _track(xy, yaw, valid[None], s.dt)[0]
    return _with_agent(s, _fresh_id(s, who), AgentType.VEHICLE, CAR_SIZE, track, valid)


@register_transform(
    "ped_crossing",
    {"time_s": Uniform(1.0, 6.0), "distance_m": Uniform(5.0, 30.0), "speed": Uniform(0.8, 2.0),
     "side": Choice(("left", "right"))},
    adversarial=True,
)
def ped_crossing(
    s: Scenario, rng: np.random.Generator, time_s: float, distance_m: float, speed: float, side: str
) -> Scenario:
    """A pedestrian crosses the ego's route from the ``side`` at ``speed`` m/s, perpendicular to it,
    reaching the route centreline ``time_s`` s after the start step at ``distance_m`` m ahead of
    the logged ego's front at that time. Visible within ``PED_RANGE_M`` of the centreline."""
    who = "ped_crossing"
    if side not in ("left", "right"):
        raise VariantError(f"{who}: side must be 'left' or 'right', got {side!r}")
    route = _route(s, who)
    cross = _start_step(s, time_s, who)
    s_x = _at_step(route.ego_s, cross) + _ego_front(s) + distance_m
    if s_x > route.length:
        raise VariantError(f"{who}: the ego's route ends before the crossing point")
    sign = 1.0 if side == "left" else -1.0
    t = (np.arange(s.num_steps) - cross) * s.dt
    lateral = -sign * speed * t  # left of the route before the crossing when side == "left"
    valid = np.abs(lateral) <= PED_RANGE_M
    (base,), (heading,) = _sample(route.path, np.full((1, s.num_steps), s_x))
    normal = np.stack([-np.sin(heading), np.cos(heading)], axis=-1)
    xy = base + lateral[:, None] * normal
    yaw = heading - sign * math.pi / 2
    track = _track(xy[None], yaw[None], valid[None], s.dt)[0]
    return _with_agent(s, _fresh_id(s, who), AgentType.PEDESTRIAN, PED_SIZE, track, valid)


@register_transform("drop_agents", {"fraction": Uniform(0.1, 0.6)})
def drop_agents(s: Scenario, rng: np.random.Generator, fraction: float) -> Scenario:
    """Remove a random ``fraction`` of the agents (at least one)."""
    N = s.num_agents
    if N == 0:
        raise VariantError("drop_agents: the scenario has no agents")
    k = min(N, max(1, int(round(fraction * N))))
    keep = np.sort(rng.permutation(N)[k:])
    return s.replace(
        agent_ids=tuple(s.agent_ids[i] for i in keep),
        agent_types=s.agent_types[keep],
        agent_sizes=s.agent_sizes[keep],
        agents=s.agents[keep],
        agent_valid=s.agent_valid[keep],
    )


@register_transform(
    "ego_init", {"speed_delta": Uniform(-3.0, 3.0), "lateral_m": Uniform(-0.8, 0.8), "blend_s": Uniform(2.0, 4.0)}
)
def ego_init(s: Scenario, rng: np.random.Generator, speed_delta: float, lateral_m: float, blend_s: float) -> Scenario:
    """The ego starts off its logged state: ``speed_delta`` m/s faster and ``lateral_m`` m to the
    left of its logged path at the start step (a recovery case).

    The history is consistent with that start (same offset and speed difference all along); the
    future returns to the log: the speed difference fades over ``blend_s`` s and the lateral
    offset over the distance the ego covers in that time (at least 5 m), both minimum-jerk.
    Speeds never go below zero.
    """
    h, T, dt = s.history_steps, s.num_steps, s.dt
    ego = s.ego
    paths = _paths(ego[None, :, :2], ego[None, :, YAW], np.ones((1, T), bool))
    t = (np.arange(T) - h) * dt
    # extra progress: speed_delta * integral of the speed blend (1 before the start, fading after)
    u = np.clip(t / blend_s, 0.0, 1.0)
    fade_integral = np.where(t <= 0, t, blend_s * (u - (2.5 * u**4 - 3 * u**5 + u**6)))
    s_new = paths.s[0] + speed_delta * fade_integral
    s_new[h:] = np.maximum.accumulate(s_new[h:])  # never reverse
    s_new[: h + 1] = np.minimum.accumulate(s_new[h::-1])[::-1]
    v_start = max(_at_step(np.linalg.norm(ego[:, VX : VY + 1], axis=1), h) + speed_delta, 0.0)
    dist = max(blend_s * v_start, 5.0)
    w, dw = _quintic((s_new - s_new[h]) / dist)
    lateral = lateral_m * (1.0 - w)
    dlat_ds = np.where(t > 0, -lateral_m * dw / dist, 0.0)
    xy, yaw = _along(paths, s_new[None], lateral[None], dlat_ds[None])
    return s.replace(ego=_track(xy, yaw, np.ones((1, T), bool), dt)[0])


@register_transform("parked_vehicle", {"distance_m": Uniform(8.0, 40.0), "intrusion_m": Uniform(0.3, 1.0)})
def parked_vehicle(s: Scenario, rng: np.random.Generator, distance_m: float, intrusion_m: float) -> Scenario:
    """A parked vehicle at an edge of the ego's lane, ``distance_m`` m ahead of the ego's front at
    the start step, reaching ``intrusion_m`` m into the lane (the lane gets narrower). The side
    is one where the whole car stands on the drivable area (random if both sides qualify)."""
    who = "parked_vehicle"
    route = _route(s, who)
    length, width = CAR_SIZE
    s_p = route.ego_s[s.history_steps] + _ego_front(s) + distance_m + length / 2
    if s_p + length / 2 > route.length:
        raise VariantError(f"{who}: the ego's route ends before that point")
    (centre,), (heading,) = _sample(route.path, np.array([[s_p]]))
    yaw = float(heading[0])
    lat = _half_width(s, route, s_p, centre[0]) - intrusion_m + width / 2
    forward, left = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float64)
    corners = signs[:, :1] * (length / 2) * forward + signs[:, 1:] * (width / 2) * left  # [4, 2]
    spots = np.stack([centre[0] + lat * left, centre[0] - lat * left])  # left, right
    fits = np.flatnonzero(on_drivable(s.map, spots[:, None, :] + corners[None]).all(axis=1))
    if fits.size == 0:
        raise VariantError(f"{who}: no room on the drivable area at either lane edge")
    track = np.zeros((s.num_steps, 5))
    track[:, X : Y + 1] = spots[fits[int(rng.integers(fits.size))]]
    track[:, YAW] = wrap_angle(np.array(yaw))
    return _with_agent(s, _fresh_id(s, who), AgentType.VEHICLE, CAR_SIZE, track, np.ones(s.num_steps, bool))


def _half_width(s: Scenario, route: _Route, at_s: float, point: np.ndarray) -> float:
    """Half width (m) of the route lane at arc length ``at_s``: the distance from its centreline
    point to the lane outline (1.75 m where the map has no outline)."""
    k = int(np.clip(np.searchsorted(route.path.knots[0, 1:-1], at_s) - 1, 0, len(route.lane) - 1))
    poly = s.map.lane_polygon(int(route.lane[k]))
    if len(poly) < 3:
        return 1.75
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(((point - a) * ab).sum(1) / np.maximum((ab**2).sum(1), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(point - (a + t[:, None] * ab), axis=1).min())


__all__ = [
    "cut_in",
    "drop_agents",
    "ego_init",
    "lateral_offset",
    "lead_brake",
    "parked_vehicle",
    "ped_crossing",
    "speed_scale",
    "time_shift",
]
