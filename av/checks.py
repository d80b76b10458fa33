"""The per-step safety and comfort checks, written once for every user.

The simulator's collision flags (:mod:`closedloop.sim.collision`), the evaluator's metrics
(:mod:`closedloop.evaluator`), the PDM-style planner's proposal scorer, the synthetic-traffic
generator and the runtime safety monitors all call these functions; each user keeps only its
own aggregation (which steps, which agents, what counts as at fault).

Conventions (SI units, batched over any broadcastable leading dimensions ``[...]``):

* A box is ``(x, y, yaw, length, width)`` with (x, y) its centre (m, m, rad, m, m); a vehicle's
  box from its rear-axle pose is :func:`av.vehicle.ego_box`.
* Drivable-area edges are ``[B, E, 4]`` segments (x0, y0, x1, y1) of the area's boundary, as an
  :class:`~av.observation.Observation` carries them (ego frame).
* Comfort series are ``[..., Q, T]``: ``Q`` quantities named in the order of ``quantities``
  (default :data:`COMFORT_QUANTITIES`), ``T`` samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

COMFORT_QUANTITIES = ("lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_rate", "yaw_accel")
"""The comfort quantities, in the order of every ``[..., 6, T]`` comfort tensor."""

COMFORT_BOUNDS = {
    "lon_accel": (-4.05, 2.40),  # m/s^2
    "lat_accel": (-4.89, 4.89),  # m/s^2
    "jerk": (-8.37, 8.37),  # m/s^3, of the acceleration's norm
    "lon_jerk": (-4.13, 4.13),  # m/s^3
    "yaw_rate": (-0.95, 0.95),  # rad/s
    "yaw_accel": (-1.93, 1.93),  # rad/s^2
}
"""nuPlan's comfort bounds (``ego_is_comfortable``): a value is comfortable strictly inside them."""


def bounding_radius(sizes: Tensor) -> Tensor:
    """Radius ``[...]`` (m) of the circle around a box centre that holds a box of ``sizes``
    ``[..., 2]`` (length, width)."""
    return 0.5 * torch.hypot(sizes[..., 0], sizes[..., 1])


def may_overlap(a: Tensor, b: Tensor, slack: float = 0.0) -> Tensor:
    """Broad phase: the bounding circles of boxes ``a``, ``b`` ``[..., 5]`` are within ``slack``
    (m) of touching, bool ``[...]``. False means the boxes cannot overlap."""
    reach = bounding_radius(a[..., 3:5]) + bounding_radius(b[..., 3:5]) + slack
    return torch.linalg.vector_norm(a[..., :2] - b[..., :2], dim=-1) <= reach


def box_overlap(a: Tensor, b: Tensor) -> Tensor:
    """Separating-axis test of oriented boxes ``a``, ``b`` ``[..., 5]`` -> bool ``[...]``;
    touching counts as overlap.

    The test is written out for two rectangles (four axes, projections from the relative
    heading), so no corner tensors are built.
    """
    ca, sa = torch.cos(a[..., 2]), torch.sin(a[..., 2])
    cb, sb = torch.cos(b[..., 2]), torch.sin(b[..., 2])
    hla, hwa, hlb, hwb = 0.5 * a[..., 3], 0.5 * a[..., 4], 0.5 * b[..., 3], 0.5 * b[..., 4]
    dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    cos_d = (ca * cb + sa * sb).abs()  # |cos| and |sin| of the relative heading
    sin_d = (sa * cb - ca * sb).abs()
    sep = (dx * ca + dy * sa).abs() > hla + hlb * cos_d + hwb * sin_d  # a's long axis
    sep |= (dy * ca - dx * sa).abs() > hwa + hlb * sin_d + hwb * cos_d  # a's lateral axis
    sep |= (dx * cb + dy * sb).abs() > hlb + hla * cos_d + hwa * sin_d  # b's long axis
    sep |= (dy * cb - dx * sb).abs() > hwb + hla * sin_d + hwa * cos_d  # b's lateral axis
    return ~sep


