"""Planar geometry on hand-built cases with known answers (av.geometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import rectangle

from av.batch import ring_edges
from av.checks import box_overlap
from av.geometry import (
    box_corners,
    distance_to_edges,
    from_frame,
    point_segment_distance,
    points_in_rings,
    to_frame,
    wrap_angle,
)

F64 = torch.float64


def _box(x: float, y: float, yaw: float, length: float = 2.0, width: float = 2.0) -> torch.Tensor:
    """Corners ``[4, 2]`` of one box."""
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    return box_corners(torch.tensor([x, y], dtype=F64), t(yaw), t(length), t(width))


def test_box_corners_order_fl_rl_rr_fr() -> None:
    c = _box(0.0, 0.0, 0.0, length=4.0, width=2.0)
    assert torch.allclose(c, torch.tensor([[2.0, 1.0], [-2.0, 1.0], [-2.0, -1.0], [2.0, -1.0]], dtype=F64))


def test_box_corners_rotated_and_shifted() -> None:
    c = _box(10.0, -5.0, math.pi / 2, length=4.0, width=2.0)  # heading +y: front is up, left is -x
    expected = torch.tensor([[9.0, -3.0], [9.0, -7.0], [11.0, -7.0], [11.0, -3.0]], dtype=F64)
    assert torch.allclose(c, expected, atol=1e-12)


def test_box_corners_broadcasts() -> None:
    centers = torch.zeros(3, 5, 2)
    c = box_corners(centers, torch.zeros(3, 5), torch.full((3, 5), 4.0), torch.full((3, 5), 2.0))
    assert c.shape == (3, 5, 4, 2)


@pytest.mark.parametrize(
    "b, overlap",
    [
        ((5.0, 0.0, 0.0), False),  # far apart
        ((1.5, 0.5, 0.0), True),  # overlapping
        ((0.0, 0.0, 1.0), True),  # same centre, rotated
        ((2.0, 0.0, 0.0), True),  # touching edges (x = 1) counts
        ((2.0, 2.0, 0.0), True),  # touching corners counts
        ((2.001, 0.0, 0.0), False),  # a millimetre gap
        ((1.0 + math.sqrt(2.0) + 0.05, 0.0, math.pi / 4), False),  # rotated 45 deg: corner 5 cm short
        ((1.0 + math.sqrt(2.0) - 0.05, 0.0, math.pi / 4), True),  # rotated 45 deg: corner 5 cm in
        ((1.9, 1.9, math.pi / 4), False),  # bounding boxes overlap, the boxes do not
    ],
)
def test_box_overlap_known_cases(b: tuple[float, float, float], overlap: bool) -> None:
    a = torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0], dtype=F64)
    other = torch.tensor([*b, 2.0, 2.0], dtype=F64)
    assert bool(box_overlap(a, other)) is overlap
    assert bool(box_overlap(other, a)) is overlap  # symmetric


def test_box_overlap_broadcasts_pairs() -> None:
    xs = torch.tensor([0.0, 1.5, 5.0], dtype=F64)
    boxes = torch.stack([xs, torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64),
                         torch.full((3,), 2.0, dtype=F64), torch.full((3,), 2.0, dtype=F64)], dim=-1)
    pairs = box_overlap(boxes[:, None], boxes[None, :])  # [3, 3]
    expected = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert torch.equal(pairs, expected)


def _square_with_hole() -> tuple[torch.Tensor, torch.Tensor]:
    rings = [rectangle(0, 0, 10, 10), rectangle(4, 4, 6, 6)]
    offsets = np.array([0, 4, 8])
    edges = torch.from_numpy(ring_edges(np.concatenate(rings), offsets))
    return edges, torch.ones(len(edges), dtype=torch.bool)


def test_points_in_rings_with_a_hole() -> None:
    edges, valid = _square_with_hole()
    p = torch.tensor([[1.0, 1.0], [5.0, 5.0], [11.0, 5.0], [3.0, 5.0], [5.0, 9.5], [-1.0, -1.0]], dtype=F64)
    inside = points_in_rings(p, edges, valid)
    assert inside.tolist() == [True, False, False, True, True, False]


def test_points_in_rings_ignores_invalid_edges_and_batches() -> None:
    edges, valid = _square_with_hole()
    no_hole = valid.clone()
    no_hole[4:] = False  # drop the hole's edges
    p = torch.tensor([[5.0, 5.0], [1.0, 1.0]], dtype=F64)
    out = points_in_rings(p.expand(2, 2, 2), edges.expand(2, 8, 4), torch.stack([valid, no_hole]))
    assert out.tolist() == [[False, True], [True, True]]


def test_distance_to_edges() -> None:
    edges, valid = _square_with_hole()
    p = torch.tensor([[5.0, 5.0], [1.0, 2.0], [13.0, 14.0], [5.0, 3.0]], dtype=F64)
    d = distance_to_edges(p, edges, valid)
    assert torch.allclose(d, torch.tensor([1.0, 1.0, 5.0, 1.0], dtype=F64))
    outer_only = valid.clone()
    outer_only[4:] = False
    assert distance_to_edges(p[:1], edges, outer_only).item() == pytest.approx(5.0)
    none = torch.zeros_like(valid)
    assert torch.isinf(distance_to_edges(p, edges, none)).all()


def test_point_segment_distance_and_position() -> None:
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([10.0, 0.0])
    p = torch.tensor([[3.0, 4.0], [-3.0, 4.0], [12.0, 0.0]])
    d, t = point_segment_distance(p, a, b)
    assert torch.allclose(d, torch.tensor([4.0, 5.0, 2.0]))
    assert torch.allclose(t, torch.tensor([0.3, 0.0, 1.0]))


def test_to_frame_known_answer() -> None:
    pose = torch.tensor([1.0, 2.0, math.pi / 2], dtype=F64)
    p = torch.tensor([[1.0, 3.0], [0.0, 2.0]], dtype=F64)  # 1 m ahead; 1 m to the right (east)
    assert torch.allclose(to_frame(p, pose), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64), atol=1e-12)


def test_to_frame_from_frame_are_inverse() -> None:
    g = torch.Generator().manual_seed(0)
    points = torch.randn(4, 7, 2, generator=g, dtype=F64) * 50
    xy = torch.randn(4, 1, 2, generator=g, dtype=F64) * 100
    yaw = (torch.rand(4, 1, 1, generator=g, dtype=F64) - 0.5) * 2 * math.pi
    poses = torch.cat([xy, yaw], dim=-1)
    local = to_frame(points, poses)
    assert torch.allclose(from_frame(local, poses), points, atol=1e-9)
    assert torch.allclose(to_frame(from_frame(points, poses), poses), points, atol=1e-9)
    # distances are preserved
    assert torch.allclose(local.norm(dim=-1), (points - poses[..., :2]).norm(dim=-1))


def test_wrap_angle_range_and_equivalence() -> None:
    a = torch.tensor([-7.0, -math.pi, -1.0, 0.0, math.pi, 3 * math.pi, 10.0, 1e4], dtype=F64)
    w = wrap_angle(a)
    assert bool(((w >= -math.pi) & (w < math.pi)).all())
    assert torch.allclose(torch.cos(w), torch.cos(a)) and torch.allclose(torch.sin(w), torch.sin(a), atol=1e-9)
    assert w[1].item() == pytest.approx(-math.pi) and w[4].item() == pytest.approx(-math.pi)
    assert w[2].item() == -1.0 and w[3].item() == 0.0
