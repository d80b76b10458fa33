"""Shared pieces of the rule planners (IDM, PDM-Closed): the route as a path, projections onto
it, the lead-agent selection, the batched IDM rollout along the path (the law: :mod:`av.idm`)
and the proposals driven as the simulator would drive them.

Everything is in the ego frame at plan time (x forward, y left), SI units, and batched: ``B``
planning problems, ``K`` proposals per problem, ``N`` agents, ``H`` trajectory steps, ``S`` path
points. No Python loop runs over scenarios or agents; the only loop is over time steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from av import idm
from av.geometry import point_segment_distance, wrap_angle
from av.observation import Observation
from av.vehicle import VehicleLimits, VehicleState, bicycle_step, steer_for
from closedloop.sim.vehicle import GainTable, make_plan, track

#: Speed used where the lane speed limit is unknown (NaN): 50 km/h, m/s.
DEFAULT_SPEED_LIMIT = 13.9
#: Half of a typical urban lane width, m.
LANE_HALF_WIDTH = 1.75


@dataclass(frozen=True)
class IDMParams:
    """The ego planners' parameter set of the IDM law (:mod:`av.idm`; SI units) and the path-speed
    limits used with it. Its values differ from the reactive agents' on purpose: the planned ego
    keeps a longer time headway than the logged drivers those model.

    ``accel``: maximum acceleration a (m/s^2); ``decel``: comfortable deceleration b (m/s^2);
    ``max_decel``: hard braking limit (m/s^2); ``min_gap``: standstill gap s0 (m);
    ``headway``: time headway T (s); ``exponent``: free-road exponent delta;
    ``max_lat_accel``: lateral acceleration allowed in curves (m/s^2), which caps the speed on
    the route ahead (braking at ``decel`` towards each curve); ``max_jerk``: if set, the
    acceleration changes by at most this much per second (m/s^3), starting from the ego's
    current acceleration.
    """

    accel: float = 1.0
    decel: float = 3.0
    max_decel: float = 6.0
    min_gap: float = 1.0
    headway: float = 1.5
    exponent: float = 4.0
    max_lat_accel: float = 2.0
    max_jerk: float | None = 2.0


@dataclass(frozen=True)
class RoutePath:
    """The route centreline as a dense polyline, extended straight at both ends.

    * ``xy`` ``[B, S, 2]`` points (m) and ``heading`` ``[B, S]`` (rad), ego frame.
    * ``s`` ``[B, S]`` arc length (m), increasing; the ego's own arc length is ``ego_s``.
    * ``curvature`` ``[B, S]`` signed curvature (1/m, left positive), smoothed over about +-2 m.
    * ``speed_cap`` ``[B, S]`` the highest speed (m/s) from which every curve ahead can be taken
      at ``max_lat_accel`` while braking at ``decel``.
    * ``end_s`` ``[B]``: arc length (m) where the route ends and the ego must stop (``inf`` where
      it goes on beyond what is observed).
    * ``ego_s``, ``ego_d`` ``[B]``: the ego rear axle projected onto the path (arc length, signed
      lateral offset, left positive); ``ego_slope`` ``[B]``: tan of the ego heading relative to
      the path there.
    """

    xy: Tensor
    heading: Tensor
    s: Tensor
    curvature: Tensor
    speed_cap: Tensor
    end_s: Tensor
    ego_s: Tensor
    ego_d: Tensor
    ego_slope: Tensor

    def sample(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Point ``[B, ..., 2]`` and heading ``[B, ...]`` of the path at arc lengths ``s`` ``[B, ...]``.

        Beyond either end the first/last segment is extended linearly.
        """
        B = s.shape[0]
        flat = s.reshape(B, -1).contiguous()
        i = torch.searchsorted(self.s.contiguous(), flat).clamp(1, self.s.shape[1] - 1) - 1
        s0, s1 = self.s.gather(1, i), self.s.gather(1, i + 1)
        t = (flat - s0) / (s1 - s0).clamp_min(1e-6)
        p0 = self.xy.gather(1, i[..., None].expand(-1, -1, 2))
        p1 = self.xy.gather(1, (i + 1)[..., None].expand(-1, -1, 2))
        h0, h1 = self.heading.gather(1, i), self.heading.gather(1, i + 1)
        xy = p0 + t[..., None] * (p1 - p0)
        h = wrap_angle(h0 + t.clamp(0.0, 1.0) * wrap_angle(h1 - h0))
        return xy.reshape(*s.shape, 2), h.reshape(s.shape)

    def at(self, values: Tensor, s: Tensor) -> Tensor:
        """Per-point ``values`` ``[B, S]`` (e.g. ``speed_cap``) linearly interpolated at arc
        lengths ``s`` ``[B, ...]`` (held constant beyond the ends)."""
        B = s.shape[0]
        flat = s.reshape(B, -1).contiguous()
        i = torch.searchsorted(self.s.contiguous(), flat).clamp(1, self.s.shape[1] - 1) - 1
        s0, s1 = self.s.gather(1, i), self.s.gather(1, i + 1)
        t = ((flat - s0) / (s1 - s0).clamp_min(1e-6)).clamp(0.0, 1.0)
        c0, c1 = values.gather(1, i), values.gather(1, i + 1)
        return (c0 + t * (c1 - c0)).reshape(s.shape)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project ``points`` ``[B, M, 2]`` onto the path: arc length ``[B, M]`` (m), signed
        lateral offset ``[B, M]`` (m, left positive) and path heading there ``[B, M]`` (rad)."""
        # Broad phase: the nearest path vertex ([B, M, S] squared distances, cheap); narrow
        # phase: the two segments that meet there (the nearest segment touches the nearest
        # vertex unless the path folds back within a few metres).
        S = self.xy.shape[1]
        near = torch.cdist(points, self.xy).argmin(-1)  # [B, M]
        cand = torch.stack([near - 1, near], -1).clamp(0, S - 2)  # [B, M, 2] segment indices
        flat = cand.reshape(cand.shape[0], -1)
        a = self.xy.gather(1, flat[..., None].expand(-1, -1, 2)).reshape(*cand.shape, 2)
        b = self.xy.gather(1, (flat + 1)[..., None].expand(-1, -1, 2)).reshape(*cand.shape, 2)
        dist, t = point_segment_distance(points[:, :, None], a, b)  # [B, M, 2]
        pick = dist.argmin(-1, keepdim=True)
        t = t.gather(-1, pick).squeeze(-1)
        j = cand.gather(-1, pick).squeeze(-1)
        seg = self.s.diff(dim=1)  # [B, S-1]
        s = self.s[:, :-1].gather(1, j) + t * seg.gather(1, j)
        pa = self.xy[:, :-1].gather(1, j[..., None].expand(-1, -1, 2))
        pb = self.xy[:, 1:].gather(1, j[..., None].expand(-1, -1, 2))
        u = pb - pa
        rel = points - pa
        cross = u[..., 0] * rel[..., 1] - u[..., 1] * rel[..., 0]
        d = cross / u.norm(dim=-1).clamp_min(1e-6)
        h0, h1 = self.heading[:, :-1].gather(1, j), self.heading[:, 1:].gather(1, j)
        return s, d, wrap_angle(h0 + t * wrap_angle(h1 - h0))


def build_path(obs: Observation, params: IDMParams, back: float = 30.0, ahead: float = 200.0) -> RoutePath:
    """The :class:`RoutePath` of ``obs.route``; where a problem has no valid route point the path
    is the ego's x axis. The valid route points are taken to be a prefix of ``route`` (``[B, R, 3]``).

    A route that steps backwards along its own heading joins the lanes of a lane change end to
    end (the logged ego drove part of one lane, then the next); the path then follows the later
    lane from beside the ego on (see :func:`_after_lane_change`).

    ``back`` (m) of straight path is added before the first point (so that agents behind the ego
    project cleanly) and ``ahead`` (m) after the last one (so that any 8 s plan fits).
    """
    route, valid = _after_lane_change(obs.route, obs.route_valid)
    B, R, _ = route.shape
    spacing = max(float(obs.route_spacing), 0.1)
    dev, dt_ = route.device, route.dtype
    n_ext = int(math.ceil(ahead / spacing))
    idx = torch.arange(R + n_ext, device=dev)
    has = valid.any(-1)
    # A second backward step (two lane changes ahead) ends the path; it continues straight.
    last = torch.minimum((torch.arange(R, device=dev) * valid).amax(-1), _first_backward_step(route, valid))
    last = torch.where(has, last, 0)  # [B]
    pad = torch.zeros(B, n_ext, 3, device=dev, dtype=dt_)
    pts = torch.cat([route, pad], dim=1)
    end = route.gather(1, last[:, None, None].expand(-1, 1, 3)).squeeze(1)  # [B, 3]
    end = torch.where(has[:, None], end, torch.zeros_like(end))
    k = (idx[None] - last[:, None]).clamp_min(0).to(dt_) * spacing  # [B, S]
    ext = torch.stack(
        [end[:, None, 0] + k * torch.cos(end[:, None, 2]), end[:, None, 1] + k * torch.sin(end[:, None, 2]),
         end[:, None, 2].expand_as(k)],
        dim=-1,
    )
    keep = (idx[None] <= last[:, None]) & has[:, None]
    pts = torch.where(keep[..., None], pts, ext)
    first = pts[:, 0]
    start = torch.stack(
        [first[:, 0] - back * torch.cos(first[:, 2]), first[:, 1] - back * torch.sin(first[:, 2]), first[:, 2]],
        dim=-1,
    )
    pts = torch.cat([start[:, None], pts], dim=1)
    xy, heading = pts[..., :2], pts[..., 2]
    seg = (xy[:, 1:] - xy[:, :-1]).norm(dim=-1)
    s = torch.cat([torch.zeros(B, 1, device=dev, dtype=dt_), seg.cumsum(1)], dim=1)
    # Strictly increasing arc length even where two route points coincide.
    s = s + 1e-4 * torch.arange(s.shape[1], device=dev, dtype=dt_)
    kappa = _curvature(s, heading, spacing)
    cap = _speed_cap(s, kappa, spacing, params)
    # Where the route ends in view (not merely past the observed points), the ego stops there.
    ends = has & ((last < R - 1) | ~valid[:, -1])
    end_s = torch.where(ends, s.gather(1, (last + 1)[:, None])[:, 0], torch.full_like(s[:, 0], math.inf))
    path = RoutePath(xy, heading, s, kappa, cap, end_s, s[:, 0], s[:, 0], s[:, 0])
    ego_s, ego_d, ego_h = path.project(torch.zeros(B, 1, 2, device=dev, dtype=dt_))
    slope = torch.tan(wrap_angle(-ego_h[:, 0]).clamp(-0.5, 0.5))
    return RoutePath(xy, heading, s, kappa, cap, end_s, ego_s[:, 0], ego_d[:, 0], slope)


def _first_backward_step(route: Tensor, valid: Tensor) -> Tensor:
    """Index ``[B]`` of the first route point whose step to the next point goes backwards along
    its heading (``R`` where none does). ``route`` ``[B, R, 3]``, ``valid`` ``[B, R]``."""
    R = route.shape[1]
    if R < 2:
        return torch.full(route.shape[:1], R, dtype=torch.long, device=route.device)
    step = route[:, 1:, :2] - route[:, :-1, :2]
    back = (step[..., 0] * torch.cos(route[:, :-1, 2]) + step[..., 1] * torch.sin(route[:, :-1, 2])) < 0
    back = back & valid[:, 1:] & valid[:, :-1]
    return torch.where(back, torch.arange(R - 1, device=route.device), R).amin(-1)


def _after_lane_change(route: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Where the route jumps backwards (see :func:`build_path`), keep only the points after the
    jump that lie ahead of the ego (x >= 0), moved to the front; elsewhere the route unchanged.
    ``route`` ``[B, R, 3]``, ``valid`` ``[B, R]`` -> the same shapes."""
    R = route.shape[1]
    idx = torch.arange(R, device=route.device)
    jump = _first_backward_step(route, valid)[:, None]  # [B, 1]
    keep = valid & ((jump >= R) | ((idx > jump) & (route[..., 0] >= 0.0)))
    order = torch.argsort(torch.where(keep, idx, idx + R), dim=1)
    return route.gather(1, order[..., None].expand(-1, -1, 3)), keep.gather(1, order)


