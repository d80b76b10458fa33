"""Batched, padded tensor form of many :class:`~av.types.Scenario` values.

``B`` scenarios, ``T`` steps (max over the batch), ``N`` agents, ``P`` lane points,
``L`` lanes, ``R`` route lanes, ``E`` drivable-area edges. Padding is zero (or -1 for indices)
and always comes with a boolean mask. Everything is float32 except masks and indices.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from av.types import Scenario


@dataclass(frozen=True)
class ScenarioBatch:
    """Padded tensors for ``B`` scenarios (all in each scenario's local frame, SI units).

    * ``ids``: tuple of ``B`` scenario ids; ``dt``: step length, s (shared by the batch).
    * ``step_valid`` bool ``[B, T]``: the scenario has this step; ``history_steps`` long ``[B]``.
    * ``ego`` ``[B, T, 5]`` logged rear-axle states (x, y, yaw, vx, vy).
    * ``ego_dims`` ``[B, 4]``: length, width, wheelbase, rear_axle_to_center (m).
    * ``agents`` ``[B, N, T, 5]`` box-centre states; ``agent_valid`` bool ``[B, N, T]``;
      ``agent_types`` long ``[B, N]`` (-1 for padding); ``agent_sizes`` ``[B, N, 2]`` (length, width).
    * ``lane_points`` ``[B, P, 3]`` centreline points (x, y, heading) of all lanes, concatenated;
      ``lane_point_lane`` long ``[B, P]``: lane index of each point, -1 for padding. A segment runs
      from point ``p`` to ``p + 1`` where both carry the same lane index.
    * ``lane_is_connector`` bool ``[B, L]``, ``lane_speed_limit`` ``[B, L]`` m/s (NaN unknown),
      ``lane_valid`` bool ``[B, L]``.
    * ``lane_successors`` long ``[B, L, S]``: successor lane indices of each lane, -1 padded.
    * ``lane_polygon_edges`` ``[B, Q, 4]`` (x0, y0, x1, y1) edges of every lane outline (closed),
      ``lane_polygon_edge_lane`` long ``[B, Q]``: the lane each edge belongs to, -1 for padding.
    * ``route`` long ``[B, R]`` lane indices in driving order, -1 padded.
    * ``drivable_edges`` ``[B, E, 4]`` (x0, y0, x1, y1) of the drivable rings, ``drivable_edge_valid``.
    """

    ids: tuple[str, ...]
    dt: float
    step_valid: Tensor
    history_steps: Tensor
    ego: Tensor
    ego_dims: Tensor
    agents: Tensor
    agent_valid: Tensor
    agent_types: Tensor
    agent_sizes: Tensor
    lane_points: Tensor
    lane_point_lane: Tensor
    lane_is_connector: Tensor
    lane_speed_limit: Tensor
    lane_valid: Tensor
    lane_successors: Tensor
    lane_polygon_edges: Tensor
    lane_polygon_edge_lane: Tensor
    route: Tensor
    drivable_edges: Tensor
    drivable_edge_valid: Tensor

    @property
    def batch_size(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "ScenarioBatch":
        """The same batch with every tensor on ``device``."""
        return ScenarioBatch(
            **{
                f.name: (v.to(device) if isinstance(v, Tensor) else v)
                for f in fields(self)
                for v in [getattr(self, f.name)]
            }
        )


def _pad(arrays: Sequence[np.ndarray], fill: float | int | bool, dtype: torch.dtype) -> Tensor:
    """Stack arrays of equal rank, padding every axis to the max size with ``fill``."""
    if not arrays:
        raise ValueError("cannot batch zero scenarios")
    rank = arrays[0].ndim
    shape = [max(a.shape[d] for a in arrays) for d in range(rank)]
    # Filled in the target dtype directly: no float64 copy of the whole batch on the way.
    out = np.full([len(arrays), *shape], fill, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    for i, a in enumerate(arrays):
        out[(i, *[slice(0, s) for s in a.shape])] = a
    return torch.from_numpy(out)


def ring_edges(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Edges ``[Q, 4]`` (x0, y0, x1, y1) of closed rings stored as CSR ``points``/``offsets``."""
    if len(points) == 0:
        return np.zeros((0, 4))
    # The next point in the same ring; the last point of each ring closes back to its first.
    nxt = np.arange(1, len(points) + 1)
    starts, ends = offsets[:-1], offsets[1:]
    keep = ends > starts
    nxt[ends[keep] - 1] = starts[keep]
    return np.concatenate([points, points[nxt]], axis=1)


def _successor_table(s: Scenario) -> np.ndarray:
    m = s.map
    counts = np.diff(m.lane_successor_offsets)
    table = np.full((m.num_lanes, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    rows = np.repeat(np.arange(m.num_lanes), counts)
    cols = np.arange(len(m.lane_successors)) - np.repeat(m.lane_successor_offsets[:-1], counts)
    table[rows, cols] = m.lane_successors
    return table


def collate(scenarios: Sequence[Scenario]) -> ScenarioBatch:
    """Stack scenarios into one padded :class:`ScenarioBatch` (all must share ``dt``)."""
    if not scenarios:
        raise ValueError("cannot batch zero scenarios")
    dts = {round(s.dt, 9) for s in scenarios}
    if len(dts) != 1:
        raise ValueError(f"scenarios in one batch must share dt, got {sorted(dts)}")
    f32 = torch.float32
    lane_of_point = [
        np.repeat(np.arange(s.map.num_lanes), np.diff(s.map.lane_point_offsets)) for s in scenarios
    ]
    edges = [ring_edges(s.map.drivable_ring_points, s.map.drivable_ring_offsets) for s in scenarios]
    lane_edges = [ring_edges(s.map.lane_polygon_points, s.map.lane_polygon_offsets) for s in scenarios]
    lane_of_edge = [
        np.repeat(np.arange(s.map.num_lanes), np.diff(s.map.lane_polygon_offsets)) for s in scenarios
    ]
    return ScenarioBatch(
        ids=tuple(s.id for s in scenarios),
        dt=float(scenarios[0].dt),
        step_valid=_pad([np.ones(s.num_steps, bool) for s in scenarios], False, torch.bool),
        history_steps=torch.tensor([s.history_steps for s in scenarios], dtype=torch.long),
        ego=_pad([s.ego for s in scenarios], 0.0, f32),
        ego_dims=torch.tensor(
            [
                [s.ego_vehicle.length, s.ego_vehicle.width, s.ego_vehicle.wheelbase,
                 s.ego_vehicle.rear_axle_to_center]
                for s in scenarios
            ],
            dtype=f32,
        ),
        agents=_pad([s.agents.reshape(s.num_agents, s.num_steps, 5) for s in scenarios], 0.0, f32),
        agent_valid=_pad([s.agent_valid.reshape(s.num_agents, s.num_steps) for s in scenarios], False, torch.bool),
        agent_types=_pad([s.agent_types.astype(np.int64) for s in scenarios], -1, torch.long),
        agent_sizes=_pad([s.agent_sizes.reshape(-1, 2) for s in scenarios], 0.0, f32),
        lane_points=_pad([s.map.lane_points for s in scenarios], 0.0, f32),
        lane_point_lane=_pad(lane_of_point, -1, torch.long),
        lane_is_connector=_pad([s.map.lane_is_connector for s in scenarios], False, torch.bool),
        lane_speed_limit=_pad([s.map.lane_speed_limit for s in scenarios], np.nan, f32),
        lane_valid=_pad([np.ones(s.map.num_lanes, bool) for s in scenarios], False, torch.bool),
        lane_successors=_pad([_successor_table(s) for s in scenarios], -1, torch.long),
        lane_polygon_edges=_pad(lane_edges, 0.0, f32),
        lane_polygon_edge_lane=_pad(lane_of_edge, -1, torch.long),
        route=_pad([s.route for s in scenarios], -1, torch.long),
        drivable_edges=_pad(edges, 0.0, f32),
        drivable_edge_valid=_pad([np.ones(len(e), bool) for e in edges], False, torch.bool),
    )
