"""Trajectories decoded along the observed route (a Frenet-style output frame).

A network that writes poses in the ego frame must learn the road's geometry from data; one that
writes, per output step, a longitudinal acceleration along the route and a lateral offset from
it only has to learn *how fast* and *how far off centre*: the route polyline it already observes
(:class:`av.features.Features` ``route``) supplies the geometry. Every operation is element-wise
or a sum over route segments, so the decoder exports to ONNX as it is and is batched. It avoids
the operators that ONNX's float16 conversion leaves in float32 (``Min``, ``Max``, ``CumSum``):
running sums are products with a triangular matrix, clamps are ``relu`` differences.

Frames and units: ego frame at plan time (origin at the rear axle, x forward, y left), metres,
seconds, radians. The route points are the ones the car observes (``ROUTE_STRIDE`` m apart, the
first one at the ego's projection onto the route); past the last valid point the route is
extended straight, and with no valid route point the route is the ego's x axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from av.idm import desired_gap

ACCEL_LIMIT = 5.0  # m/s^2; |longitudinal acceleration| the decoder can express
ACCEL_UP = 2.0  # m/s^2; most the network may add to the car-following prior's acceleration
OFFSET_LIMIT = 4.0  # m; |lateral offset| from the prior the decoder can express
RETURN_TIME = 1.5  # s; the prior brings the ego's current lateral offset back to the route with this time constant
LATERAL_GATE = 1.0  # m; the lateral offset changes fully only once the ego has moved a few times this far
SPEED_SOFTNESS = 4.0  # 1/(m/s); the desired speed goes through softplus(beta=this)
MIN_DESIRED_SPEED = 3.0  # m/s; the desired speed never goes below this (the free-road term stays bounded)
DESIRED_SPEED_SCALE = 10.0  # m/s per unit of the desired-speed output
GAP_FLOOR = 0.5  # m; gaps to leaders are floored here
RATIO_LIMIT = 10.0  # desired gap / gap saturates softly at this (IDM braking stays finite, float16-safe)
_EPS = 1e-4
SNAP_DISTANCE = 0.5  # m; route coordinates blend segments whose distances differ by about this


@dataclass(frozen=True)
class FollowLaw:
    """The car-following prior's IDM parameters (an :class:`av.idm.IDMParameters`; the ego
    planners' defaults): maximum acceleration a (m/s^2), comfortable deceleration b (m/s^2),
    standstill gap s0 (m) and time headway T (s)."""

    accel: float = 1.0
    decel: float = 3.0
    min_gap: float = 1.0
    headway: float = 1.5


FOLLOW = FollowLaw()


class Leaders(NamedTuple):
    """Agents the ego may follow, as seen along the route at plan time: ``gap`` ``[B, N]`` (m,
    from the ego's front bumper to the agent's rear along the route), ``speed`` ``[B, N]`` (m/s,
    along the route) and ``weight`` ``[B, H, N]`` (1 where the agent is ahead in the ego's path at
    the start of output step ``k``, else 0).
    Each is assumed to keep its speed."""

    gap: Tensor
    speed: Tensor
    weight: Tensor


class RoutePolyline(NamedTuple):
    """Segments of the observed route (:func:`route_polyline`)."""

    start: Tensor  # [B, 2] first point (m)
    seg_start: Tensor  # [B, R-1] arc length where each segment starts (m)
    length: Tensor  # [B, R-1] segment lengths (m; 0 for invalid segments)
    direction: Tensor  # [B, R-1, 2] unit directions
    heading: Tensor  # [B, R, 2] unit point headings, the last valid one repeated past the end
    end_dir: Tensor  # [B, 2] direction used past the end
    seg_valid: Tensor  # [B, R-1] bool


def _cumsum(x: Tensor) -> Tensor:
    """Running sum over the last axis ``[..., n]`` as a product with a triangular matrix."""
    n = x.shape[-1]
    return x @ torch.ones(n, n, dtype=x.dtype, device=x.device).triu()


def _clamp(x: Tensor, limit: float) -> Tensor:
    """``x`` clamped to ``[-limit, limit]`` with ``relu`` differences (no Min/Max operators)."""
    return x + torch.relu(-limit - x) - torch.relu(x - limit)


def route_polyline(route: Tensor, route_mask: Tensor) -> RoutePolyline:
    """Segments of the observed route ``[B, R, 4]`` (x, y, cos, sin; mask ``[B, R]``); with a
    single point the route's own heading continues it, with none the ego's x axis."""
    m = route_mask.to(route.dtype)[..., None]  # [B, R, 1]
    B = route.shape[0]
    x_axis = torch.zeros(B, 2, dtype=route.dtype, device=route.device)
    x_axis[:, 0] = 1.0
    has_route = m[:, 0]  # [B, 1]
    start = route[:, 0, :2] * has_route
    heading = route[..., 2:4] * m + (1.0 - m) * x_axis[:, None]
    seg_valid = m[:, 1:] * m[:, :-1]  # [B, R-1, 1]
    delta = (route[:, 1:, :2] - route[:, :-1, :2]) * seg_valid
    length = delta.norm(dim=-1)  # [B, R-1]
    direction = delta / (length + (1.0 - seg_valid[..., 0]))[..., None]
    seg_start = _cumsum(length) - length
    # Direction past the end: the last valid segment's; the route's own heading with a single
    # point; the x axis with none.
    is_last = seg_valid[..., 0] * (1.0 - torch.cat([seg_valid[:, 1:, 0], torch.zeros_like(seg_valid[:, :1, 0])], 1))
    any_seg = is_last.sum(1, keepdim=True)
    end_dir = (direction * is_last[..., None]).sum(1) + (1.0 - any_seg) * (
        has_route * route[:, 0, 2:4] + (1.0 - has_route) * x_axis)
    # Headings past the last valid point stay at the last valid heading.
    last_heading = (heading * (m * (1.0 - torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1)))).sum(1)
    last_heading = last_heading + (1.0 - has_route) * x_axis
    heading = heading * m + (1.0 - m) * last_heading[:, None]
    return RoutePolyline(start, seg_start, length, direction, heading, end_dir, route_mask[:, 1:] & route_mask[:, :-1])


def _along(s: Tensor, seg_start: Tensor, length: Tensor) -> Tensor:
    """Distance ``[B, H, R-1]`` travelled inside each segment to reach arc length ``s`` ``[B, H]``."""
    gone = s[..., None] - seg_start[:, None]
    return torch.relu(gone) - torch.relu(gone - length[:, None])


def follow_distances(push: Tensor, desired: Tensor, v0: Tensor, leaders: Leaders, dt: float) -> Tensor:
    """Distances travelled ``[B, H]`` (m) at ``dt, 2 dt, ...`` under a car-following prior plus
    the network's acceleration ``push`` ``[B, H]`` (m/s^2).

    Each step the acceleration is IDM's (:data:`FOLLOW`; free road towards ``desired`` ``[B]``
    m/s, interaction with the most constraining of the ``leaders``, each moving at its own speed)
    plus ``push``, clamped to ``ACCEL_LIMIT``, held over the step; speeds stop at zero (no
    reversing, no creeping) and distances are exact for that from the current speed ``v0`` ``[B]``.
    With no leader in the path and ``desired == v0`` a zero ``push`` keeps the speed.
    """
    law = FOLLOW
    v = torch.relu(v0)
    travelled = torch.zeros_like(v)
    distances = []
    for k in range(push.shape[1]):
        gap = leaders.gap + leaders.speed * (k * dt) - travelled[:, None]
        gap = GAP_FLOOR + torch.relu(gap - GAP_FLOOR)
        ratio = RATIO_LIMIT * torch.tanh(desired_gap(v[:, None], leaders.speed, law) / gap / RATIO_LIMIT)
        interaction = (ratio.square() * leaders.weight[:, k]).amax(1)
        accel = law.accel * (1.0 - (v / desired) ** 4 - interaction) + push[:, k]
        accel = _clamp(accel, ACCEL_LIMIT)
        v_next = torch.relu(v + accel * dt)
        # Exact for a constant acceleration: a stop inside the step covers v^2 / (2 |a|), not the
        # trapezoid's v dt / 2 (which a tracking controller would creep along at every replan).
        stops = v + accel * dt <= 0.0
        travelled = travelled + torch.where(stops, v * v / (2.0 * torch.relu(-accel) + _EPS), 0.5 * (v + v_next) * dt)
        distances.append(travelled)
        v = v_next
    return torch.stack(distances, 1)


def no_leaders(batch: int, horizon: int, like: Tensor) -> Leaders:
    """:class:`Leaders` of a free road for ``batch`` problems and ``horizon`` steps: one slot,
    never in the path."""
    one = like.new_zeros(batch, 1)
    return Leaders(one, one, like.new_zeros(batch, horizon, 1))


def decode_along_route(raw: Tensor, ego: Tensor, route: Tensor, route_mask: Tensor, horizon: int,
                       dt: float, leaders: Leaders, poly: RoutePolyline | None = None) -> Tensor:
    """Poses ``[B, H, 3]`` (x, y, yaw) at times ``dt, 2 dt, ..., H dt`` from raw outputs
    ``[B, 2 H + 1]``: per step an acceleration added to the car-following prior
    (:func:`follow_distances`; from ``-ACCEL_LIMIT`` to ``+ACCEL_UP`` m/s^2, 0 for a zero output)
    and a lateral offset ``OFFSET_LIMIT tanh(raw)`` (m, left positive) added to the prior that
    brings the ego's current offset from the route back with time constant ``RETURN_TIME``
    (the change is gated by the distance travelled: a stopped plan does not slide sideways); the
    last output sets the desired speed (``DESIRED_SPEED_SCALE`` m/s per unit from the current
    speed, at least ``MIN_DESIRED_SPEED``). Zero outputs drive along the route at the current
    speed behind the ``leaders``, merging back onto it. ``ego`` ``[B, 8]`` are the raw ego
    features (column 0: forward speed, m/s); ``route`` ``[B, R, 4]`` / ``route_mask`` ``[B, R]``
    the observed route features, ``poly`` their :func:`route_polyline` if already computed.
    """
    out = raw[:, :2 * horizon].reshape(raw.shape[0], horizon, 2)
    up = ACCEL_UP + ACCEL_LIMIT
    push = up * torch.sigmoid(out[..., 0] + math.log(ACCEL_LIMIT / ACCEL_UP)) - ACCEL_LIMIT
    d_offset = OFFSET_LIMIT * torch.tanh(out[..., 1])
    v0 = ego[:, 0]
    desired = MIN_DESIRED_SPEED + torch.nn.functional.softplus(
        torch.relu(v0) - MIN_DESIRED_SPEED + DESIRED_SPEED_SCALE * raw[:, 2 * horizon], beta=SPEED_SOFTNESS)
    travelled = follow_distances(push, desired, v0, leaders, dt)
    start, seg_start, length, direction, heading, end_dir, _ = poly or route_polyline(route, route_mask)

    # Where the ego is relative to the route's first point: along it and to its left.
    first_dir = heading[:, 0]
    rel = -start
    s0 = (rel * first_dir).sum(-1, keepdim=True)
    lat0 = first_dir[:, 0:1] * rel[:, 1:2] - first_dir[:, 1:2] * rel[:, 0:1]
    s = s0 + travelled  # [B, H]
    t = torch.arange(1, horizon + 1, dtype=raw.dtype, device=raw.device) * dt
    # A car moves sideways only while it moves along: the lateral change is gated by distance.
    gate = 1.0 - torch.exp(-travelled / LATERAL_GATE)
    lateral = lat0 + gate * (lat0 * (torch.exp(-t / RETURN_TIME) - 1.0) + d_offset)

    inside = _along(s, seg_start, length)  # [B, H, R-1]
    total = length.sum(1, keepdim=True)
    point = (start[:, None] + (inside[..., None] * direction[:, None]).sum(2)
             + torch.relu(s - total)[..., None] * end_dir[:, None]
             - torch.relu(-s)[..., None] * first_dir[:, None])
    # Heading: the point headings interpolated linearly in arc length, renormalised.
    frac = inside / (length + _EPS)[:, None]
    dh = heading[:, 1:] - heading[:, :-1]  # [B, R-1, 2]
    h = heading[:, None, 0] + (frac[..., None] * dh[:, None]).sum(2)
    h = h * torch.rsqrt(h.square().sum(-1, keepdim=True) + _EPS)
    normal = torch.stack([-h[..., 1], h[..., 0]], -1)
    xy = point + lateral[..., None] * normal
    # Yaw: the route's heading turned by the slope of the lateral offset.
    ds = 1.0 + torch.relu(torch.cat([s[:, :1] - s0, s[:, 1:] - s[:, :-1]], 1) - 1.0)
    dlat = torch.cat([lateral[:, :1] - lat0, lateral[:, 1:] - lateral[:, :-1]], 1)
    yaw = torch.atan2(h[..., 1], h[..., 0]) + torch.atan(dlat / ds)
    return torch.cat([xy, yaw[..., None]], -1)


def route_coordinates(points: Tensor, route: Tensor, route_mask: Tensor,
                      poly: RoutePolyline | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Route coordinates of ``points`` ``[B, N, 2]`` (ego frame, m): arc length ``s`` ``[B, N]``
    (m, from the route's first observed point, negative behind it), signed lateral offset ``d``
    ``[B, N]`` (m, left positive) and the route's unit direction near the point ``[B, N, 2]``.

    Each point is projected onto every segment (the first extends backwards, the last forwards
    without limit) and the projections are blended with weights ``softmax(-distance /
    SNAP_DISTANCE)``: the nearest segment's, except within about ``SNAP_DISTANCE`` of a tie, where
    the coordinates pass smoothly from one segment to the next. With no valid segment the route
    is the ego's x axis.
    """
    _, seg_start, length, direction, _, _, seg_valid = poly or route_polyline(route, route_mask)
    R1 = length.shape[1]
    first = torch.zeros_like(seg_valid)
    first[:, 0] = True
    last = seg_valid & ~torch.cat([seg_valid[:, 1:], torch.zeros_like(seg_valid[:, :1])], 1)
    rel = points[:, :, None, :] - route[:, None, :R1, :2]  # [B, N, R-1, 2]
    along = (rel * direction[:, None]).sum(-1)
    along = torch.where(first[:, None], along, torch.relu(along))
    along = torch.where(last[:, None], along, along - torch.relu(along - length[:, None]))
    off = rel - along[..., None] * direction[:, None]
    dist = off.square().sum(-1).add(_EPS).sqrt()
    weight = torch.softmax(torch.where(seg_valid[:, None], -dist / SNAP_DISTANCE, torch.full_like(dist, -1e4)), -1)
    s = (weight * (seg_start[:, None] + along)).sum(-1)
    lateral = direction[:, None, :, 0] * off[..., 1] - direction[:, None, :, 1] * off[..., 0]
    d = (weight * lateral).sum(-1)
    u = (weight[..., None] * direction[:, None]).sum(2)
    has = seg_valid.any(1)[:, None]
    x_axis = torch.zeros_like(u)
    x_axis[..., 0] = 1.0
    s = torch.where(has, s, points[..., 0])
    d = torch.where(has, d, points[..., 1])
    u = torch.where(has[..., None], u, x_axis)
    return s, d, u