def _curvature(s: Tensor, heading: Tensor, spacing: float) -> Tensor:
    """Signed curvature ``[B, S]`` (1/m): the heading change over about +-2 m of path."""
    w = max(1, int(round(2.0 / spacing)))
    hp = F.pad(heading[:, None], (w, w), mode="replicate")[:, 0]
    sp = F.pad(s[:, None], (w, w), mode="replicate")[:, 0]
    dh = wrap_angle(hp[:, 2 * w :] - hp[:, : -2 * w])
    return dh / (sp[:, 2 * w :] - sp[:, : -2 * w]).clamp_min(1e-3)


def _speed_cap(s: Tensor, kappa: Tensor, spacing: float, params: IDMParams) -> Tensor:
    """Speed cap ``[B, S]`` from the curvature ``kappa`` ``[B, S]`` of the path ahead (see
    :class:`RoutePath`)."""
    v_curve = torch.sqrt(params.max_lat_accel / kappa.abs().clamp_min(1e-4))  # [B, S]
    # Look ahead far enough to brake from 20 m/s: v^2 / 2b.
    window = max(2, int(math.ceil(20.0**2 / (2 * params.decel) / spacing)))
    big = 1e3
    vc = F.pad(v_curve, (0, window - 1), value=big).unfold(1, window, 1)  # [B, S, W]
    sw = F.pad(s, (0, window - 1), value=float(s.max()) + big).unfold(1, window, 1)
    reach = torch.sqrt(vc**2 + 2.0 * params.decel * (sw - s[..., None]).clamp_min(0.0))
    return reach.amin(-1)


