"""The simulator's per-step collision flags: which pairs of boxes to test, a batched broad phase,
and the overlap test of :func:`av.checks.box_overlap` on the survivors.

Boxes are ``(x, y, yaw, length, width)`` with (x, y) the box centre; metres and radians;
touching counts as overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor

from av.checks import bounding_radius, box_overlap


def pair_mask(rows: Tensor, row_valid: Tensor, count: int) -> Tensor:
    """Which (row, box) pairs :func:`overlapping_pairs` tests, bool ``[B, R, count]``.

    ``rows`` long ``[B, R]``: indices of the boxes tested against every other box (distinct
    within a scenario); ``row_valid`` bool ``[B, R]`` (padding slots False). Each pair once: a
    box that is itself a row pairs only with the rows before it; never with itself.
    """
    B, R = rows.shape
    col = torch.arange(count, device=rows.device)
    is_row = torch.zeros(B, count, dtype=torch.bool, device=rows.device).scatter_(1, rows, row_valid)
    once = (col > rows[..., None]) | ~is_row[:, None, :]
    return once & (col != rows[..., None]) & row_valid[..., None]


def overlapping_pairs(boxes: Tensor, valid: Tensor, rows: Tensor, allowed: Tensor) -> Tensor:
    """Overlapping pairs among ``M`` boxes per scenario that involve at least one "row" box.

    ``boxes`` ``[B, M, 5]``, ``valid`` bool ``[B, M]``; ``rows`` long ``[B, R]`` and ``allowed``
    bool ``[B, R, M]`` from :func:`pair_mask`. Broad phase: centre distance against the sum of
    the bounding radii; only the survivors go through the separating-axis test.
    Returns long ``[P, 3]`` rows ``(b, i, j)``, ``i < j``, each pair once, in lexicographic order.
    """
    B, M, _ = boxes.shape
    empty = torch.zeros(0, 3, dtype=torch.long, device=boxes.device)
    if M < 2 or rows.shape[1] < 1:
        return empty
    radius = bounding_radius(boxes[..., 3:5])  # [B, M]
    # Broad phase, a superset: squared centre distance from one batched product (positions
    # relative to box 0 to keep the expansion |a|^2 + |b|^2 - 2 a.b well conditioned, plus a
    # 1e6 m^2 penalty per invalid box) against the scenario's largest reach, with 1 m^2 of slack.
    xy = boxes[..., :2] - boxes[:, :1, :2]
    sq = xy.square().sum(-1) + 1.0e6 * ~valid
    ones = torch.ones_like(sq)
    left = torch.stack([-2.0 * xy[..., 0], -2.0 * xy[..., 1], sq, ones], -1)  # [B, M, 4]
    left = left.gather(1, rows[..., None].expand(-1, -1, 4))  # [B, R, 4]
    right = torch.stack([xy[..., 0], xy[..., 1], ones, sq], 1)  # [B, 4, M]
    reach = 2.0 * radius.amax(1)
    near = torch.bmm(left, right) <= (reach.square() + 1.0)[:, None, None]  # [B, R, M]
    b, r, j = (near & allowed).nonzero().unbind(1)
    if b.numel() == 0:
        return empty
    i = rows[b, r]
    i, j = torch.minimum(i, j), torch.maximum(i, j)
    flat = boxes.reshape(B * M, 5)
    a = flat.gather(0, (b * M + i)[:, None].expand(-1, 5))
    o = flat.gather(0, (b * M + j)[:, None].expand(-1, 5))
    # Exact: both valid, bounding circles (cheap), then the separating axes.
    close = (a[:, :2] - o[:, :2]).square().sum(-1) <= (radius[b, i] + radius[b, j]).square()
    hit = close & valid[b, i] & valid[b, j] & box_overlap(a, o)
    pairs = torch.stack([b, i, j], 1)[hit]
    order = torch.argsort((pairs[:, 0] * M + pairs[:, 1]) * M + pairs[:, 2])
    return pairs[order]


def collision_flags(boxes: Tensor, valid: Tensor, rows: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Per-agent overlap flags for the ego (box 0) and ``N`` agents (boxes ``1..N``).

    ``boxes`` ``[B, 1 + N, 5]``, ``valid`` ``[B, 1 + N]``; ``rows``/``allowed`` the pairs to test
    (see :func:`pair_mask`; ``rows`` holding only box 0 tests the ego alone). Returns
    ``(ego_hit [B, N], agent_hit [B, N])``: agent ``n`` overlaps the ego; agent ``n`` overlaps
    another agent (in a tested pair).
    """
    B, M, _ = boxes.shape
    pairs = overlapping_pairs(boxes, valid, rows, allowed)
    ego_hit = torch.zeros(B, M, dtype=torch.bool, device=boxes.device)
    agent_hit = torch.zeros(B, M, dtype=torch.bool, device=boxes.device)
    if pairs.shape[0]:
        b, i, j = pairs.unbind(1)
        with_ego = i == 0
        ego_hit[b[with_ego], j[with_ego]] = True
        among = ~with_ego
        agent_hit[b[among], i[among]] = True
        agent_hit[b[among], j[among]] = True
    return ego_hit[:, 1:], agent_hit[:, 1:]
