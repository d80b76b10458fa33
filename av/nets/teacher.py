"""The teacher network: a transformer over ego, agent, lane and route tokens with a multi-modal
trajectory head (K proposals and their confidences).

Tokens: one for the ego state, one per agent, one per lane, one for the whole route; each kind
has its own input MLP and a learned kind embedding. A transformer encoder mixes them (padding
slots masked out of attention); K learned mode queries then attend to the encoded scene
(transformer decoder), and a shared head turns each into ``H`` poses and a confidence logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from av.features import EGO_DIM, feature_shapes
from av.nets.common import InputScale, decode_trajectory, mlp


@dataclass(frozen=True)
class TeacherConfig:
    """Sizes: ``d_model`` token width, ``layers`` encoder layers, ``decoder_layers`` mode-query
    layers, ``heads`` attention heads, ``ff`` feed-forward width, ``modes`` K proposals,
    ``horizon`` poses per proposal (``TRAJECTORY_DT`` apart)."""

    d_model: int = 128
    layers: int = 3
    decoder_layers: int = 2
    heads: int = 4
    ff: int = 256
    modes: int = 6
    horizon: int = 16


# "default" trains on a 2-core CPU in minutes; "large" is for GPU users.
TEACHER_PRESETS: dict[str, TeacherConfig] = {
    "default": TeacherConfig(),
    "large": TeacherConfig(d_model=256, layers=6, decoder_layers=3, heads=8, ff=1024, modes=12),
}


class TeacherNet(nn.Module):
    """``forward(*features) -> (trajectories [B, K, H, 3], logits [B, K])`` (see :mod:`av.nets`)."""

    kind = "teacher"

    def __init__(self, spec, config: TeacherConfig = TeacherConfig()) -> None:  # spec: ObservationSpec
        super().__init__()
        self.spec, self.config = spec, config
        shapes = feature_shapes(spec)
        d = config.d_model
        self.scale = InputScale(spec)
        self.ego_in = mlp([EGO_DIM, d, d], final_relu=False)
        self.agent_in = mlp([shapes["agents"][-1], d, d], final_relu=False)
        self.lane_in = mlp([shapes["lanes"][-1], d, d], final_relu=False)
        self.route_in = mlp([shapes["route"][0] * 5, d, d], final_relu=False)
        self.kind_embedding = nn.Parameter(torch.zeros(4, d))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, config.heads, config.ff, dropout=0.0, batch_first=True, norm_first=True),
            config.layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(config.modes, d) * 0.1)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d, config.heads, config.ff, dropout=0.0, batch_first=True, norm_first=True),
            config.decoder_layers)
        self.head = mlp([d, d, 3 * config.horizon + 1], final_relu=False)

    def forward(self, ego: Tensor, agents: Tensor, agent_mask: Tensor, lanes: Tensor, lane_mask: Tensor,
                route: Tensor, route_mask: Tensor) -> tuple[Tensor, Tensor]:
        e, a, l, r = self.scale(ego, agents, lanes, route)
        rm = route_mask.to(r.dtype)
        route_in = torch.cat([(r * rm[..., None]).flatten(1), rm], 1)
        k = self.kind_embedding
        tokens = torch.cat([
            (self.ego_in(e) + k[0])[:, None],
            self.agent_in(a) + k[1],
            self.lane_in(l) + k[2],
            (self.route_in(route_in) + k[3])[:, None],
        ], 1)
        B = ego.shape[0]
        always = torch.ones(B, 1, dtype=torch.bool, device=ego.device)
        valid = torch.cat([always, agent_mask, lane_mask, always], 1)
        memory = self.encoder(tokens, src_key_padding_mask=~valid)
        queries = self.queries[None].expand(B, -1, -1) + memory[:, :1]
        modes = self.decoder(queries, memory, memory_key_padding_mask=~valid)
        out = self.head(modes)  # [B, K, 3 H + 1]
        trajectories = decode_trajectory(out[..., :-1], ego[:, 0], self.config.horizon)
        return trajectories, out[..., -1]
