"""The two-stage tracking controller that makes the ego follow a plan (the vehicle model it
drives, :func:`av.vehicle.bicycle_step`, and its limits live in :mod:`av.vehicle`).

Controller (like nuPlan's two-stage tracker): longitudinally, the acceleration (of the
acceleration-and-jerk profile) that puts the ego on the plan's poses ``PREVIEW_STEPS`` and
``2 PREVIEW_STEPS`` ahead on time -- the plan's own acceleration as feed-forward plus a PD law
on the along-track errors (natural frequency 3.7 rad/s, damping 0.8); laterally, a
finite-horizon LQR on (lateral error, heading error, steering error) with the steering rate as
input and the plan's curvature as feed-forward. All tensors are batched over ``B``; SI units.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from av.geometry import wrap_angle
from av.vehicle import VehicleLimits, VehicleState, steer_for

#: Longitudinal controller preview, steps of ``dt`` (0.5 s at 10 Hz; the second point is at 1 s).
PREVIEW_STEPS = 5
#: Lateral LQR: horizon (steps) and weights on (lateral error m, heading error rad, steering
#: error rad) and on the steering-rate input (rad/s).
LQR_HORIZON = 20
LQR_Q = (10.0, 5.0, 0.05)
LQR_R = 0.1


@dataclass(frozen=True)
class Plan:
    """A plan being tracked, in the local (world) frame.

    * ``poses`` ``[B, H, 3]`` rear-axle (x, y, yaw) at ``made_at + 1 ... made_at + H`` steps.
    * ``s`` ``[B, H]`` arc length along the poses (m, from the first pose).
    * ``steer`` ``[B, H]`` feed-forward steering angle (rad) from the plan's curvature.
    * ``made_at``: the simulation step at which the plan was made.
    """

    poses: Tensor
    s: Tensor
    steer: Tensor
    made_at: int


def make_plan(poses: Tensor, wheelbase: Tensor, limits: VehicleLimits, made_at: int) -> Plan:
    """Precompute arc length and feed-forward steering of world-frame ``poses`` ``[B, H, 3]``."""
    seg = (poses[:, 1:, :2] - poses[:, :-1, :2]).norm(dim=-1)  # [B, H-1]
    s = torch.cat([torch.zeros_like(poses[:, :1, 0]), seg.cumsum(1)], 1)
    if poses.shape[1] < 2:
        return Plan(poses, s, torch.zeros_like(s), made_at)
    # Curvature from heading change over arc length (central differences inside, one-sided at
    # the ends); short steps are floored so that a stopped plan has no spurious curvature.
    yaw = poses[:, :, 2]
    ext_yaw = torch.cat([yaw[:, :1], yaw, yaw[:, -1:]], 1)
    ext_s = torch.cat([s[:, :1], s, s[:, -1:]], 1)
    dyaw = wrap_angle(ext_yaw[:, 2:] - ext_yaw[:, :-2])
    ds = (ext_s[:, 2:] - ext_s[:, :-2]).clamp_min(0.2)
    kappa = dyaw / ds
    steer = steer_for(kappa, wheelbase[:, None]).clamp(-limits.max_steer, limits.max_steer)
    return Plan(poses, s, steer, made_at)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for ``x`` ``[B, H, ...]`` and ``idx`` ``[B]``."""
    return x[torch.arange(x.shape[0], device=x.device), idx]


def lqr_lateral_gains(speed: Tensor, wheelbase: Tensor, steer_ref: Tensor, dt: float) -> Tensor:
    """Feedback gains ``[B, 3]`` on (lateral error, heading error, steering error).

    The error dynamics linearised about the reference (curvature ``tan(steer_ref) / wheelbase``)
    form the chain ``e_y' = v e_psi``, ``e_psi' = g e_steer``, ``e_steer' = u`` with
    ``g = v / (wheelbase cos^2 steer_ref)``; discretised exactly (zero-order hold) and solved by
    ``LQR_HORIZON`` backward Riccati iterations. ``u = -K e``.
    """
    B = speed.shape[0]
    v = speed.clamp_min(0.0)
    g = v / (wheelbase * torch.cos(steer_ref).square())
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    A = torch.stack([
        torch.stack([one, v * dt, v * g * dt * dt / 2], -1),
        torch.stack([zero, one, g * dt], -1),
        torch.stack([zero, zero, one], -1),
    ], 1)  # [B, 3, 3]
    Bm = torch.stack([v * g * dt ** 3 / 6, g * dt * dt / 2, torch.full_like(v, dt)], -1)[:, :, None]
    Q = torch.diag(torch.tensor(LQR_Q, dtype=v.dtype, device=v.device)).expand(B, 3, 3)
    P = Q
    At = A.transpose(1, 2)
    K = torch.zeros(B, 1, 3, dtype=v.dtype, device=v.device)
    for _ in range(LQR_HORIZON):
        PA = P @ A
        PB = P @ Bm
        K = (Bm.transpose(1, 2) @ PA) / (LQR_R + (Bm * PB).sum((1, 2)))[:, None, None]
        P = Q + At @ (PA - PB @ K)
    return K[:, 0]