def moved_on(box: Tensor, speed: Tensor, t: Tensor | float) -> Tensor:
    """Boxes ``[..., 5]`` driven straight on along their heading at ``speed`` ``[...]`` (m/s) for
    ``t`` (s, broadcastable): the constant-velocity projection of time-to-collision checks."""
    yaw = box[..., 2]
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw)], -1)
    xy = box[..., :2] + (speed * t)[..., None] * heading
    return torch.cat([xy, box[..., 2:].expand(*xy.shape[:-1], 3)], -1)


def complete_radius(edges: Tensor, valid: Tensor) -> Tensor:
    """Radius ``[B]`` (m) around the origin (the ego, in an observation's frame) within which the
    drivable-area edges ``[B, E, 4]`` (x0, y0, x1, y1; validity ``[B, E]``) are complete.

    Observations carry the edges with the nearest midpoints; when every slot is used, farther
    ones are missing, so only the disc inside the farthest carried midpoint distance, less the
    longest carried half edge, is complete (edges are assumed no longer than those); ``inf``
    when a slot is left free.
    """
    if edges.shape[1] == 0:
        return torch.full(valid.shape[:1], float("inf"), device=edges.device)
    mid = 0.5 * (edges[..., :2] + edges[..., 2:])
    half = 0.5 * (edges[..., 2:] - edges[..., :2]).norm(dim=-1)
    zero = torch.zeros_like(half)
    radius = torch.where(valid, mid.norm(dim=-1), zero).amax(-1) - torch.where(valid, half, zero).amax(-1)
    return torch.where(valid.all(-1), radius.clamp_min(0.0), torch.full_like(radius, float("inf")))


def edge_crossings(p: Tensor, q: Tensor, edges: Tensor, valid: Tensor) -> Tensor:
    """How many of the edges ``[B, E, 4]`` (validity ``[B, E]``) the segments ``p -> q``
    ``[B, ..., 2]`` cross, long ``[B, ...]``."""
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


def leaves_drivable_area(corners: Tensor, anchors: Tensor, edges: Tensor, valid: Tensor, complete: Tensor) -> Tensor:
    """Drivable-area membership from an observation's boundary edges: bool ``[B, ...]``, some
    corner of a box lies across an odd number of boundary edges from its anchor, a point known
    to be drivable (e.g. the route centreline at the same arc length).

    ``corners`` ``[B, ..., 4, 2]`` (box corners, :func:`av.geometry.box_corners`), ``anchors``
    ``[B, ..., 2]``, in the frame of the edges ``[B, E, 4]`` (validity ``[B, E]``) whose origin is
    the observer; only points inside ``complete`` ``[B]`` (:func:`complete_radius`) are judged.
    """
    n = edge_crossings(anchors[..., None, :].expand_as(corners), corners, edges, valid)
    extra = (1,) * (corners.dim() - 2)
    radius = complete.reshape(-1, *extra)
    seen = (corners.norm(dim=-1) < radius) & (anchors.norm(dim=-1)[..., None] < radius)
    return ((n % 2 == 1) & seen).any(-1)


def within_comfort_bounds(values: Tensor, quantities: tuple[str, ...] = COMFORT_QUANTITIES) -> Tensor:
    """Per sample: strictly inside :data:`COMFORT_BOUNDS`, bool ``[..., Q, T]`` for ``values``
    ``[..., Q, T]`` whose ``Q`` rows are ``quantities`` (units of :data:`COMFORT_BOUNDS`)."""
    lo = torch.tensor([COMFORT_BOUNDS[q][0] for q in quantities], dtype=values.dtype, device=values.device)
    hi = torch.tensor([COMFORT_BOUNDS[q][1] for q in quantities], dtype=values.dtype, device=values.device)
    return (values > lo[:, None]) & (values < hi[:, None])