def current_accel(obs: Observation) -> Tensor:
    """The ego's current longitudinal acceleration ``[B]`` (m/s^2) from its last two history
    speeds (0 without history)."""
    speeds = obs.ego_history[..., 3:5].norm(dim=-1)
    if speeds.shape[1] < 2:
        return torch.zeros_like(speeds[:, 0])
    return (speeds[:, -1] - speeds[:, -2]) / obs.dt


def lane_speed_limit(obs: Observation) -> Tensor:
    """Speed limit ``[B]`` (m/s) of the on-route lane nearest to the ego (any lane if none is
    on the route); :data:`DEFAULT_SPEED_LIMIT` where unknown."""
    lanes, valid = obs.lanes, obs.lane_valid  # [B, L, P, 3], [B, L]
    if lanes.shape[1] == 0:
        return torch.full((obs.batch_size,), DEFAULT_SPEED_LIMIT, device=lanes.device)
    a, b = lanes[:, :, :-1, :2], lanes[:, :, 1:, :2]
    if a.shape[2] == 0:
        dist = lanes[:, :, :, :2].norm(dim=-1).amin(-1)
    else:
        dist, _ = point_segment_distance(torch.zeros_like(a), a, b)  # [B, L, P-1]
        dist = dist.amin(-1)
    # On-route lanes win over others by a large margin; invalid lanes never win.
    dist = dist + torch.where(obs.lane_on_route, 0.0, 1e3) + torch.where(valid, 0.0, 1e6)
    nearest = dist.argmin(-1, keepdim=True)
    limit = obs.lane_speed_limit.gather(1, nearest).squeeze(1)
    ok = torch.isfinite(limit) & (limit > 0) & valid.any(-1)
    return torch.where(ok, limit, torch.full_like(limit, DEFAULT_SPEED_LIMIT))


