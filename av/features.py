"""The one encoder of :class:`~av.observation.Observation` values into network inputs.

Training (observations built from logs by :func:`av.observe.observe`), simulation (the same
function on simulated states) and export all call :func:`encode`, so a network sees the same
numbers wherever it runs. Every feature is in the ego frame at plan time (origin at the rear
axle, x forward, y left), SI units (m, m/s, m/s^2, rad, rad/s). Padding slots are zero and come
with a boolean mask (True = a real item); networks must ignore masked slots.

The layout depends on the :class:`~av.observe.ObservationSpec` (history length, lane points,
route points) and on the constants below; :data:`FEATURE_VERSION` changes whenever the layout or
the meaning of a column changes, and is saved with every trained network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from av.observation import Observation

if TYPE_CHECKING:
    from av.observe import ObservationSpec

FEATURE_VERSION = 1
FEATURE_NAMES = ("ego", "agents", "agent_mask", "lanes", "lane_mask", "route", "route_mask")

HISTORY_STRIDE = 5  # agent history sampled every 5 observation steps (0.5 s at 10 Hz), newest first
ROUTE_STRIDE = 5  # every 5th route point (5 m at 1 m spacing)
NUM_AGENT_TYPES = 4  # av.types.AgentType: vehicle, pedestrian, cyclist, static
EGO_DIM = 8
AGENT_STEP_DIM = 7  # x, y, cos yaw, sin yaw, vx, vy, valid
LANE_POINT_DIM = 4  # x, y, cos heading, sin heading
LANE_EXTRA_DIM = 3  # speed limit, speed limit known, on route
ROUTE_POINT_DIM = 4  # x, y, cos heading, sin heading

# Typical magnitudes that networks divide by (inputs of order one).
POSITION_SCALE = 30.0  # m
SPEED_SCALE = 10.0  # m/s
ACCEL_SCALE = 3.0  # m/s^2
YAW_RATE_SCALE = 0.5  # rad/s
SIZE_SCALE = 5.0  # m


@dataclass(frozen=True)
class Features:
    """Network inputs for ``B`` planning problems (ego frame at plan time, SI units).

    * ``ego`` ``[B, 8]``: forward and lateral speed (m/s), forward acceleration (m/s^2, backward
      difference over the last observation step), yaw rate (rad/s), length, width, wheelbase,
      rear-axle-to-centre (m).
    * ``agents`` ``[B, N, 7 S + 6]``: for each of ``S`` history samples (newest first, every
      :data:`HISTORY_STRIDE` observation steps) the box centre x, y (m), cos and sin of yaw,
      vx, vy (m/s) and a 0/1 valid flag (zeros where invalid); then length, width (m) and a
      one-hot agent type (:data:`NUM_AGENT_TYPES`). ``agent_mask`` bool ``[B, N]``: the agent was
      seen at some history step.
    * ``lanes`` ``[B, L, 4 P + 3]``: the lane centreline's ``P`` points (x, y in m, cos and sin
      of heading), then its speed limit (m/s, 0 where unknown), a 0/1 "limit known" flag and a
      0/1 "on the route" flag. ``lane_mask`` bool ``[B, L]``.
    * ``route`` ``[B, R, 4]``: route points ahead (x, y in m, cos and sin of heading) every
      :data:`ROUTE_STRIDE` observed route points; ``route_mask`` bool ``[B, R]``.
    """

    ego: Tensor
    agents: Tensor
    agent_mask: Tensor
    lanes: Tensor
    lane_mask: Tensor
    route: Tensor
    route_mask: Tensor

    def as_tuple(self) -> tuple[Tensor, ...]:
        """The tensors in :data:`FEATURE_NAMES` order (the positional inputs of a network)."""
        return tuple(getattr(self, n) for n in FEATURE_NAMES)

    @classmethod
    def from_tuple(cls, tensors: tuple[Tensor, ...] | list[Tensor]) -> "Features":
        return cls(**dict(zip(FEATURE_NAMES, tensors, strict=True)))

    @property
    def batch_size(self) -> int:
        return int(self.ego.shape[0])

    def to(self, device: torch.device | str) -> "Features":
        return Features.from_tuple([t.to(device) for t in self.as_tuple()])

    def validate(self) -> "Features":
        """Check shapes and dtypes against each other; return ``self`` (ValueError otherwise)."""
        B = self.batch_size
        for f in fields(self):
            t = getattr(self, f.name)
            if t.shape[0] != B:
                raise ValueError(f"features: {f.name} has batch {t.shape[0]}, ego has {B}")
            want_bool = f.name.endswith("_mask")
            if (t.dtype == torch.bool) != want_bool:
                raise ValueError(f"features: {f.name} has dtype {t.dtype}")
        if self.ego.shape[1] != EGO_DIM:
            raise ValueError(f"features: ego has {self.ego.shape[1]} columns, expected {EGO_DIM}")
        for x, m in ((self.agents, self.agent_mask), (self.lanes, self.lane_mask), (self.route, self.route_mask)):
            if x.shape[:2] != m.shape:
                raise ValueError(f"features: shape {tuple(x.shape)} does not match its mask {tuple(m.shape)}")
        return self


def history_samples(history_steps: int) -> int:
    """Number ``S`` of agent history samples for ``history_steps`` past steps (+ the current one)."""
    return math.ceil((history_steps + 1) / HISTORY_STRIDE)


def feature_shapes(spec: "ObservationSpec") -> dict[str, tuple[int, ...]]:
    """Shape of each feature without the batch axis, for observations of ``spec``."""
    S = history_samples(spec.history_steps)
    R = math.ceil(spec.route_points / ROUTE_STRIDE)
    return {
        "ego": (EGO_DIM,),
        "agents": (spec.num_agents, AGENT_STEP_DIM * S + 2 + NUM_AGENT_TYPES),
        "agent_mask": (spec.num_agents,),
        "lanes": (spec.num_lanes, LANE_POINT_DIM * spec.lane_points + LANE_EXTRA_DIM),
        "lane_mask": (spec.num_lanes,),
        "route": (R, ROUTE_POINT_DIM),
        "route_mask": (R,),
    }


def feature_scales(spec: "ObservationSpec") -> dict[str, Tensor]:
    """Per-column typical magnitudes ``[D]`` of ``ego``, ``agents``, ``lanes`` and ``route``;
    networks divide their inputs by these so every column is of order one."""
    S = history_samples(spec.history_steps)
    P, V, A, W, Z = POSITION_SCALE, SPEED_SCALE, ACCEL_SCALE, YAW_RATE_SCALE, SIZE_SCALE
    agent = [P, P, 1.0, 1.0, V, V, 1.0] * S + [Z, Z] + [1.0] * NUM_AGENT_TYPES
    return {
        "ego": torch.tensor([V, V, A, W, Z, Z, Z, Z]),
        "agents": torch.tensor(agent),
        "lanes": torch.tensor([P, P, 1.0, 1.0] * spec.lane_points + [V, 1.0, 1.0]),
        "route": torch.tensor([P, P, 1.0, 1.0]),
    }


def _yaw_pair(yaw: Tensor) -> Tensor:
    return torch.stack([torch.cos(yaw), torch.sin(yaw)], -1)


def encode(obs: Observation) -> Features:
    """Features ``[B, ...]`` of a batch of observations (float32; see :class:`Features`)."""
    f32 = torch.float32
    hist = obs.ego_history.to(f32)  # [B, H, 5]
    B, H, _ = hist.shape
    now = hist[:, -1]
    if H >= 2:
        prev = hist[:, -2]
        accel = (now[:, 3] - (prev[:, 3] * torch.cos(prev[:, 2]) + prev[:, 4] * torch.sin(prev[:, 2]))) / obs.dt
        yaw_rate = -prev[:, 2] / obs.dt  # now's yaw is 0 in its own frame
    else:
        accel = torch.zeros_like(now[:, 3])
        yaw_rate = torch.zeros_like(now[:, 3])
    ego = torch.cat([now[:, 3:5], accel[:, None], yaw_rate[:, None], obs.ego_dims.to(f32)], 1)

    # Agents: history samples newest first (H-1, H-1-stride, ...).
    steps = torch.arange(H - 1, -1, -HISTORY_STRIDE, device=hist.device)
    a = obs.agents.to(f32)[:, :, steps]  # [B, N, S, 5]
    v = obs.agent_valid[:, :, steps]  # [B, N, S]
    per_step = torch.cat([a[..., :2], _yaw_pair(a[..., 2]), a[..., 3:5], v[..., None].to(f32)], -1)
    per_step = per_step * v[..., None]
    Bn, N = a.shape[:2]
    types = obs.agent_types.clamp(-1, NUM_AGENT_TYPES - 1)
    one_hot = (types[..., None] == torch.arange(NUM_AGENT_TYPES, device=types.device)).to(f32)
    agent_mask = obs.agent_valid.any(-1) & (obs.agent_types >= 0)
    agents = torch.cat([per_step.reshape(Bn, N, -1), obs.agent_sizes.to(f32), one_hot], -1)
    agents = agents * agent_mask[..., None]

    lanes_xyh = obs.lanes.to(f32)
    L, P = lanes_xyh.shape[1:3]
    points = torch.cat([lanes_xyh[..., :2], _yaw_pair(lanes_xyh[..., 2])], -1).reshape(B, L, P * LANE_POINT_DIM)
    limit = obs.lane_speed_limit.to(f32)
    known = torch.isfinite(limit)
    extra = torch.stack([torch.where(known, limit, 0.0), known.to(f32), obs.lane_on_route.to(f32)], -1)
    lane_mask = obs.lane_valid
    lanes = torch.cat([points, extra], -1) * lane_mask[..., None]

    route = obs.route.to(f32)[:, ::ROUTE_STRIDE]
    route_mask = obs.route_valid[:, ::ROUTE_STRIDE]
    route = torch.cat([route[..., :2], _yaw_pair(route[..., 2])], -1) * route_mask[..., None]

    return Features(ego=ego, agents=agents, agent_mask=agent_mask, lanes=lanes, lane_mask=lane_mask,
                    route=route, route_mask=route_mask)
