"""Candidate pairs within a scenario by sort-and-sweep along one axis per scenario (x or y,
whichever its valid items spread more along), listed sparsely so that their number follows the
VALID items near each other, not the padded ``[B, N]`` layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: |u| (m) beyond which sweep coordinates are clamped (clamping never drops a close pair).
X_LIMIT = 1.0e5
#: Spacing of the scenarios along the sweep axis (> 4 X_LIMIT: windows never cross scenarios).
SPAN = 1.0e6
#: Slack (m) added to every window against rounding.
SLACK = 1.0


@dataclass(frozen=True)
class Sweep:
    """The broad phase's per-scenario settings, fixed for a run (:func:`make_sweep`).

    * ``axis`` ``[B, 2]``: the unit vector, exactly (1, 0) or (0, 1), of the coordinate swept.
    * ``body_radius`` ``[B, M]`` (m): the bounding radius of each body (0 for padding);
      ``radius`` ``[B]`` (m): the largest, a bound for every body of the scenario.
    """

    axis: Tensor
    body_radius: Tensor
    radius: Tensor


def make_sweep(xy: Tensor, valid: Tensor, sizes: Tensor) -> Sweep:
    """The :class:`Sweep` of each scenario: its axis is the coordinate along which its valid
    sample points ``xy`` ``[B, Q, 2]`` (m; ``valid`` bool ``[B, Q]``) spread more, so that a window
    along it holds fewer items (only the speed depends on it); ``sizes`` ``[B, M, 2]`` (length,
    width; m) are all its bodies' sizes."""
    inf = torch.tensor(float("inf"), dtype=xy.dtype, device=xy.device)
    mask = valid[..., None]
    spread = torch.where(mask, xy, -inf).amax(1) - torch.where(mask, xy, inf).amin(1)  # [B, 2]; -inf if none
    along_y = spread[:, 1] > spread[:, 0]
    axis = torch.stack([~along_y, along_y], 1).to(xy.dtype)
    body_radius = 0.5 * torch.hypot(sizes[..., 0], sizes[..., 1])
    return Sweep(axis=axis, body_radius=body_radius, radius=body_radius.amax(1))


def along(xy: Tensor, axis: Tensor) -> Tensor:
    """Coordinates ``[B, M]`` (m) of points ``xy`` ``[B, M, 2]`` along each scenario's ``axis``
    ``[B, 2]`` (:attr:`Sweep.axis`; exact: the x or the y coordinate itself)."""
    return torch.where(axis[:, None, 1] > 0, xy[..., 1], xy[..., 0])


@dataclass(frozen=True)
class SortedItems:
    """The valid items of ``B`` scenarios sorted by (scenario, coordinate along the sweep axis)
    (:func:`sort_items`): ``key`` float64 ``[V]`` ascending (the scenario's offset ``b * SPAN``
    plus the clamped coordinate, m) and ``items`` long ``[V]`` their flat indices ``b * M + m``."""

    key: Tensor
    items: Tensor


def sort_items(valid: Tensor, u: Tensor) -> SortedItems:
    """Sort the items with ``valid`` bool ``[B, M]`` by scenario, then by ``u`` ``[B, M]`` (m,
    along each scenario's sweep axis: :func:`along`)."""
    B, M = valid.shape
    items = valid.reshape(-1).nonzero().squeeze(1)  # flat b * M + m
    base = torch.arange(B, device=valid.device, dtype=torch.float64) * SPAN
    us = u.reshape(-1).take(items).double().clamp(-X_LIMIT, X_LIMIT)
    key, order = (base.take(items.div(M, rounding_mode="floor")) + us).sort()
    return SortedItems(key=key, items=items.take(order))


def nearby_pairs(row_scenario: Tensor, row_u: Tensor, reach: Tensor, items: SortedItems) -> tuple[Tensor, Tensor]:
    """Every (row, item) pair of the same scenario with a valid item within ``reach`` along the
    sweep axis.

    ``row_scenario`` long ``[K]``, ``row_u`` ``[K]`` (m) and ``reach`` ``[K]`` (m, may be inf:
    every item of the scenario) describe ``K`` rows, ``row_u`` measured along the same axis as
    the sorted ``items`` (:func:`sort_items`); each row's window is two binary searches. Returns
    ``(k, item)`` long ``[P]``: the row (ascending) and the flat item index ``b * M + m`` of every
    item with ``|u_item - row_u| <= reach`` (and possibly a few more within ``SLACK``: a superset,
    never a subset).
    """
    dev = row_u.device
    centre = row_scenario.double() * SPAN + row_u.double().clamp(-X_LIMIT, X_LIMIT)
    width = reach.double().clamp(max=2.0 * X_LIMIT) + SLACK
    lo = torch.searchsorted(items.key, centre - width)
    count = torch.searchsorted(items.key, centre + width, right=True) - lo
    k = torch.repeat_interleave(torch.arange(row_scenario.shape[0], device=dev), count)
    shift = lo - (count.cumsum(0) - count)  # item position minus pair position, per row
    return k, items.items.take(torch.arange(k.shape[0], device=dev) + shift.take(k))