@dataclass(frozen=True)
class AgentsOnPath:
    """Current agents expressed along a :class:`RoutePath` (all ``[B, N]``).

    ``s``, ``d``: arc length and lateral offset of the box centre (m); ``v``: speed along the path
    (m/s, clamped at 0); ``half_lon``, ``half_lat``: half extents of the box along and across
    the path (m); ``valid``: the agent is perceived now. ``vel`` ``[B, N, 2]`` and ``state``
    ``[B, N, 5]`` keep the ego-frame state for constant-velocity prediction.
    """

    s: Tensor
    d: Tensor
    v: Tensor
    half_lon: Tensor
    half_lat: Tensor
    valid: Tensor
    state: Tensor


def agents_on_path(obs: Observation, path: RoutePath) -> AgentsOnPath:
    """Project the agents' current boxes (``obs.agents[:, :, -1]``) onto ``path``."""
    state = obs.agents[:, :, -1]  # [B, N, 5]
    valid = obs.agent_valid[:, :, -1] & (obs.agent_types >= 0)
    s, d, h = path.project(state[..., :2])
    rel = wrap_angle(state[..., 2] - h)
    c, sn = torch.cos(rel).abs(), torch.sin(rel).abs()
    length, width = obs.agent_sizes[..., 0], obs.agent_sizes[..., 1]
    v = (state[..., 3] * torch.cos(h) + state[..., 4] * torch.sin(h)).clamp_min(0.0)
    return AgentsOnPath(
        s=s,
        d=d,
        v=v,
        half_lon=0.5 * (c * length + sn * width),
        half_lat=0.5 * (sn * length + c * width),
        valid=valid,
        state=state,
    )


