"""The student: a small PointNet-style network that maps car-visible features to one trajectory.

Agents and lanes each go through a shared MLP and a masked max pool (so the output ignores
padding and the order of slots), the route and the ego state through small MLPs; a head maps the
concatenation to ``H`` poses. Tensor in, tensor out: it exports to ONNX as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from av.features import EGO_DIM, feature_shapes
from av.nets.common import InputScale, decode_trajectory, masked_max, mlp


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
        self.ego_enc = mlp([EGO_DIM, w], final_relu=True)
        self.agent_enc = mlp([shapes["agents"][-1], w, w], final_relu=True)
        self.lane_enc = mlp([shapes["lanes"][-1], w, w], final_relu=True)
        R = shapes["route"][0]
        self.route_enc = mlp([R * 5, w], final_relu=True)
        self.head = mlp([4 * w, config.hidden, config.hidden, 3 * config.horizon], final_relu=False)

    @property
    def embedding_size(self) -> int:
        return 4 * self.config.width

    def encode(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
               route: Tensor, route_mask: Tensor) -> Tensor:
        """Scene embedding ``[B, 4 width]``."""
        e, a, l, r = self.scale(ego, agents, lanes, route)
        rm = route_mask.to(r.dtype)
        route_in = (r * rm[..., None]).flatten(1)
        return torch.cat([
            self.ego_enc(e),
            masked_max(self.agent_enc(a), agent_mask),
            masked_max(self.lane_enc(l), lane_mask),
            self.route_enc(torch.cat([route_in, rm], 1)),
        ], -1)

    def decode(self, embedding: Tensor, ego: Tensor) -> Tensor:
        """Trajectory ``[B, H, 3]`` from the embedding and the raw ``ego`` features ``[B, 8]``."""
        return decode_trajectory(self.head(embedding), ego[:, 0], self.config.horizon)

    def forward(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
                route: Tensor, route_mask: Tensor) -> Tensor:
        emb = self.encode(ego, agents, agent_mask, lanes, lane_mask, route, route_mask)
        return self.decode(emb, ego)

