"""The simulator's per-step collision flags: which pairs of boxes to test, a sparse broad phase
over the valid boxes, and the overlap test of :func:`av.checks.box_overlap` on the survivors.

Boxes are ``(x, y, yaw, length, width)`` with (x, y) the box centre; metres and radians;
touching counts as overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor

from av.checks import box_overlap
from closedloop.sim.agents import take_rows
from closedloop.sim.pairs import SortedItems, Sweep, along, nearby_pairs, sort_items


def overlapping_pairs(boxes: Tensor, valid: Tensor, rows: Tensor, row_valid: Tensor, sweep: Sweep,
                      sorted_boxes: SortedItems | None = None) -> Tensor:
    """Overlapping pairs among ``M`` boxes per scenario that involve at least one "row" box.

    ``boxes`` ``[B, M, 5]``, ``valid`` bool ``[B, M]``; ``rows`` long ``[B, R]``: the boxes tested
    against every other box (distinct within a scenario), ``row_valid`` bool ``[B, R]`` (padding
    slots False). Each pair once: a box that is itself a row pairs only with the rows before it.
    ``sweep``: the broad phase's axis and the boxes' bounding radii
    (:func:`~closedloop.sim.pairs.make_sweep` of these boxes); ``sorted_boxes``: the valid boxes
    sorted along it (:func:`~closedloop.sim.pairs.sort_items`; sorted here when not given).

    Candidates are listed sparsely by sort-and-sweep (:func:`~closedloop.sim.pairs.nearby_pairs`):
    each valid row box against the valid boxes of its scenario within reach along the scenario's
    sweep axis (x or y), so the work
    follows the valid boxes near each other, not the padding; bounding circles, then the
    separating axes on the survivors.
    Returns long ``[P, 3]`` rows ``(b, i, j)``, ``i < j``, each pair once, in lexicographic order.
    """
    B, M, _ = boxes.shape
    empty = torch.zeros(0, 3, dtype=torch.long, device=boxes.device)
    if M < 2 or rows.shape[1] < 1:
        return empty
    live = row_valid & valid.gather(1, rows)  # a row box that is absent now overlaps nothing
    row_flat = (rows + torch.arange(B, device=rows.device)[:, None] * M).reshape(-1).take(
        live.reshape(-1).nonzero().squeeze(1))
    flat = boxes.reshape(B * M, 5)
    b_row = row_flat.div(M, rounding_mode="floor")
    # Reach along the axis: the row's bounding radius plus the bound on its scenario's.
    radius = sweep.body_radius.reshape(-1)
    u = along(boxes[..., :2], sweep.axis)
    if sorted_boxes is None:
        sorted_boxes = sort_items(valid, u)
    k, col = nearby_pairs(b_row, u.reshape(-1).take(row_flat), radius.take(row_flat) + sweep.radius.take(b_row),
                          sorted_boxes)
    row = row_flat.take(k)
    is_row = torch.zeros(B, M, dtype=torch.bool, device=rows.device).scatter_(1, rows, row_valid).reshape(-1)
    keep = ((col != row) & ((col > row) | ~is_row.take(col))).nonzero().squeeze(1)
    row, col = row.take(keep), col.take(keep)
    xy = flat[:, :2]
    close = (take_rows(xy, col) - take_rows(xy, row)).square().sum(-1) <= (radius.take(row) + radius.take(col)).square()
    keep = close.nonzero().squeeze(1)
    lo, hi = torch.minimum(row, col).take(keep), torch.maximum(row, col).take(keep)
    if lo.numel() == 0:
        return empty
    hit = box_overlap(take_rows(flat, lo), take_rows(flat, hi)).nonzero().squeeze(1)
    lo, hi = lo.take(hit), hi.take(hit)
    pairs = torch.stack([lo.div(M, rounding_mode="floor"), lo % M, hi % M], 1)
    return pairs[torch.argsort(lo * M + hi % M)]


def collision_flags(boxes: Tensor, valid: Tensor, rows: Tensor, row_valid: Tensor, sweep: Sweep,
                    sorted_boxes: SortedItems | None = None) -> tuple[Tensor, Tensor]:
    """Per-agent overlap flags for the ego (box 0) and ``N`` agents (boxes ``1..N``).

    ``boxes`` ``[B, 1 + N, 5]``, ``valid`` ``[B, 1 + N]``; ``rows``/``row_valid`` the boxes tested
    against all others, ``sweep`` and ``sorted_boxes`` (see :func:`overlapping_pairs`; ``rows`` holding only box 0
    tests the ego alone). Returns
    ``(ego_hit [B, N], agent_hit [B, N])``: agent ``n`` overlaps the ego; agent ``n`` overlaps
    another agent (in a tested pair).
    """
    B, M, _ = boxes.shape
    pairs = overlapping_pairs(boxes, valid, rows, row_valid, sweep, sorted_boxes)
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
