"""Batched planar geometry in torch: frames, oriented boxes, polylines, polygons.

Every function broadcasts over leading dimensions ``[...]``. Units: metres and radians.
Boxes are ``(x, y, yaw, length, width)`` with (x, y) the box centre; their overlap test is
:func:`av.checks.box_overlap`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def wrap_angle(a: Tensor) -> Tensor:
    """Wrap angles (rad) to ``[-pi, pi)`` (robust to the float edge where ``x % 2pi == 2pi``)."""
    w = torch.remainder(a + math.pi, 2.0 * math.pi) - math.pi
    return torch.where(w >= math.pi, w - 2.0 * math.pi, w)


def to_frame(points: Tensor, pose: Tensor) -> Tensor:
    """Express world points ``[..., 2]`` in the frame of ``pose`` ``[..., 3]`` (x, y, yaw)."""
    c, s = torch.cos(pose[..., 2:3]), torch.sin(pose[..., 2:3])
    d = points - pose[..., :2]
    return torch.cat([c * d[..., :1] + s * d[..., 1:2], -s * d[..., :1] + c * d[..., 1:2]], dim=-1)


def from_frame(points: Tensor, pose: Tensor) -> Tensor:
    """Map points ``[..., 2]`` given in the frame of ``pose`` ``[..., 3]`` to the world."""
    c, s = torch.cos(pose[..., 2:3]), torch.sin(pose[..., 2:3])
    x, y = points[..., :1], points[..., 1:2]
    return torch.cat([c * x - s * y, s * x + c * y], dim=-1) + pose[..., :2]


def box_corners(center: Tensor, yaw: Tensor, length: Tensor, width: Tensor) -> Tensor:
    """Corners ``[..., 4, 2]`` of oriented boxes in the order FL, RL, RR, FR.

    ``center`` ``[..., 2]``; ``yaw``, ``length``, ``width`` ``[...]``.
    """
    c, s = torch.cos(yaw), torch.sin(yaw)
    hl, hw = 0.5 * length, 0.5 * width
    fx, fy = c * hl, s * hl  # half-length along heading
    lx, ly = -s * hw, c * hw  # half-width to the left
    dx = torch.stack([fx + lx, -fx + lx, -fx - lx, fx - lx], dim=-1)
    dy = torch.stack([fy + ly, -fy + ly, -fy - ly, fy - ly], dim=-1)
    return torch.stack([dx, dy], dim=-1) + center.unsqueeze(-2)


def point_segment_distance(p: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Distance from points ``p`` ``[..., 2]`` to segments ``a``-``b`` ``[..., 2]``.

    Returns ``(distance [...], t [...])`` with ``t`` in [0, 1] the position along the segment.
    """
    ab = b - a
    denom = (ab * ab).sum(-1).clamp_min(1e-12)
    t = (((p - a) * ab).sum(-1) / denom).clamp(0.0, 1.0)
    closest = a + t.unsqueeze(-1) * ab
    return torch.linalg.vector_norm(p - closest, dim=-1), t


def points_in_rings(p: Tensor, edges: Tensor, edge_valid: Tensor) -> Tensor:
    """Even-odd point-in-polygon test against a set of ring edges.

    ``p`` ``[..., M, 2]`` query points; ``edges`` ``[..., E, 4]`` (x0, y0, x1, y1) of closed rings
    (holes included: the even-odd rule handles them); ``edge_valid`` bool ``[..., E]``.
    Returns bool ``[..., M]``: inside an odd number of rings.
    """
    px, py = p[..., :, None, 0], p[..., :, None, 1]  # [..., M, 1]
    x0, y0 = edges[..., None, :, 0], edges[..., None, :, 1]  # [..., 1, E]
    x1, y1 = edges[..., None, :, 2], edges[..., None, :, 3]
    straddles = (y0 > py) != (y1 > py)
    x_cross = x0 + (py - y0) * (x1 - x0) / torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
    hit = straddles & (px < x_cross) & edge_valid[..., None, :]
    return (hit.sum(-1) % 2) == 1


def distance_to_edges(p: Tensor, edges: Tensor, edge_valid: Tensor) -> Tensor:
    """Distance ``[..., M]`` from points ``[..., M, 2]`` to the nearest valid edge ``[..., E, 4]``.

    ``inf`` where there is no valid edge.
    """
    d, _ = point_segment_distance(p[..., :, None, :], edges[..., None, :, :2], edges[..., None, :, 2:])
    d = torch.where(edge_valid[..., None, :], d, torch.full_like(d, math.inf))
    return d.amin(-1) if d.shape[-1] else torch.full(d.shape[:-1], math.inf)
