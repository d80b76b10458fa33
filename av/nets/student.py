"""The student: a small PointNet-style network that maps car-visible features to one trajectory.

Agents and lanes each go through a shared MLP and a masked max pool (so the output ignores
padding and the order of slots), the route and the ego state through small MLPs; a head maps the
concatenation to a longitudinal acceleration and a lateral offset per output step, decoded along
the observed route (:mod:`av.nets.route_frame`): the small network learns how fast and how far off
centre to drive, the route it sees gives the road's shape. For the same reason every agent (and the
ego) is also described in route coordinates computed inside the network from the observed
features: arc length ahead, lateral offset, velocity along and across the route, heading relative
to it, so "who is in my path, how far, how fast" is one input column away. Tensor in, tensor out:
it exports to ONNX as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from av.features import EGO_DIM, feature_shapes
from av.nets.common import TRAJECTORY_DT, InputScale, masked_max, mlp
from av.nets.route_frame import decode_along_route, route_coordinates


EGO_ROUTE_DIM = 3  # lateral offset / 5 m, cos and sin of the heading relative to the route
AGENT_ROUTE_DIM = 6  # arc length / 30 m, lateral offset / 5 m, velocity along / across / 10 m/s, cos, sin


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """z component of the cross product of 2-vectors ``[..., 2]``."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def route_features(agents: Tensor, route: Tensor, route_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Route coordinates of the ego ``[B, 3]`` and of each agent's newest sample ``[B, N, 6]``
    (columns in ``EGO_ROUTE_DIM`` / ``AGENT_ROUTE_DIM`` order, of order one; zero for agents not
    seen at the newest sample) from the raw ``agents`` ``[B, N, Da]`` and ``route`` features."""
    B = agents.shape[0]
    origin = torch.zeros(B, 1, 2, dtype=agents.dtype, device=agents.device)
    _, d0, u0 = route_coordinates(origin, route, route_mask)
    ego_route = torch.cat([d0 / 5.0, u0[:, 0]], -1)  # ego heading is +x: cos = u_x, sin = -u_y
    ego_route = ego_route * torch.tensor([1.0, 1.0, -1.0], dtype=agents.dtype, device=agents.device)
    s, d, u = route_coordinates(agents[..., 0:2], route, route_mask)
    h, v = agents[..., 2:4], agents[..., 4:6]
    agent_route = torch.stack([s / 30.0, d / 5.0, (v * u).sum(-1) / 10.0, _cross(u, v) / 10.0,
                               (h * u).sum(-1), _cross(u, h)], -1)
    return ego_route, agent_route * agents[..., 6:7]


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
        self.head = mlp([4 * w, config.hidden, config.hidden, 2 * config.horizon], final_relu=False)

    @property
    def embedding_size(self) -> int:
        return 4 * self.config.width

    def encode(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
               route: Tensor, route_mask: Tensor) -> Tensor:
        """Scene embedding ``[B, 4 width]``."""
        ego_route, agent_route = route_features(agents, route, route_mask)
        e, a, l, r = self.scale(ego, agents, lanes, route)
        rm = route_mask.to(r.dtype)
        route_in = (r * rm[..., None]).flatten(1)
        return torch.cat([
            self.ego_enc(torch.cat([e, ego_route], -1)),
            masked_max(self.agent_enc(torch.cat([a, agent_route], -1)), agent_mask),
            masked_max(self.lane_enc(l), lane_mask),
            self.route_enc(torch.cat([route_in, rm], 1)),
        ], -1)

    def decode(self, embedding: Tensor, ego: Tensor, route: Tensor, route_mask: Tensor) -> Tensor:
        """Trajectory ``[B, H, 3]`` from the embedding and the raw ``ego`` ``[B, 8]`` and
        ``route`` ``[B, R, 4]`` / ``route_mask`` ``[B, R]`` features."""
        return decode_along_route(self.head(embedding), ego, route, route_mask, self.config.horizon, TRAJECTORY_DT)

    def forward(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
                route: Tensor, route_mask: Tensor) -> Tensor:
        emb = self.encode(ego, agents, agent_mask, lanes, lane_mask, route, route_mask)
        return self.decode(emb, ego, route, route_mask)

