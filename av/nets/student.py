"""The student: a small PointNet-style network that maps car-visible features to one trajectory.

Agents and lanes each go through a shared MLP and a masked max pool (so the output ignores
padding and the order of slots), the route and the ego state through small MLPs; a head maps the
concatenation to a desired speed and, per output step, an acceleration and a lateral offset, decoded
along the observed route (:mod:`av.nets.route_frame`): the small network learns how fast and how
far off centre to drive, the route it sees gives the road's shape, and a car-following prior (IDM
behind the agents observed in the ego's path, :func:`~av.nets.route_frame.follow_distances`) keeps
the gap to a leader unless the network asks for more braking. Every agent (and the
ego) is also described in route coordinates computed inside the network from the observed
features: arc length ahead, lateral offset, velocity along and across the route, heading relative
to it, so "who is in my path, how far, how fast" is one input column away. Tensor in, tensor out:
it exports to ONNX as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from av.features import EGO_DIM, NUM_AGENT_TYPES, feature_shapes
from av.nets.common import TRAJECTORY_DT, InputScale, masked_max, mlp
from av.nets.route_frame import Leaders, RoutePolyline, decode_along_route, route_coordinates, route_polyline


EGO_ROUTE_DIM = 3  # lateral offset / 5 m, cos and sin of the heading relative to the route
AGENT_ROUTE_DIM = 6  # arc length / 30 m, lateral offset / 5 m, velocity along / across / 10 m/s, cos, sin
LANE_HALF_WIDTH = 1.75  # m; an agent whose box reaches this close to the route is in the ego's path
LATERAL_LOOKAHEAD = 2.0  # s; agents' motion across the route is extrapolated this far


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """z component of the cross product of 2-vectors ``[..., 2]``."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


class RouteView(NamedTuple):
    """What the student computes once per call from the route and reuses: the ego ``[B, 3]`` and
    agents ``[B, N, 6]`` in route coordinates (network inputs), the agents the ego may follow
    and the route's segments."""

    ego_route: Tensor
    agent_route: Tensor
    leaders: Leaders
    poly: RoutePolyline


def route_view(ego: Tensor, agents: Tensor, agent_mask: Tensor, route: Tensor, route_mask: Tensor, horizon: int,
               dt: float) -> RouteView:
    """Route coordinates of the ego (columns: lateral offset / 5 m, cos and sin of its heading
    relative to the route) and of each agent's newest sample (arc length / 30 m, lateral offset /
    5 m, velocity along / across the route / 10 m/s, cos, sin; zero for agents not seen at the
    newest sample) from the raw ``ego`` ``[B, 8]``, ``agents`` ``[B, N, Da]`` / ``agent_mask``
    ``[B, N]`` and ``route`` features, and the :class:`Leaders` for ``horizon`` steps of ``dt`` s
    (agents seen at the newest sample in the ego's path, with their speed along the route, never
    negative; an agent moving across the route enters the path where its lateral offset,
    extrapolated for at most ``LATERAL_LOOKAHEAD``, reaches it; one in the path stays in it)."""
    B = agents.shape[0]
    poly = route_polyline(route, route_mask)
    origin = torch.zeros(B, 1, 2, dtype=agents.dtype, device=agents.device)
    s, d, u = route_coordinates(torch.cat([origin, agents[..., 0:2]], 1), route, route_mask, poly)
    s_ego, d_ego, u_ego = s[:, 0], d[:, :1], u[:, 0]
    s, d, u = s[:, 1:], d[:, 1:], u[:, 1:]
    ego_route = torch.cat([d_ego / 5.0, u_ego[:, :1], -u_ego[:, 1:]], -1)  # ego heading is +x
    h, v = agents[..., 2:4], agents[..., 4:6]
    seen = agents[..., 6]
    v_along, v_across = (v * u).sum(-1), _cross(u, v)
    h_cos, h_sin = (h * u).sum(-1), _cross(u, h)  # heading relative to the route
    agent_route = torch.stack([s / 30.0, d / 5.0, v_along / 10.0, v_across / 10.0, h_cos, h_sin], -1) * seen[..., None]
    # Leaders, as the ego planners choose them (closedloop.planners.common.idm_rollout): the box
    # reaches within LANE_HALF_WIDTH of the route, the centre is ahead of the rear axle, and an
    # agent beside the ego counts only where its box reaches into the ego's own width.
    length, width = agents[..., -(2 + NUM_AGENT_TYPES)], agents[..., -(1 + NUM_AGENT_TYPES)]
    cos, sin = h_cos.abs(), h_sin.abs()
    half_lon, half_lat = 0.5 * (cos * length + sin * width), 0.5 * (sin * length + cos * width)
    front = ego[:, 7:8] + 0.5 * ego[:, 4:5]  # rear axle to front bumper (m)
    ahead = s - s_ego[:, None]
    gap = ahead - half_lon - front
    t = torch.arange(horizon, dtype=agents.dtype, device=agents.device) * dt  # start of each step
    lookahead = LATERAL_LOOKAHEAD - torch.relu(LATERAL_LOOKAHEAD - t)  # min(t, LATERAL_LOOKAHEAD)
    d_then = d[:, None] + v_across[:, None] * lookahead[None, :, None]  # [B, H, N]
    # In the path now, or entering it by the extrapolation (one in the path stays a leader: the
    # ego does not start on the guess that it will have left).
    in_path = (d_then.abs() - half_lat[:, None] < LANE_HALF_WIDTH) | (d.abs() - half_lat < LANE_HALF_WIDTH)[:, None]
    beside_ok = (gap > 0) | ((d - d_ego).abs() - half_lat < 0.5 * ego[:, 5:6])
    flag = (agent_mask & (seen > 0.5) & (ahead > 0) & beside_ok)[:, None] & in_path
    leaders = Leaders(gap, torch.relu(v_along), flag.to(agents.dtype))
    return RouteView(ego_route, agent_route, leaders, poly)


