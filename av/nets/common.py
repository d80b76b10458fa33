"""Building blocks shared by the teacher and the student: input scaling, MLPs, masked pooling and
the trajectory decoding (a residual on constant velocity)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from av.features import feature_scales

TRAJECTORY_DT = 0.5  # s between output poses
OFFSET_SCALE = 10.0  # m; x, y outputs are residuals to constant velocity in units of this
YAW_SCALE = 0.5  # rad


def mlp(sizes: list[int], final_relu: bool) -> nn.Sequential:
    """Linear layers of widths ``sizes`` with ReLU between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InputScale(nn.Module):
    """Divides ``ego``, ``agents``, ``lanes`` and ``route`` by their typical magnitudes
    (:func:`av.features.feature_scales`) so every input column is of order one."""

    def __init__(self, spec) -> None:  # spec: av.observe.ObservationSpec
        super().__init__()
        for name, scale in feature_scales(spec).items():
            self.register_buffer(name, 1.0 / scale, persistent=False)

    def forward(self, ego: Tensor, agents: Tensor, lanes: Tensor, route: Tensor) -> tuple[Tensor, ...]:
        return ego * self.ego, agents * self.agents, lanes * self.lanes, route * self.route


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over axis 1 of non-negative ``x`` ``[B, M, D]`` where ``mask`` ``[B, M]``; zeros where
    no slot is valid. Padding slots never change the result."""
    return (x * mask[..., None].to(x.dtype)).amax(1)


def decode_trajectory(raw: Tensor, speed: Tensor, horizon: int) -> Tensor:
    """Poses ``[B, ..., H, 3]`` from raw outputs ``[B, ..., 3 H]`` and the forward speed ``[B]``
    (m/s): constant-velocity motion along x plus the raw offsets (``OFFSET_SCALE`` m,
    ``YAW_SCALE`` rad per unit), at times ``TRAJECTORY_DT, ..., H TRAJECTORY_DT``."""
    out = raw.reshape(*raw.shape[:-1], horizon, 3)
    t = torch.arange(1, horizon + 1, dtype=raw.dtype, device=raw.device) * TRAJECTORY_DT
    v = speed.reshape(speed.shape[0], *([1] * (out.dim() - 2)))
    x = v * t + out[..., 0] * OFFSET_SCALE
    return torch.stack([x, out[..., 1] * OFFSET_SCALE, out[..., 2] * YAW_SCALE], -1)