def lateral_profile(path: RoutePath, s: Tensor, target: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
    """Lateral offset ``d(s)`` (m) and slope ``dd/ds`` of a path that starts at the ego (offset
    ``path.ego_d``, slope ``path.ego_slope``) and blends into ``target`` offset over ``length`` m.

    ``s`` ``[B, K, ...]`` arc lengths; ``target`` ``[B, K]`` (m) and ``length`` ``[B, K]`` (m).
    The blend is a quintic Hermite curve with zero second derivative at both ends, so offset,
    heading and curvature are continuous there: the steering needs no step when a shift starts
    (a cubic's curvature jumps to ``6 |shift| / length^2``, which the tracking controller
    followed with yaw accelerations above nuPlan's comfort bound).
    """
    extra = (1,) * (s.dim() - 2)
    L = length.reshape(*length.shape, *extra)
    d1 = target.reshape(*target.shape, *extra)
    d0 = path.ego_d.reshape(-1, 1, *extra)
    m0 = path.ego_slope.reshape(-1, 1, *extra) * L
    u = ((s - path.ego_s.reshape(-1, 1, *extra)) / L).clamp(0.0, 1.0)
    u2, u3 = u * u, u * u * u
    u4, u5 = u3 * u, u3 * u2
    rise = 10 * u3 - 15 * u4 + 6 * u5  # 0 -> 1 with zero slope and curvature at both ends
    d = d0 + (u - 6 * u3 + 8 * u4 - 3 * u5) * m0 + rise * (d1 - d0)
    dd = ((1 - 18 * u2 + 32 * u3 - 15 * u4) * m0 + 30 * (u2 - 2 * u3 + u4) * (d1 - d0)) / L
    inside = (u > 0) & (u < 1)
    return d, torch.where(inside, dd, torch.zeros_like(dd))


#: Blend length per metre of lateral shift (m/m): a shift of D m takes at least this many times
#: D m of travel, so the heading never turns more than about 1.9 / this (0.3 rad) from the path.
BLEND_PER_SHIFT = 6.0
#: Yaw acceleration (rad/s^2) a lateral blend may need at its ends at the speed now (the
#: quintic's curvature changes at most at ``60 D / L^3`` per m, so ``60 v^2 D / L^3``).
BLEND_YAW_ACCEL = 0.4


def blend_length(speed: Tensor, shift: Tensor | float = 0.0) -> Tensor:
    """Distance (m) over which to shift laterally by ``shift`` m at ``speed`` (m/s): 3 s of
    travel, >= 8 m, >= ``BLEND_PER_SHIFT`` x ``|shift|`` and long enough that the yaw
    acceleration stays under ``BLEND_YAW_ACCEL`` (broadcast shapes of the inputs).

    Without the last two bounds a car a lane width (2.7 m) off the route at 5 m/s swung across
    in 15 m: 1.4 rad/s^2 of yaw acceleration, which nuPlan's longitudinal acceleration takes in
    as 1.461 m x yaw acceleration (comfort bound 2.40 m/s^2)."""
    shift = torch.as_tensor(shift, dtype=speed.dtype, device=speed.device).abs()
    yaw = (60.0 * speed.square() * shift / BLEND_YAW_ACCEL).pow(1.0 / 3.0)
    return torch.maximum(torch.maximum((3.0 * speed).clamp_min(8.0), BLEND_PER_SHIFT * shift), yaw)


def path_poses(path: RoutePath, s: Tensor, d: Tensor, slope: Tensor) -> Tensor:
    """Poses ``[B, K, H, 3]`` (x, y, yaw) at arc lengths ``s`` with lateral offsets ``d`` and
    slopes ``slope`` (all ``[B, K, H]``)."""
    xy, h = path.sample(s)
    normal = torch.stack([-torch.sin(h), torch.cos(h)], dim=-1)
    return torch.cat([xy + d[..., None] * normal, wrap_angle(h + torch.atan(slope))[..., None]], dim=-1)


def travelled(speed: Tensor, v: Tensor, dt: float) -> Tensor:
    """Distance ``[B, K, H]`` (m) driven by times ``dt .. H dt`` at speeds ``v`` ``[B, K, H]``
    (m/s, at those times) from ``speed`` ``[B]`` now (trapezoidal)."""
    prev = torch.cat([speed[:, None, None].expand(*v.shape[:2], 1), v[..., :-1]], -1)
    return (0.5 * (prev + v) * dt).cumsum(-1)


def retime(poses: Tensor, distance: Tensor) -> Tensor:
    """Poses ``[B, K, H, 3]`` (ego frame, the ego at the origin) moved along their own polyline so
    that the ``k``-th lies ``distance[..., k]`` m (``[B, K, H]``, non-decreasing) from the ego.

    The poses of :func:`path_poses` are spaced by the path's smoothed curvature; where the route
    polyline kinks (lane connectors) or the lateral offset changes fast their spacing, and with it
    the speed the tracking controller follows, swung by 2-3 m/s^2 around the IDM speed (the
    controller then drove at its 3.5 m/s^2 limit). Re-spacing them makes the plan's speed the IDM
    speed. Beyond the last pose the path continues straight along its heading.
    """
    B, K, H, _ = poses.shape
    pts = torch.cat([torch.zeros_like(poses[:, :, :1]), poses], 2)  # [B, K, H+1, 3]
    seg = (pts[:, :, 1:, :2] - pts[:, :, :-1, :2]).norm(dim=-1)
    length = torch.cat([torch.zeros_like(seg[..., :1]), seg.cumsum(-1)], -1)  # [B, K, H+1]
    flat_len, q = length.reshape(B * K, H + 1).contiguous(), distance.reshape(B * K, H).contiguous()
    i = (torch.searchsorted(flat_len, q).clamp(1, H) - 1)  # segment index [B K, H]
    flat = pts.reshape(B * K, H + 1, 3)
    p0 = flat.gather(1, i[..., None].expand(-1, -1, 3))
    p1 = flat.gather(1, (i + 1)[..., None].expand(-1, -1, 3))
    l0, l1 = flat_len.gather(1, i), flat_len.gather(1, i + 1)
    t = ((q - l0) / (l1 - l0).clamp_min(1e-6)).clamp(0.0, 1.0)
    xy = p0[..., :2] + t[..., None] * (p1[..., :2] - p0[..., :2])
    yaw = wrap_angle(p0[..., 2] + t * wrap_angle(p1[..., 2] - p0[..., 2]))
    beyond = (q - flat_len[:, -1:]).clamp_min(0.0)  # past the last pose: straight on
    last = flat[:, -1:]
    xy = torch.where((beyond > 0)[..., None], last[..., :2] + beyond[..., None] * torch.stack(
        [torch.cos(last[..., 2]), torch.sin(last[..., 2])], -1), xy)
    yaw = torch.where(beyond > 0, last[..., 2].expand_as(yaw), yaw)
    return torch.cat([xy, yaw[..., None]], -1).reshape(B, K, H, 3)


def idm_rollout(
    path: RoutePath,
    agents: AgentsOnPath,
    speed: Tensor,
    accel: Tensor,
    target_speed: Tensor,
    offset: Tensor,
    corridor: Tensor,
    ego_front: Tensor,
    ego_half_width: Tensor,
    params: IDMParams,
    steps: int,
    dt: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integrate IDM along the path for ``K`` proposals per problem.

    ``speed`` ``[B]`` current ego speed (m/s); ``accel`` ``[B]`` its current acceleration
    (m/s^2, the start of the jerk limit ``params.max_jerk``); ``target_speed`` ``[B, K]``
    desired speed (m/s), further capped by the path's curve speed; ``offset`` ``[B, K]`` target lateral offset (m);
    ``corridor`` ``[B]`` half width (m) of the ego's corridor: an agent is a lead when its box
    reaches into ``|d - d_path(s_agent)| < corridor`` and its centre is ahead of the ego's rear
    axle; ``ego_front`` ``[B]`` distance from the rear axle to the front bumper (m). An agent
    alongside (its rear behind the ego's front bumper) is a lead only where its box reaches into
    the ego's own width, ``ego_half_width`` ``[B]`` (m), around the ego's offset now: braking
    cannot open a gap to a car beside the ego, and counting it (at the floored gap of 0.1 m) made
    the ego brake at ``max_decel`` while it drove back to the route past a parked car.
    Leads move at constant speed along the path; the end of the route (``path.end_s``) is a
    stopped lead. ``steps`` x ``dt`` s are integrated.

    Returns arc length ``s`` ``[B, K, H]`` (m), speed ``v`` ``[B, K, H]`` (m/s), lateral offset
    ``d`` and slope ``dd/ds`` ``[B, K, H]`` at times ``dt .. H dt``.
    """
    B, K = target_speed.shape
    blend = blend_length(speed[:, None], offset - path.ego_d[:, None])  # [B, K]
    d_at_agent, _ = lateral_profile(path, agents.s[:, None].expand(B, K, -1), offset, blend)  # [B, K, N]
    lateral_gap = (agents.d[:, None] - d_at_agent).abs() - agents.half_lat[:, None]
    ahead = agents.s[:, None] - agents.half_lon[:, None]  # rear of the lead, at t = 0 [B, 1, N]
    ahead_of_ego = agents.s[:, None] > path.ego_s[:, None, None]
    beside = ahead <= (path.ego_s + ego_front)[:, None, None]
    in_ego_width = ((agents.d - path.ego_d[:, None]).abs() - agents.half_lat < ego_half_width[:, None])[:, None]
    lead = agents.valid[:, None] & (lateral_gap < corridor[:, None, None]) & ahead_of_ego & (~beside | in_ego_width)
    a = params.accel
    s = path.ego_s[:, None].expand(B, K).clone()
    v = speed[:, None].expand(B, K).clone()
    acc_prev = accel[:, None].expand(B, K)
    step_jerk = math.inf if params.max_jerk is None else params.max_jerk * dt
    out_s, out_v = [], []
    for k in range(steps):
        t = k * dt
        v0 = torch.minimum(target_speed, path.at(path.speed_cap, s)).clamp_min(0.0)
        gap = (ahead + agents.v[:, None] * t - (s + ego_front[:, None])[..., None]).clamp_min(0.1)
        # The end of the route acts as a stopped lead whose rear is ``min_gap`` past it.
        end_gap = (path.end_s[:, None] + params.min_gap - s - ego_front[:, None]).clamp_min(0.1)
        inter = idm.interaction(v, 0.0, end_gap, params)
        if lead.shape[-1]:
            lead_inter = idm.interaction(v[..., None], agents.v[:, None], gap, params)
            inter = torch.maximum(inter, torch.where(lead, lead_inter, torch.zeros_like(gap)).amax(-1))
        acc = (idm.free_road(v, v0, params, params.exponent) - a * inter).clamp(-params.max_decel, a)
        acc = torch.maximum(torch.minimum(acc, acc_prev + step_jerk), acc_prev - step_jerk)
        v_new = (v + acc * dt).clamp_min(0.0)
        acc_prev = torch.where(v_new > 0, acc, torch.zeros_like(acc))  # a stopped car holds still
        # v is the ego's own speed; on an offset or shifting path it covers more (outside of a
        # curve, while shifting) or less (inside) than the centreline's arc length.
        d, slope = lateral_profile(path, s, offset, blend)
        stretch = torch.sqrt((1.0 - path.at(path.curvature, s) * d) ** 2 + slope**2).clamp_min(0.2)
        s = s + 0.5 * (v + v_new) * dt / stretch
        v = v_new
        out_s.append(s)
        out_v.append(v)
    s_all, v_all = torch.stack(out_s, -1), torch.stack(out_v, -1)
    d, slope = lateral_profile(path, s_all, offset, blend)
    return s_all, v_all, d, slope


def ego_state(obs: Observation) -> VehicleState:
    """The ego's bicycle-model state now (``[B]``, ego frame: pose 0) from its observed history:
    speed, acceleration (:func:`current_accel`) and yaw rate from the last two history steps, and
    the steering that yaw rate needs (0 below 1 m/s)."""
    hist = obs.ego_history
    speed = hist[:, -1, 3].clamp_min(0.0)
    yaw_rate = torch.zeros_like(speed)
    if hist.shape[1] >= 2:
        yaw_rate = wrap_angle(hist[:, -1, 2] - hist[:, -2, 2]) / obs.dt
    curvature = yaw_rate / speed.clamp_min(1.0)
    steer = torch.where(speed > 1.0, steer_for(curvature, obs.ego_dims[:, 2]), torch.zeros_like(speed))
    return VehicleState(torch.zeros_like(hist[:, -1, :3]), speed, current_accel(obs), steer, yaw_rate,
                        torch.zeros_like(speed))


@dataclass(frozen=True)
class Simulated:
    """Proposals as the ego would drive them (all ``[B, K, S]``, times ``dt .. S dt``): rear-axle
    ``pose`` ``[B, K, S, 3]`` (ego frame), ``speed`` (m/s), longitudinal ``accel`` (m/s^2) and
    ``yaw_rate`` (rad/s)."""

    pose: Tensor
    speed: Tensor
    accel: Tensor
    yaw_rate: Tensor


def simulate_proposals(obs: Observation, poses: Tensor, dt: float, limits: VehicleLimits = VehicleLimits()
                       ) -> Simulated:
    """Drive ``K`` proposals per problem, ``poses`` ``[B, K, S, 3]`` (ego frame, at ``dt .. S dt``),
    from the ego's state now (:func:`ego_state`) with the simulator's own tracking controller
    (:func:`closedloop.sim.vehicle.track`) and vehicle model (:func:`av.vehicle.bicycle_step`
    under ``limits``), ``S`` steps of ``dt`` s, batched over problems x proposals."""
    B, K, S, _ = poses.shape
    wheelbase = obs.ego_dims[:, 2].repeat_interleave(K)
    start = ego_state(obs)
    ego = VehicleState(*(x.repeat_interleave(K, 0) for x in (start.pose, start.speed, start.accel, start.steer,
                                                             start.yaw_rate, start.yaw_accel)))
    plan = make_plan(poses.reshape(B * K, S, 3), wheelbase, limits, 0)
    gains = GainTable.build(dt, poses.dtype, str(poses.device))
    out = []
    for k in range(S):
        accel, steer_rate = track(ego, plan, k, wheelbase, limits, dt, gains)
        ego = bicycle_step(ego, accel, steer_rate, wheelbase, limits, dt)
        out.append((ego.pose, ego.speed, ego.accel, ego.yaw_rate))
    pose, speed, accel, rate = (torch.stack(x, 1).reshape(B, K, S, *x[0].shape[1:]) for x in zip(*out))
    return Simulated(pose=pose, speed=speed, accel=accel, yaw_rate=rate)
