"""Background agents: log replay (non-reactive) and IDM along the logged path (reactive).

Reactive mode keeps each moving vehicle or cyclist on the PATH it drove in the log (its logged
positions, parametrised by arc length, extended 1 km straight past the last one) and integrates
its speed: it follows its logged speed profile (the logged acceleration plus a correction towards
the logged speed, time constant ``speed_tau``) and brakes with the Intelligent Driver Model for
whatever is ahead on that path, the ego included. Pedestrians, static objects and agents whose
logged path is shorter than ``MIN_PATH_LENGTH`` replay the log in both modes. Agents appear and
disappear exactly as the log's validity mask says; an agent that (re)appears starts from its
logged state.

"Ahead on the path": for an obstacle ``d`` metres ahead, the path is approximated by the circular
arc through the agent whose curvature is the path's mean curvature over its next ``d`` metres
(tabulated for ``CURVATURE_REACH`` and interpolated); the obstacle counts when its box reaches
into the band the agent's own box sweeps along that arc, its centre lies ahead of the agent's
front bumper and within ``20 + 6 v`` m. All tensors are batched ``[B, N, ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from av import idm
from av.batch import ScenarioBatch
from av.geometry import wrap_angle
from av.types import AgentType
from closedloop.sim.pairs import SortedItems, Sweep, along, nearby_pairs, sort_items

#: Agents whose whole logged path is shorter (m) replay the log (parked cars stay still).
MIN_PATH_LENGTH = 2.0
#: Straight extension of every path past its last logged point, m.
PATH_EXTENSION = 1000.0
#: Distances (m) over which the mean curvature of each path ahead is tabulated.
CURVATURE_REACH = (5.0, 10.0, 20.0, 40.0)
#: Candidate agents examined at once when the paths are built (bounds the transient memory).
BUILD_CHUNK = 2048


@dataclass(frozen=True)
class IDMParams:
    """The reactive agents' parameter set of the IDM law (:mod:`av.idm`), SI units: standstill gap
    s0 ``min_gap`` m, time headway ``headway`` s, IDM acceleration ``accel`` and comfortable
    deceleration ``decel`` m/s^2, speed-tracking time constant ``speed_tau`` s, hardest IDM
    braking ``max_decel`` m/s^2. Its values differ from the ego planners' on purpose: these model
    the logged human drivers (closer following, a free road that is their logged speed)."""

    min_gap: float = 2.0
    headway: float = 1.0
    accel: float = 1.5
    decel: float = 2.0
    speed_tau: float = 1.0
    max_decel: float = 8.0


@dataclass(frozen=True)
class AgentPaths:
    """The logged paths of the reactive agents, precomputed once per batch (``T`` batch steps).

    Reactive work runs on ``R`` slots per scenario (``R`` the most reactive agents in one
    scenario): ``index`` long ``[B, R]`` names the agent of each slot (the reactive agents first,
    then others, all distinct), ``slot_rows`` long ``[B * R]`` the same as flat agent indices
    ``b * N + index[b, r]``, and ``slot`` bool ``[B, R]`` whether it holds a reactive agent.
    ``reactive`` bool ``[B, N]`` marks the reactive agents by agent index.

    The paths are stored for the ``K`` slots that hold a reactive agent only (no padding):
    ``path_slot`` long ``[K]`` is the flat slot ``b * R + r`` of each, ascending.

    * ``points`` ``[T + 1, K, 3 + C]`` (time-major: agents near their logged place at one step
      read nearby rows): box-centre (x, y, yaw) along the path (invalid steps hold the nearest
      valid pose; the last point is the straight extension), then the mean curvature (1/m) of
      the path ahead of each point over each of the ``C`` distances of ``CURVATURE_REACH``.
    * ``s`` ``[K, T + 1]`` arc length along the path (m), non-decreasing; ``s_by_step``
      ``[T + 1, K]`` the same laid out time-major (one step's values are contiguous).
    * ``speed`` ``[T, K]`` (time-major) logged arc-length speed (m/s) of the step arriving at
      each step (of the step leaving it where the agent just appeared; 0 where it is alone or
      invalid).
    """

    reactive: Tensor
    index: Tensor
    slot_rows: Tensor
    slot: Tensor
    path_slot: Tensor
    points: Tensor
    s: Tensor
    s_by_step: Tensor
    speed: Tensor


def _fill_invalid(x: Tensor, valid: Tensor) -> Tensor:
    """Hold the last valid value of ``x`` ``[K, T, ...]`` over invalid steps (the first valid
    value before it); ``valid`` ``[K, T]``."""
    T = valid.shape[-1]
    steps = torch.arange(T, device=x.device).expand_as(valid)
    last = torch.where(valid, steps, torch.full_like(steps, -1)).cummax(-1).values
    first = torch.where(valid, steps, torch.full_like(steps, T)).amin(-1, keepdim=True).clamp_max(T - 1)
    idx = torch.where(last < 0, first.expand_as(last), last)
    idx = idx.reshape(*idx.shape, *([1] * (x.dim() - idx.dim()))).expand_as(x)
    return x.gather(1, idx)


def _segments(knots: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Where each query falls on piecewise-linear paths: ``knots`` ``[K, P]`` non-decreasing,
    ``query`` ``[K, Q]`` -> flat index ``[K * Q]`` of each segment's first point (into
    ``[K * P]``) and the fraction ``[K * Q, 1]`` along it (clamped into [0, 1])."""
    K, P = knots.shape
    query = query.contiguous()
    i = (torch.searchsorted(knots, query, right=True) - 1).clamp(0, P - 2)
    flat = (i + torch.arange(K, device=knots.device)[:, None] * P).reshape(-1)
    s0, s1 = knots.reshape(-1).take(flat), knots.reshape(-1).take(flat + 1)
    return flat, ((query.reshape(-1) - s0) / (s1 - s0).clamp_min(1e-6)).clamp(0.0, 1.0)[:, None]


def _curvature_ahead(s: Tensor, yaw: Tensor) -> Tensor:
    """Mean curvature ``[K, P, C]`` (1/m) of paths ahead of each of their points over each
    distance of ``CURVATURE_REACH``: the heading change over the distance, divided by it; ``s``
    ``[K, P]`` arc lengths (m, non-decreasing), ``yaw`` ``[K, P]`` headings (rad)."""
    K, P = s.shape
    reach = torch.tensor(CURVATURE_REACH, dtype=yaw.dtype, device=yaw.device)
    C = len(CURVATURE_REACH)
    flat, frac = _segments(s, (s[..., None] + reach).reshape(K, P * C))
    flat_yaw = yaw.reshape(K * P)
    turn = wrap_angle(torch.cat([flat_yaw[1:] - flat_yaw[:-1], flat_yaw.new_zeros(1)]))  # each segment's, once
    yaw_ahead = wrap_angle(flat_yaw.take(flat) + frac[:, 0] * turn.take(flat)).reshape(K, P, C)
    return wrap_angle(yaw_ahead - yaw[..., None]) / reach


def build_paths(batch: ScenarioBatch) -> AgentPaths:
    """The logged paths of the reactive agents of ``batch`` (see :class:`AgentPaths`).

    Only vehicles and cyclists are examined, and only the reactive ones get a path, so the work
    and memory follow them, not the padded agent slots."""
    B, N, T = batch.agent_valid.shape
    types = batch.agent_types
    moving_kind = (types == int(AgentType.VEHICLE)) | (types == int(AgentType.CYCLIST))
    candidate = moving_kind.reshape(-1).nonzero().squeeze(1)  # flat b * N + n, ascending
    states = batch.agents.reshape(B * N, T, batch.agents.shape[-1])  # explicit width: N may be 0
    all_valid = batch.agent_valid.reshape(B * N, T)
    # In chunks of candidates, keeping the reactive ones only: the transient memory stays small.
    kept: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for chunk in candidate.split(BUILD_CHUNK):
        valid = all_valid.index_select(0, chunk)
        pose = _fill_invalid(states.index_select(0, chunk)[..., :3], valid)
        seg = (pose[:, 1:, :2] - pose[:, :-1, :2]).norm(dim=-1)
        keep = (seg.sum(-1) >= MIN_PATH_LENGTH).nonzero().squeeze(1)
        kept.append((chunk.take(keep), pose.index_select(0, keep), seg.index_select(0, keep),
                     valid.index_select(0, keep)))
    if kept:
        agent_ids, pose, seg, valid = (torch.cat(x) for x in zip(*kept))
    else:
        agent_ids = candidate
        pose, seg = batch.agents.new_zeros(0, T, 3), batch.agents.new_zeros(0, T - 1)
        valid = batch.agent_valid.new_zeros(0, T)
    reactive = torch.zeros(B * N, dtype=torch.bool, device=types.device)
    reactive[agent_ids] = True
    reactive = reactive.reshape(B, N)
    order = torch.sort((~reactive).to(torch.uint8), dim=1, stable=True).indices
    R = int(reactive.sum(1).max()) if reactive.numel() else 0
    index = order[:, :R].contiguous()
    slot = reactive.gather(1, index)
    path_slot = slot.reshape(-1).nonzero().squeeze(1)
    slot_rows = (index + torch.arange(B, device=index.device)[:, None] * N).reshape(-1)
    agent = slot_rows[path_slot]
    pick = torch.searchsorted(agent_ids, agent)  # each path's row among the reactive agents
    pose, seg, valid = pose[pick], seg[pick], valid[pick]

    s = torch.cat([torch.zeros_like(seg[:, :1]), seg.cumsum(-1)], -1)
    yaw_end = pose[:, -1, 2]
    ext = torch.stack([pose[:, -1, 0] + PATH_EXTENSION * torch.cos(yaw_end),
                       pose[:, -1, 1] + PATH_EXTENSION * torch.sin(yaw_end), yaw_end], -1)
    # Arc-length speed of the step that arrives at t (of the step leaving t where the agent
    # only just appeared), so that integrating it reproduces the logged positions exactly.
    both = valid[:, 1:] & valid[:, :-1]
    step_speed = seg / batch.dt * both
    none = torch.zeros_like(both[:, :1])
    arrive = torch.cat([torch.zeros_like(step_speed[:, :1]), step_speed], -1)
    leave = torch.cat([step_speed, torch.zeros_like(step_speed[:, :1])], -1)
    speed = torch.where(torch.cat([none, both], -1), arrive, leave * torch.cat([both, none], -1))
    pose = torch.cat([pose, ext[:, None]], 1)
    s = torch.cat([s, s[:, -1:] + PATH_EXTENSION], 1).contiguous()
    # Written time-major in place, the curvature tables chunk by chunk (no full-size transient).
    K, P = s.shape
    points = pose.new_empty(P, K, 3 + len(CURVATURE_REACH))
    points[..., :3] = pose.transpose(0, 1)
    for lo, (s_part, yaw_part) in zip(range(0, K, BUILD_CHUNK), zip(s.split(BUILD_CHUNK), pose[..., 2].split(BUILD_CHUNK))):
        points[:, lo:lo + s_part.shape[0], 3:] = _curvature_ahead(s_part, yaw_part).transpose(0, 1)
    return AgentPaths(reactive=reactive, index=index, slot_rows=slot_rows, slot=slot, path_slot=path_slot,
                      points=points, s=s,
                      s_by_step=s.t().contiguous(), speed=speed.t().contiguous())


def _at_path_step(table: Tensor, steps: Tensor) -> Tensor:
    """``table[steps[k], k]`` ``[K]`` of a time-major per-path table ``[S, K]``, ``steps`` long
    ``[K]`` clamped into ``[0, S)``: at one step the reads are nearly contiguous."""
    S, K = table.shape
    if S == 0:
        return table.new_zeros(K)
    return table.reshape(-1).take(steps.clamp(0, S - 1) * K + torch.arange(K, device=table.device))


def take_rows(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` for ``table`` ``[R, C]`` and ``idx`` long ``[K]`` (``index_select``: the
    fastest row lookup on CPU, ahead of ``gather`` and advanced indexing)."""
    return table.index_select(0, idx)


def log_states(batch: ScenarioBatch, valid_by_step: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Logged agent states ``[B, N, 5]`` (zero where invalid) and validity ``[B, N]`` at step
    ``t`` ``[B]`` (long); ``valid_by_step`` bool ``[B, T, N]`` is ``batch.agent_valid`` laid out
    time-major, so that one step's validity is one contiguous row per scenario. Only the valid
    agents' states are read.

    Steps past the batch's last step are invalid.
    """
    B, N, T = batch.agent_valid.shape
    row = torch.arange(B, device=t.device) * T + t.clamp(0, T - 1)
    valid = valid_by_step.reshape(B * T, N).index_select(0, row) & (t < T)[:, None]
    rows = valid.reshape(-1).nonzero().squeeze(1)  # flat b * N + n; only these are read
    steps = rows * T + t.clamp(0, T - 1).take(rows.div(N, rounding_mode="floor"))
    states = batch.agents.new_zeros(B * N, 5)
    states.index_copy_(0, rows, take_rows(batch.agents.reshape(B * N * T, 5), steps))
    return states.reshape(B, N, 5), valid


def _to_slots(paths: AgentPaths, values: Tensor) -> Tensor:
    """Per-path ``values`` ``[K, ...]`` laid out per slot ``[B, R, ...]`` (0 in the slots
    without a reactive agent)."""
    B, R = paths.slot.shape
    out = values.new_zeros(B * R, *values.shape[1:])
    out.index_copy_(0, paths.path_slot, values)
    return out.reshape(B, R, *values.shape[1:])


def _path_steps(paths: AgentPaths, t: Tensor) -> Tensor:
    """Step ``t`` ``[B]`` of each path's scenario, long ``[K]``."""
    return t[paths.path_slot.div(paths.slot.shape[1], rounding_mode="floor")]


def path_length_at(paths: AgentPaths, t: Tensor) -> Tensor:
    """Logged arc length ``[B, R]`` of each slot's agent at step ``t`` ``[B]`` (0 in slots
    without a reactive agent)."""
    return _to_slots(paths, _at_path_step(paths.s_by_step, _path_steps(paths, t)))


def logged_speed(paths: AgentPaths, t: Tensor) -> Tensor:
    """Logged arc-length speed ``[B, R]`` (m/s) of each slot's agent at step ``t`` ``[B]`` (0 past
    the end and in slots without a reactive agent)."""
    steps = _path_steps(paths, t)
    return _to_slots(paths, _at_path_step(paths.speed, steps) * (steps < paths.speed.shape[0]))


def sample_path(paths: AgentPaths, s: Tensor) -> Tensor:
    """``[B, R, Q, 3 + C]`` (x, y, yaw, curvatures ahead) on each slot's path at arc lengths
    ``s`` ``[B, R, Q]``, interpolated linearly between the logged points (0 in slots without a
    reactive agent)."""
    B, R, Q = s.shape
    P, K, F = paths.points.shape
    if K == 0 or Q == 0:
        return s.new_zeros(B, R, Q, F)
    flat, frac = _segments(paths.s, s.reshape(B * R, Q)[paths.path_slot])  # flat k * P + i
    path = flat.div(P, rounding_mode="floor")
    row = (flat - path * P) * K + path  # point i of path k in the time-major table
    table = paths.points.reshape(-1, F)
    p0, p1 = take_rows(table, row), take_rows(table, row + K)
    out = p0 + frac * (p1 - p0)
    yaw = wrap_angle(p0[:, 2:3] + frac * wrap_angle(p1[:, 2:3] - p0[:, 2:3]))  # the shorter way round
    return _to_slots(paths, torch.cat([out[:, :2], yaw, out[:, 3:]], 1).reshape(K, Q, F))


def curvature_at(curvature: Tensor, distance: Tensor) -> Tensor:
    """Mean path curvature ``[K]`` over the next ``distance`` ``[K]`` metres, interpolated in the
    tabulated ``curvature`` ``[K, C]`` (over ``CURVATURE_REACH``; constant outside it)."""
    out = curvature[:, 0]
    for c in range(1, len(CURVATURE_REACH)):
        lo, hi = CURVATURE_REACH[c - 1], CURVATURE_REACH[c]
        out = out + (curvature[:, c] - curvature[:, c - 1]) * ((distance - lo) / (hi - lo)).clamp(0.0, 1.0)
    return out


def leader_pressure(
    agents: Tensor,
    sizes: Tensor,
    speed: Tensor,
    curvature: Tensor,
    active: Tensor,
    bodies: Tensor,
    body_sizes: Tensor,
    body_valid: Tensor,
    params: IDMParams,
    sweep: Sweep,
    sorted_bodies: SortedItems | None = None,
) -> Tensor:
    """IDM interaction ``max_j max(0, (s*_ij / gap_ij)^2 - 1)`` ``[B, N]`` with what is ahead.

    * ``agents`` ``[B, N, 3]`` centre (x, y, yaw), ``sizes`` ``[B, N, 2]``, ``speed`` ``[B, N]``,
      ``curvature`` ``[B, N, C]`` mean curvatures of the path ahead (1/m, over
      ``CURVATURE_REACH``); only ``active`` (bool ``[B, N]``) agents
      are evaluated (the others get 0).
    * ``bodies`` ``[B, M, 5]`` everything that can block (x, y, yaw, vx, vy; box centres),
      ``body_sizes`` ``[B, M, 2]``, ``body_valid`` ``[B, M]``. An agent never blocks itself
      (its own centre is not ahead of its front bumper). ``sweep``: the broad phase's axis and
      the bodies' bounding radii (:func:`~closedloop.sim.pairs.make_sweep` of these bodies);
      ``sorted_bodies``: the valid bodies sorted along it (:func:`~closedloop.sim.pairs.sort_items`;
      sorted here when not given).

    ``s*`` is IDM's desired gap (:func:`av.idm.desired_gap`) ``s0 + max(0, v T + v (v - v_lead) / (2 sqrt(a b)))`` with
    ``v_lead`` the obstacle's velocity along the path; ``gap`` the bumper-to-box
    distance along the path, floored at 0.1 m. Unlike plain IDM the term counts only where the
    gap is below ``s*``: an agent following at its logged distance keeps its logged speed, and
    one closing in on a slower or stopped obstacle brakes ever harder as the gap shrinks.

    Broad phase, listed sparsely so that its cost follows the valid agents, not the padding:
    each active agent against the valid bodies of its scenario whose centres fall, along the
    scenario's sweep axis, within the extent of the region ahead of it
    (:func:`~closedloop.sim.pairs.nearby_pairs`); only pairs inside a box (in the agent's
    frame) that provably contains every blocking pair (ahead within the look-ahead; laterally
    within the arc's bend ``|k| lon^2`` plus the agent's half-width and the body's bounding
    radius) get the exact test
    (:func:`pair_pressure`).
    """
    B, N, _ = agents.shape
    M = bodies.shape[1]
    if M == 0 or N == 0:
        return agents.new_zeros(B, N)
    rows = active.reshape(-1).nonzero().squeeze(1)  # flat b * N + i
    # Per active row: position, heading, and the window (1 cm of slack for rounding).
    hl, look = 0.5 * sizes[..., 0], 20.0 + 6.0 * speed
    mid, half = hl + 0.5 * look, 0.5 * look + 0.01
    reach = 0.5 * sizes[..., 1] + sweep.radius[:, None]
    k_max = curvature.abs().amax(-1)
    lat_bound = torch.where(k_max * reach < 0.5, k_max * (hl + look + reach).square() + reach,
                            torch.full_like(k_max, math.inf)) + 0.01
    yaw = agents[..., 2]
    c, s = torch.cos(yaw), torch.sin(yaw)
    # The window along each scenario's sweep axis: the extent of the rectangle (in the agent's
    # frame) lon in mid +- half, |lat| < lat_bound, i.e. centre + mid (c, s) and half-extent
    # half |heading . axis| + lat_bound |normal . axis| (the axis is x or y: one term each).
    on_y = sweep.axis[:, None, 1] > 0
    centre = torch.where(on_y, agents[..., 1] + mid * s, agents[..., 0] + mid * c)
    c_abs, s_abs = c.abs(), s.abs()
    across = torch.where(on_y, c_abs, s_abs)
    extent = half * torch.where(on_y, s_abs, c_abs) + torch.where(across > 0, lat_bound * across, 0.0)
    # Per pair, the lateral bound takes the body's own bounding radius in place of the bound on
    # the scenario's (the bend term keeps the larger one: still a bound).
    lat_own = lat_bound - sweep.radius[:, None]
    per_row = take_rows(torch.stack([agents[..., 0], agents[..., 1], c, s, mid, half, lat_own, centre, extent],
                                    -1).reshape(B * N, 9), rows)
    if sorted_bodies is None:
        sorted_bodies = sort_items(body_valid, along(bodies[..., :2], sweep.axis))
    k, col = nearby_pairs(rows.div(N, rounding_mode="floor"), per_row[:, 7], per_row[:, 8], sorted_bodies)
    ax, ay, c, s, mid, half, lat_own = take_rows(per_row[:, :7], k).unbind(1)
    xy = take_rows(bodies.reshape(B * M, -1)[:, :2], col)
    dx, dy = xy[:, 0] - ax, xy[:, 1] - ay
    near = (((dx * c + dy * s - mid).abs() < half)
            & ((dy * c - dx * s).abs() < lat_own + sweep.body_radius.reshape(-1).take(col))).nonzero().squeeze(1)
    return pair_pressure(agents, sizes, speed, curvature, bodies, body_sizes, body_valid,
                         rows.take(k.take(near)), col.take(near), params)


def pair_pressure(
    agents: Tensor,
    sizes: Tensor,
    speed: Tensor,
    curvature: Tensor,
    bodies: Tensor,
    body_sizes: Tensor,
    body_valid: Tensor,
    row: Tensor,
    col: Tensor,
    params: IDMParams,
) -> Tensor:
    """The exact test of :func:`leader_pressure` on the listed pairs only: IDM interaction
    ``[B, N]``, the largest over each agent's pairs (0 for agents in none).

    Tensors as in :func:`leader_pressure`; ``row`` long ``[P]`` flat agent indices ``b * N + i``
    and ``col`` long ``[P]`` flat body indices ``b * M + j`` of the same scenario. Pairs that do
    not block contribute nothing, so any superset of the blocking pairs gives the same result.
    """
    B, N, _ = agents.shape
    M = bodies.shape[1]
    out = torch.zeros(B * N, dtype=agents.dtype, device=agents.device)
    if row.numel() == 0:
        return out.reshape(B, N)
    c, s = torch.cos(agents[..., 2]), torch.sin(agents[..., 2])
    ax, ay = agents[..., 0], agents[..., 1]
    hl, hw = 0.5 * sizes[..., 0], 0.5 * sizes[..., 1]
    look = 20.0 + 6.0 * speed
    C = curvature.shape[-1]
    agent = take_rows(torch.cat([torch.stack([ax, ay, c, s, hl, hw, speed, look], -1), curvature], -1)
                      .reshape(B * N, 8 + C), row)
    bx, by, yaw, vx, vy = take_rows(bodies.reshape(B * M, 5), col).unbind(1)
    hlj, hwj = (0.5 * take_rows(body_sizes.reshape(B * M, 2), col)).unbind(1)
    cj, sj, valid = torch.cos(yaw), torch.sin(yaw), body_valid.reshape(-1).take(col)
    x, y, c, s, hl, hw, v, look = agent[:, :8].unbind(1)
    rx, ry = bx - x, by - y
    lon = rx * c + ry * s
    lat = ry * c - rx * s
    k = curvature_at(agent[:, 8:], lon)  # the path's mean curvature up to the obstacle
    # Signed lateral distance to the circle of curvature k tangent to the heading at the agent:
    # (2 lat - k r^2) / (1 + sqrt(1 + k (k r^2 - 2 lat))), stable as k -> 0.
    q = k * (rx * rx + ry * ry) - 2.0 * lat
    rho = (1.0 + k * q).clamp_min(1e-6).sqrt()  # distance to the circle's centre, times |k|
    off = q / (1.0 + rho)
    # The path's direction where the obstacle projects onto the arc, relative to the agent's
    # heading (cos, sin); obstacle extents and speed are measured against it.
    ct, st = (1.0 - k * lat) / rho, k * lon / rho
    cos_h, sin_h = cj * c + sj * s, sj * c - cj * s  # obstacle heading relative to the agent
    cos_d = (cos_h * ct + sin_h * st).abs()  # ... relative to the path there
    sin_d = (sin_h * ct - cos_h * st).abs()
    ahead = lon - hl
    # On the band the agent's box sweeps along the arc, ahead of its front bumper, within the
    # look-ahead, and on the near part of the arc (its first 60 degrees: ``k * lat < 1/2``), so
    # the far side of a tight circle never counts.
    blocking = (off.abs() <= hw + hlj * sin_d + hwj * cos_d) & (ahead > 0) & (ahead < look) & (k * lat < 0.5)
    blocking &= valid
    gap = (ahead - hlj * cos_d - hwj * sin_d).clamp_min(0.1)
    v_lead = ct * (vx * c + vy * s) + st * (vy * c - vx * s)
    excess = (idm.interaction(v, v_lead, gap, params) - 1.0).clamp_min(0.0) * blocking
    return out.scatter_reduce(0, row, excess, "amax").reshape(B, N)


def idm_speed_update(
    speed: Tensor, log_speed_now: Tensor, log_speed_next: Tensor, pressure: Tensor, params: IDMParams, dt: float
) -> tuple[Tensor, Tensor]:
    """New speed ``[B, N]`` and distance travelled ``[B, N]`` over one step (``speed * dt`` with
    the new speed, the semi-implicit Euler step the logged speeds are defined with).

    Free speed: the logged speed profile (``log_speed_next - log_speed_now``, plus the gap
    ``log_speed_now - speed`` closed with time constant ``speed_tau`` but never faster than IDM's
    ``accel``); the logged part is not clipped: the log is physical by definition. Unimpeded and
    on its logged speed, an agent therefore moves exactly as logged; once delayed it returns to
    the logged *speed* (not to the logged position). IDM's interaction ``accel * pressure``
    brakes below that, by at most ``max_decel``; no reversing.
    """
    catch_up = ((log_speed_now - speed) / params.speed_tau).clamp_max(params.accel)
    free = speed + (log_speed_next - log_speed_now) + catch_up * dt
    floor = torch.minimum(free, speed - params.max_decel * dt)
    v_end = torch.maximum(free - params.accel * pressure * dt, floor).clamp_min(0.0)
    return v_end, v_end * dt