@dataclass(frozen=True)
class StudentConfig:
    """``width``: per-token embedding size; ``hidden``: head width; ``horizon``: output poses
    (``TRAJECTORY_DT`` apart)."""

    width: int = field(default=32, metadata={"help": "student token embedding width"})
    hidden: int = field(default=96, metadata={"help": "student head width"})
    horizon: int = field(default=16, metadata={"help": "output poses, 0.5 s apart"})


class StudentNet(nn.Module):
    """``forward(ego, agents, agent_mask, lanes, lane_mask, route, route_mask) -> [B, H, 3]``
    (see :mod:`av.nets` for shapes, frames and units)."""

    kind = "student"

    def __init__(self, spec, config: StudentConfig = StudentConfig()) -> None:  # spec: ObservationSpec
        super().__init__()
        self.spec, self.config = spec, config
        shapes = feature_shapes(spec)
        w = config.width
        self.scale = InputScale(spec)
        self.ego_enc = mlp([EGO_DIM + EGO_ROUTE_DIM, w], final_relu=True)
        self.agent_enc = mlp([shapes["agents"][-1] + AGENT_ROUTE_DIM, w, w], final_relu=True)
        self.lane_enc = mlp([shapes["lanes"][-1], w, w], final_relu=True)
        R = shapes["route"][0]
        self.route_enc = mlp([R * 5, w], final_relu=True)
        self.head = mlp([4 * w, config.hidden, config.hidden, 2 * config.horizon + 1], final_relu=False)

    @property
    def embedding_size(self) -> int:
        return 4 * self.config.width

    def encode(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
               route: Tensor, route_mask: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Scene embedding ``[B, 4 width]`` and what :meth:`decode` needs besides it."""
        view = route_view(ego, agents, agent_mask, route, route_mask, self.config.horizon, TRAJECTORY_DT)
        e, a, l, r = self.scale(ego, agents, lanes, route)
        rm = route_mask.to(r.dtype)
        route_in = (r * rm[..., None]).flatten(1)
        embedding = torch.cat([
            self.ego_enc(torch.cat([e, view.ego_route], -1)),
            masked_max(self.agent_enc(torch.cat([a, view.agent_route], -1)), agent_mask),
            masked_max(self.lane_enc(l), lane_mask),
            self.route_enc(torch.cat([route_in, rm], 1)),
        ], -1)
        return embedding, (ego, route, route_mask, view)

    def decode(self, embedding: Tensor, context: tuple) -> Tensor:
        """Trajectory ``[B, H, 3]`` from the embedding and the context :meth:`encode` returned."""
        ego, route, route_mask, view = context
        return decode_along_route(self.head(embedding), ego, route, route_mask, self.config.horizon,
                                  TRAJECTORY_DT, view.leaders, view.poly)

    def forward(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
                route: Tensor, route_mask: Tensor) -> Tensor:
        return self.decode(*self.encode(ego, agents, agent_mask, lanes, lane_mask, route, route_mask))