@dataclass(frozen=True)
class GainTable:
    """:func:`lqr_lateral_gains` tabulated for one ``dt``: ``gains`` ``[U, W, 3]`` over
    ``sqrt(speed) = i * u_step`` (the gains change fastest near standstill) and ``w = w_min + k *
    w_step`` with ``w = 1 / (wheelbase cos^2 steer_ref)`` (1/m), the two numbers the gains depend
    on. Looked up bilinearly, clamped to the table (speeds 0..64 m/s, wheelbases 0.7..10 m)."""

    gains: Tensor
    u_step: float
    w_min: float
    w_step: float

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def build(dt: float, dtype: torch.dtype = torch.float32, device: str = "cpu") -> "GainTable":
        """The table for ``dt`` (cached per ``dt``, dtype and device: every input it depends on)."""
        u_step, w_min, w_step = 1.0 / 16, 0.1, 0.05
        u = torch.arange(129, dtype=torch.float64) * u_step
        w = w_min + torch.arange(29, dtype=torch.float64) * w_step
        uu, ww = torch.meshgrid(u, w, indexing="ij")
        zero = torch.zeros(uu.numel(), dtype=torch.float64)
        k = lqr_lateral_gains(uu.reshape(-1).square(), 1.0 / ww.reshape(-1), zero, dt)
        return GainTable(k.reshape(len(u), len(w), 3).to(dtype=dtype, device=device), u_step, w_min, w_step)

    def lookup(self, speed: Tensor, wheelbase: Tensor, steer_ref: Tensor) -> Tensor:
        """Gains ``[B, 3]`` for ``speed``, ``wheelbase``, ``steer_ref`` ``[B]``."""
        U, W, _ = self.gains.shape
        fu = (speed.clamp_min(0.0).sqrt() / self.u_step).clamp(0.0, U - 1.0)
        fw = ((1.0 / (wheelbase * torch.cos(steer_ref).square()) - self.w_min) / self.w_step).clamp(0.0, W - 1.0)
        iu, iw = fu.floor().long().clamp_max(U - 2), fw.floor().long().clamp_max(W - 2)
        tu, tw = (fu - iu)[:, None], (fw - iw)[:, None]
        g = self.gains
        low = g[iu, iw] * (1 - tw) + g[iu, iw + 1] * tw
        high = g[iu + 1, iw] * (1 - tw) + g[iu + 1, iw + 1] * tw
        return low * (1 - tu) + high * tu


def track(s: VehicleState, plan: Plan, step: int, wheelbase: Tensor, limits: VehicleLimits, dt: float,
          gains: GainTable | None = None) -> tuple[Tensor, Tensor]:
    """Acceleration and steering-rate commands ``([B], [B])`` that follow ``plan`` at ``step``.

    Lateral gains come from ``gains`` (tabulated for ``dt``) or, without one, are solved exactly.

    The plan is time-shifted: at ``step`` the next reference pose is ``plan.poses[:, step -
    plan.made_at]`` (the last pose once the plan runs out, i.e. the ego stops there).
    """
    H = plan.poses.shape[1]
    j = min(max(step - plan.made_at, 0), H - 1)
    nxt = plan.poses[:, j]  # [B, 3] reference at now + dt
    c, sn = torch.cos(nxt[:, 2]), torch.sin(nxt[:, 2])
    d = s.pose[:, :2] - nxt[:, :2]
    e_x = d[:, 0] * c + d[:, 1] * sn  # along-track offset of the ego from the next reference (m)
    e_y = -d[:, 0] * sn + d[:, 1] * c
    kappa = torch.tan(plan.steer[:, j]) / wheelbase
    # Compare with the reference arc continued back to the ego's along-track position.
    e_y = e_y - 0.5 * kappa * e_x.square()
    e_psi = wrap_angle(s.pose[:, 2] - nxt[:, 2] - kappa * e_x)

    # Longitudinal: the acceleration and jerk that put the ego on the reference poses PREVIEW
    # and 2 PREVIEW steps ahead on time; apply that acceleration. (Once the plan runs out its
    # last pose is held, so the ego stops there.)
    h = PREVIEW_STEPS * dt
    near, far = min(j + PREVIEW_STEPS - 1, H - 1), min(j + 2 * PREVIEW_STEPS - 1, H - 1)
    e_near = plan.s[:, near] - plan.s[:, j] - e_x - s.speed * h
    e_far = plan.s[:, far] - plan.s[:, j] - e_x - s.speed * 2 * h
    accel = (8.0 * e_near - e_far) / (2 * h * h)

    steer_ref = plan.steer[:, j]
    steer_rate_ff = (plan.steer[:, min(j + 1, H - 1)] - steer_ref) / dt
    if gains is None:
        K = lqr_lateral_gains(s.speed, wheelbase, steer_ref, dt)
    else:
        K = gains.lookup(s.speed, wheelbase, steer_ref)
    err = torch.stack([e_y, e_psi, s.steer - steer_ref], 1)
    steer_rate = steer_rate_ff - (K * err).sum(1)
    return accel, steer_rate


def place_on_plan(s: VehicleState, plan: Plan, step: int, wheelbase: Tensor, dt: float) -> VehicleState:
    """The "perfect" controller: the ego lands exactly on the plan's pose for ``step + 1``.

    Speed, acceleration, steering and yaw rate are the finite differences that pose implies;
    no limit is applied (reversing plans give a negative speed).
    """
    j = min(max(step - plan.made_at, 0), plan.poses.shape[1] - 1)
    pose = plan.poses[:, j]
    yaw_rate = wrap_angle(pose[:, 2] - s.pose[:, 2]) / dt
    move = pose[:, :2] - s.pose[:, :2]
    speed = (move[:, 0] * torch.cos(pose[:, 2]) + move[:, 1] * torch.sin(pose[:, 2])) / dt
    moving = speed.abs() > 1e-3
    steer = torch.where(moving, torch.atan(wheelbase * yaw_rate / torch.where(moving, speed, torch.ones_like(speed))),
                        torch.zeros_like(speed))
    return VehicleState(pose, speed, (speed - s.speed) / dt, steer, yaw_rate, (yaw_rate - s.yaw_rate) / dt)
