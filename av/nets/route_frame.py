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

import torch
from torch import Tensor

ACCEL_LIMIT = 5.0  # m/s^2; |longitudinal acceleration| the decoder can express
OFFSET_LIMIT = 4.0  # m; |lateral offset| from the prior the decoder can express
RETURN_TIME = 1.5  # s; the prior brings the ego's current lateral offset back to the route with this time constant
SPEED_SOFTNESS = 4.0  # 1/(m/s); speeds go through softplus(beta=this) so they stay >= 0
_EPS = 1e-4
SNAP_DISTANCE = 0.5  # m; route coordinates blend segments whose distances differ by about this


def _cumsum(x: Tensor) -> Tensor:
    """Running sum over the last axis ``[..., n]`` as a product with a triangular matrix."""
    n = x.shape[-1]
    return x @ torch.ones(n, n, dtype=x.dtype, device=x.device).triu()


def _route_polyline(route: Tensor, route_mask: Tensor) -> tuple[Tensor, ...]:
    """Segments of the observed route ``[B, R, 4]`` (x, y, cos, sin; mask ``[B, R]``).

    Returns start point ``[B, 2]``, segment starts ``[B, R-1]`` (arc length, m), lengths
    ``[B, R-1]`` (0 for invalid segments), unit directions ``[B, R-1, 2]``, point headings
    ``[B, R, 2]`` (unit vectors, the last valid one repeated past the route's end) and the
    direction ``[B, 2]`` used before the start and past the end.
    """
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
    return start, seg_start, length, direction, heading, end_dir


def _along(s: Tensor, seg_start: Tensor, length: Tensor) -> Tensor:
    """Distance ``[B, H, R-1]`` travelled inside each segment to reach arc length ``s`` ``[B, H]``."""
    gone = s[..., None] - seg_start[:, None]
    return torch.relu(gone) - torch.relu(gone - length[:, None])


def decode_along_route(raw: Tensor, ego: Tensor, route: Tensor, route_mask: Tensor, horizon: int,
                       dt: float) -> Tensor:
    """Poses ``[B, H, 3]`` (x, y, yaw) at times ``dt, 2 dt, ..., H dt`` from raw outputs
    ``[B, 2 H]``: per step a longitudinal acceleration ``ACCEL_LIMIT tanh(raw)`` (m/s^2) and a
    lateral offset ``OFFSET_LIMIT tanh(raw)`` (m, left positive) added to the prior, the ego's
    current offset from the route decaying with time constant ``RETURN_TIME`` (zero outputs
    drive along the route at constant speed, merging back onto it). ``ego`` ``[B, 8]`` are the raw ego features (column 0: forward speed,
    m/s); ``route`` ``[B, R, 4]`` / ``route_mask`` ``[B, R]`` the observed route features.

    Speeds are ``softplus`` of the integrated accelerations (never negative: no reversing);
    arc length integrates them with the trapezoid rule from the ego's own arc length on the route.
    """
    out = raw.reshape(raw.shape[0], horizon, 2)
    accel = ACCEL_LIMIT * torch.tanh(out[..., 0])
    d_offset = OFFSET_LIMIT * torch.tanh(out[..., 1])
    start, seg_start, length, direction, heading, end_dir = _route_polyline(route, route_mask)

    v0 = ego[:, :1]
    speed = torch.nn.functional.softplus(v0 + _cumsum(accel) * dt, beta=SPEED_SOFTNESS)  # [B, H]
    v_prev = torch.cat([torch.relu(v0), speed[:, :-1]], 1)
    # Where the ego is relative to the route's first point: along it and to its left.
    first_dir = heading[:, 0]
    rel = -start
    s0 = (rel * first_dir).sum(-1, keepdim=True)
    lat0 = first_dir[:, 0:1] * rel[:, 1:2] - first_dir[:, 1:2] * rel[:, 0:1]
    s = s0 + _cumsum(0.5 * (v_prev + speed) * dt)  # [B, H]
    t = torch.arange(1, horizon + 1, dtype=raw.dtype, device=raw.device) * dt
    lateral = lat0 * torch.exp(-t / RETURN_TIME) + d_offset

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


def route_coordinates(points: Tensor, route: Tensor, route_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Route coordinates of ``points`` ``[B, N, 2]`` (ego frame, m): arc length ``s`` ``[B, N]``
    (m, from the route's first observed point, negative behind it), signed lateral offset ``d``
    ``[B, N]`` (m, left positive) and the route's unit direction near the point ``[B, N, 2]``.

    Each point is projected onto every segment (the first extends backwards, the last forwards
    without limit) and the projections are blended with weights ``softmax(-distance /
    SNAP_DISTANCE)``: the nearest segment's, except within about ``SNAP_DISTANCE`` of a tie, where
    the coordinates pass smoothly from one segment to the next. With no valid segment the route
    is the ego's x axis.
    """
    _, seg_start, length, direction, _, _ = _route_polyline(route, route_mask)
    R1 = length.shape[1]
    seg_valid = route_mask[:, 1:] & route_mask[:, :-1]  # [B, R-1]
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
