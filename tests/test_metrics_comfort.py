"""Comfort metrics: Savitzky-Golay matrices against SciPy, every bound just inside and just outside,
and METRICS.md case 12 through the evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import savgol_filter

from closedloop.evaluator import comfort
from closedloop.evaluator.comfort import NAVSIM_V1, NUPLAN, QUANTITIES, comfort_series, comfort_within_bounds
from test_metrics_nuplan import DT, score, speed_profile, track


def _flags(a_lon: np.ndarray, a_lat: np.ndarray, a_norm: np.ndarray, yaw: np.ndarray, windows=NUPLAN) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    """Is every sample of each quantity inside its bound? (one scenario)"""
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))[None]  # noqa: E731
    ok, checked = comfort_within_bounds(t(a_lon), t(a_lat), t(a_norm), t(yaw), torch.ones(1, len(a_lon), dtype=torch.bool), DT, windows)
    assert bool(checked.all())
    return {q: bool(ok[0, i].all()) for i, q in enumerate(QUANTITIES)}


@pytest.mark.parametrize("n,window,order,deriv", [(41, 8, 2, 0), (41, 15, 2, 1), (6, 8, 2, 0), (12, 15, 2, 1),
                                                  (41, 5, 3, 2), (41, 41, 2, 0), (30, 5, 2, 1)])
def test_matrix_filter_equals_scipy(n: int, window: int, order: int, deriv: int) -> None:
    y = np.random.default_rng(n + window).normal(size=(3, n))
    ours = comfort.savgol(torch.as_tensor(y), window, order, deriv, DT).numpy()
    ref = savgol_filter(y, min(window, n), order, deriv=deriv, delta=DT, mode="interp", axis=-1)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    again = comfort.sg_matrix(n, window, order, deriv, DT)  # cached per (n, window, order, deriv, dt)
    assert again.data_ptr() == comfort.sg_matrix(n, window, order, deriv, DT).data_ptr()
    assert comfort.sg_matrix(n, window, order, deriv, 2 * DT).data_ptr() != again.data_ptr()


def test_unwrap_removes_two_pi_jumps() -> None:
    true = np.cumsum(np.full(50, 0.3))
    wrapped = (true + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(comfort.unwrap(torch.as_tensor(wrapped)).numpy(), true - true[0] + wrapped[0], atol=1e-9)


def test_step_in_deceleration_case_12() -> None:
    a = np.zeros(41)
    a[20:] = -3.0
    zero = np.zeros(41)
    s = comfort_series(torch.as_tensor(a), torch.as_tensor(zero), torch.as_tensor(np.abs(a)), torch.as_tensor(zero), DT, NUPLAN)
    assert float(s[3].abs().max()) == pytest.approx(3.01, abs=0.01)  # lon. jerk < 4.13
    assert all(_flags(a, zero, np.abs(a), zero).values())
    v1 = comfort_series(torch.as_tensor(a), torch.as_tensor(zero), torch.as_tensor(np.abs(a)), torch.as_tensor(zero), DT, NAVSIM_V1)
    assert float(v1[0].min()) == pytest.approx(-3.65, abs=0.01) and float(v1[0].max()) == pytest.approx(0.74, abs=0.01)


@pytest.mark.parametrize("value,inside", [(2.39, True), (2.41, False), (-4.04, True), (-4.06, False)])
def test_lon_acceleration_bound(value: float, inside: bool) -> None:
    a = np.full(30, value)
    f = _flags(a, np.zeros(30), np.abs(a), np.zeros(30))
    assert f["lon_accel"] == inside and f["lon_jerk"] and f["jerk"]


@pytest.mark.parametrize("value,inside", [(4.88, True), (4.90, False), (-4.88, True), (-4.90, False)])
def test_lat_acceleration_bound(value: float, inside: bool) -> None:
    a = np.full(30, value)
    assert _flags(np.zeros(30), a, np.abs(a), np.zeros(30))["lat_accel"] == inside


@pytest.mark.parametrize("rate,inside", [(0.94, True), (0.96, False), (-0.94, True), (-0.96, False)])
def test_yaw_rate_bound(rate: float, inside: bool) -> None:
    yaw = rate * np.arange(30) * DT
    f = _flags(np.zeros(30), np.zeros(30), np.zeros(30), yaw)
    assert f["yaw_rate"] == inside and f["yaw_accel"]


@pytest.mark.parametrize("accel,inside", [(1.92, True), (1.94, False), (-1.92, True), (-1.94, False)])
def test_yaw_acceleration_bound(accel: float, inside: bool) -> None:
    t = np.arange(5) * DT  # 0.4 s: the yaw rate stays under 0.8 rad/s
    f = _flags(np.zeros(5), np.zeros(5), np.zeros(5), 0.5 * accel * t**2)
    assert f["yaw_accel"] == inside and f["yaw_rate"]


def _scipy_jerk(a: np.ndarray, window: int = 15) -> float:
    smooth = savgol_filter(a, 8, 2, deriv=0, delta=DT, mode="interp")
    return float(np.abs(np.round(savgol_filter(smooth, min(window, len(a)), 2, deriv=1, delta=DT, mode="interp"), 8)).max())


@pytest.mark.parametrize("name,bound", [("lon_jerk", 4.13), ("jerk", 8.37)])
@pytest.mark.parametrize("margin,inside", [(-0.01, True), (0.01, False)])
def test_jerk_bounds(name: str, bound: float, margin: float, inside: bool) -> None:
    """Acceleration ramps whose SciPy-filtered peak jerk is 0.01 under / over the bound."""
    ramp = np.arange(30) * DT
    slope = (bound + margin) / _scipy_jerk(ramp)  # the filter is linear: peak scales with the slope
    a = slope * ramp
    assert _scipy_jerk(a) == pytest.approx(bound + margin, abs=1e-6)
    zero = np.zeros(30)
    f = _flags(a, zero, zero, zero) if name == "lon_jerk" else _flags(zero, zero, a, zero)
    assert f[name] == inside


def test_constant_hard_braking_is_uncomfortable_case_12() -> None:
    T = 30
    hard = score(track(T, v=20.0, a=-4.5), accel=[np.tile([-4.5, 0.0], (T, 1))])
    assert hard["comfort"] == 0.0 and hard["pdms_c"] == 0.0
    assert hard["comfort_failed"] == 1  # lon. acceleration only
    soft = score(track(T, v=20.0, a=-3.5), accel=[np.tile([-3.5, 0.0], (T, 1))])
    assert soft["comfort"] == 1.0 and soft["pdms_c"] == 1.0


def test_constant_yaw_rate_of_one_is_uncomfortable_case_12() -> None:
    T = 30
    t = np.arange(T) * DT
    ego = speed_profile([3.0] * T)
    ego[:, 2] = (t + math.pi) % (2 * math.pi) - math.pi  # 1 rad/s
    out = score(ego, yaw_rate=[np.ones(T)])
    assert out["comfort"] == 0.0 and out["pdms_c"] == 0.0
    names = [q for j, q in enumerate(QUANTITIES) if int(out["comfort_failed"]) >> j & 1]
    assert names == ["yaw_rate"]
