"""Candidate pairs within a scenario by sort-and-sweep along x, listed sparsely so that their
number follows the VALID items near each other, not the padded ``[B, N]`` layout."""

from __future__ import annotations

import torch
from torch import Tensor

#: |x| (m) beyond which positions are clamped in the sweep (clamping never drops a close pair).
X_LIMIT = 1.0e5
#: Spacing of the scenarios along the sweep axis (> 4 X_LIMIT: windows never cross scenarios).
SPAN = 1.0e6
#: Slack (m) added to every window against rounding.
SLACK = 1.0


def nearby_pairs(row_scenario: Tensor, row_x: Tensor, reach: Tensor, valid: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Every (row, item) pair of the same scenario with a valid item within ``reach`` along x.

    ``row_scenario`` long ``[K]``, ``row_x`` ``[K]`` (m) and ``reach`` ``[K]`` (m, may be inf:
    every item of the scenario) describe ``K`` rows; ``valid`` bool ``[B, M]`` and ``x``
    ``[B, M]`` (m) the items. Items are sorted once by (scenario, x); each row's window is two
    binary searches. Returns ``(k, item)`` long ``[P]``: the row (ascending) and the flat item
    index ``b * M + m`` of every item with ``|x_item - row_x| <= reach`` (and possibly a few
    more within ``SLACK``: a superset, never a subset).
    """
    B, M = valid.shape
    items = valid.reshape(-1).nonzero().squeeze(1)  # flat b * M + m
    base = torch.arange(B, device=valid.device, dtype=torch.float64) * SPAN
    xs = x.reshape(-1).take(items).double().clamp(-X_LIMIT, X_LIMIT)
    key, order = (base.take(items.div(M, rounding_mode="floor")) + xs).sort()
    items = items.take(order)
    centre = base.take(row_scenario) + row_x.double().clamp(-X_LIMIT, X_LIMIT)
    width = reach.double().clamp(max=2.0 * X_LIMIT) + SLACK
    lo = torch.searchsorted(key, centre - width)
    count = torch.searchsorted(key, centre + width, right=True) - lo
    k = torch.repeat_interleave(torch.arange(row_scenario.shape[0], device=valid.device), count)
    shift = lo - (count.cumsum(0) - count)  # item position minus pair position, per row
    return k, items.take(torch.arange(k.shape[0], device=valid.device) + shift.take(k))
