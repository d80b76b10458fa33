"""Comfort checks of nuPlan (`ego_is_comfortable`) and NAVSIM v1 from Savitzky-Golay filtered series.

Every series is a SciPy ``savgol_filter(y, window=min(w, n), polyorder=p, deriv=m, delta=dt,
mode="interp")`` along time. The filter is linear in ``y``, so it is applied as a matmul with an
``n x n`` matrix built once per ``(n, w, p, m, dt)`` by filtering an identity with SciPy (METRICS.md 0).
Values are rounded to 8 decimals and checked strictly inside their bounds at every sample.

Inputs are left-aligned per scenario: ``[B, T]`` with a prefix of ``n_b`` valid samples. Scenarios are
grouped by ``n_b`` (one matmul per distinct length), never looped over one by one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import savgol_filter
from torch import Tensor

from av.checks import COMFORT_QUANTITIES, within_comfort_bounds

QUANTITIES = COMFORT_QUANTITIES
"""Order of the comfort checks in every ``[B, 6, ...]`` tensor of this module (bounds:
:data:`av.checks.COMFORT_BOUNDS`)."""

LABELS = {
    "lon_accel": "longitudinal acceleration",
    "lat_accel": "lateral acceleration",
    "jerk": "jerk",
    "lon_jerk": "longitudinal jerk",
    "yaw_rate": "yaw rate",
    "yaw_accel": "yaw acceleration",
}
UNITS = {
    "lon_accel": "m/s²", "lat_accel": "m/s²", "jerk": "m/s³", "lon_jerk": "m/s³", "yaw_rate": "rad/s",
    "yaw_accel": "rad/s²",
}

MIN_SAMPLES = 4
"""Fewer samples than this cannot be filtered (yaw acceleration needs window > polyorder 3)."""


@dataclass(frozen=True)
class Windows:
    """Savitzky-Golay windows (samples): accelerations, the jerk derivative, yaw rate, yaw accel.

    Jerks are always pre-smoothed with window 8 before differentiation.
    """

    accel: int
    jerk: int
    yaw_rate: int = 5
    yaw_accel: int = 5


NUPLAN = Windows(accel=8, jerk=15)
NAVSIM_V1 = Windows(accel=41, jerk=41)


@functools.lru_cache(maxsize=512)
def _sg_numpy(n: int, window: int, polyorder: int, deriv: int, dt: float) -> np.ndarray:
    w = min(window, n)
    # Column j of the filtered identity is the filter's response to a unit sample at j.
    return savgol_filter(np.eye(n), w, polyorder, deriv=deriv, delta=dt, axis=0, mode="interp")


def sg_matrix(n: int, window: int, polyorder: int, deriv: int, dt: float) -> Tensor:
    """The ``[n, n]`` float64 matrix ``M`` with ``SG(y) = M @ y`` (cached per argument tuple)."""
    return torch.from_numpy(_sg_numpy(int(n), int(window), int(polyorder), int(deriv), float(dt)))


def savgol(y: Tensor, window: int, polyorder: int, deriv: int, dt: float) -> Tensor:
    """SciPy-equivalent Savitzky-Golay filter of ``y`` ``[..., n]`` along the last axis (float64)."""
    m = sg_matrix(y.shape[-1], window, polyorder, deriv, dt)
    return y.to(torch.float64) @ m.T


def unwrap(theta: Tensor) -> Tensor:
    """Unwrap angles ``[..., n]`` (rad): ``theta_k - 2 pi cumsum(round(dtheta / 2 pi))``."""
    d = torch.diff(theta, dim=-1)
    corr = 2.0 * math.pi * torch.cumsum(torch.round(d / (2.0 * math.pi)), dim=-1)
    return torch.cat([theta[..., :1], theta[..., 1:] - corr], dim=-1)


def comfort_series(
    a_lon: Tensor, a_lat: Tensor, a_norm: Tensor, yaw: Tensor, dt: float, windows: Windows
) -> Tensor:
    """The six filtered series ``[..., 6, n]`` (order :data:`QUANTITIES`), rounded to 8 decimals.

    ``a_lon``, ``a_lat``, ``a_norm`` (m/s^2) and ``yaw`` (rad) are ``[..., n]`` sample series.
    """
    sm_lon = savgol(a_lon, windows.accel, 2, 0, dt)
    sm_lat = savgol(a_lat, windows.accel, 2, 0, dt)
    jerk = savgol(savgol(a_norm, 8, 2, 0, dt), windows.jerk, 2, 1, dt)
    lon_jerk = savgol(savgol(a_lon, 8, 2, 0, dt), windows.jerk, 2, 1, dt)
    th = unwrap(yaw.to(torch.float64))
    yaw_rate = savgol(th, windows.yaw_rate, 2, 1, dt)
    yaw_accel = savgol(th, windows.yaw_accel, 3, 2, dt)
    out = torch.stack([sm_lon, sm_lat, jerk, lon_jerk, yaw_rate, yaw_accel], dim=-2)
    return torch.round(out, decimals=8)


def comfort_values(
    a_lon: Tensor, a_lat: Tensor, a_norm: Tensor, yaw: Tensor, valid: Tensor, dt: float, windows: Windows
) -> tuple[Tensor, Tensor]:
    """The filtered comfort series of left-aligned, variable-length inputs.

    ``a_lon``, ``a_lat``, ``a_norm``, ``yaw``: ``[B, T]``; ``valid`` bool ``[B, T]``, a prefix of
    ``n_b`` samples per scenario. Returns ``(series, checked)``: float64 ``[B, 6, T]`` (order
    :data:`QUANTITIES`, units of :data:`UNITS`, 0 where not checked) and bool ``[B, 6, T]``, the
    sample was checked (``n_b >= MIN_SAMPLES``).
    """
    B, T = valid.shape
    values = torch.zeros(B, len(QUANTITIES), T, dtype=torch.float64)
    checked = torch.zeros(B, len(QUANTITIES), T, dtype=torch.bool)
    lengths = valid.sum(-1)
    for n in torch.unique(lengths).tolist():
        if n < MIN_SAMPLES:
            continue
        rows = (lengths == n).nonzero(as_tuple=True)[0]
        values[rows, :, :n] = comfort_series(
            a_lon[rows, :n], a_lat[rows, :n], a_norm[rows, :n], yaw[rows, :n], dt, windows
        )
        checked[rows, :, :n] = True
    return values, checked


def comfort_within_bounds(
    a_lon: Tensor, a_lat: Tensor, a_norm: Tensor, yaw: Tensor, valid: Tensor, dt: float, windows: Windows
) -> tuple[Tensor, Tensor]:
    """Per-sample comfort checks for left-aligned, variable-length series (inputs as
    :func:`comfort_values`). Returns ``(ok, checked)``, both bool ``[B, 6, T]``: the filtered value
    is strictly inside its bound (True where not checked) / the sample was checked.
    """
    values, checked = comfort_values(a_lon, a_lat, a_norm, yaw, valid, dt, windows)
    return within_comfort_bounds(values) | ~checked, checked
