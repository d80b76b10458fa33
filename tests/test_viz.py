"""Bird's-eye-view pictures: valid PNG/GIF files with the expected content, and `av viz`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import build_scenario
from PIL import Image, ImageChops

from av.cli.main import main
from av.errors import AvError
from av.types import Provenance, Scenario
from av.viz import EGO_COLOR, GIF_DPI, PANEL_IN, PLAN_COLOR, render_rollout, render_scenario
from scenarios.store import write_store


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _pixels_near(img: Image.Image, hex_color: str, tol: int = 12) -> int:
    """How many pixels have (about) the colour ``hex_color``."""
    a = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(a - _rgb(hex_color)).max(axis=-1) <= tol).sum())


def _variant(parent: Scenario) -> Scenario:
    return build_scenario(
        id=f"{parent.id}-fast", ego_speed=8.0,
        provenance=Provenance(parent_id=parent.id, transform="speed_up", params={"factor": 1.6}, seed=3),
    )


def test_png_is_one_valid_frame(tmp_path: Path, scenario: Scenario) -> None:
    out = render_scenario(scenario, tmp_path / "a.png")
    assert out == tmp_path / "a.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 300
        assert _pixels_near(img, EGO_COLOR) > 50  # the ego box is drawn
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


def test_png_step_changes_the_picture(tmp_path: Path, scenario: Scenario) -> None:
    a = render_scenario(scenario, tmp_path / "a.png", step=0)
    b = render_scenario(scenario, tmp_path / "b.png", step=scenario.num_steps - 1)
    c = render_scenario(scenario, tmp_path / "c.png", step=0)
    with Image.open(a) as ia, Image.open(b) as ib, Image.open(c) as ic:
        assert ImageChops.difference(ia.convert("RGB"), ib.convert("RGB")).getbbox() is not None
        assert ImageChops.difference(ia.convert("RGB"), ic.convert("RGB")).getbbox() is None  # deterministic


def test_gif_animates_the_whole_drive(tmp_path: Path, scenario: Scenario) -> None:
    out = render_scenario(scenario, tmp_path / "a.gif")
    with Image.open(out) as img:
        assert img.format == "GIF" and img.is_animated
        assert img.n_frames == len(range(0, scenario.num_steps - 1, 2)) + 1  # every 2nd step and the last
        img.seek(0)
        first = img.convert("RGB")
        img.seek(img.n_frames - 1)
        last = img.convert("RGB")
        assert ImageChops.difference(first, last).getbbox() is not None
        assert _pixels_near(last, EGO_COLOR, tol=30) > 20
    assert out.stat().st_size < 3_000_000


def test_variant_with_parent_is_side_by_side(tmp_path: Path, scenario: Scenario) -> None:
    single = render_scenario(scenario, tmp_path / "single.png")
    pair = render_scenario(_variant(scenario), tmp_path / "pair.png", parent=scenario)
    with Image.open(single) as a, Image.open(pair) as b:
        assert b.width > 1.8 * a.width and b.height == a.height
        # the right half shows the parent at the same step: it equals the single picture's panel,
        # except for the title text (variant vs parent) above the axes
        right = np.asarray(b.convert("RGB"))[:, a.width :]
        assert _pixels_near(Image.fromarray(right), EGO_COLOR) > 50


def test_rollout_draws_ghost_plan_and_highlight(tmp_path: Path, scenario: Scenario) -> None:
    T, H = scenario.num_steps, 8
    ego = np.array(scenario.ego)
    ego[:, 1] = np.linspace(0.0, 2.5, T)  # drifts left of the logged ego
    planned = np.full((T, H, 3), np.nan)
    planned[::5, :, 0] = ego[::5, 0, None] + np.arange(1, H + 1) * 2.0
    planned[::5, :, 1] = ego[::5, 1, None]
    # batch padding: two more agents than the scenario has and 5 steps past its end
    N = scenario.num_agents
    padded_agents = np.zeros((N + 2, T + 5, 5))
    padded_agents[:N, :T] = scenario.agents
    padded_valid = np.zeros((N + 2, T + 5), bool)
    padded_valid[:N, :T] = scenario.agent_valid
    padded_ego = np.concatenate([ego, np.zeros((5, 5))])
    out = render_rollout(
        scenario, tmp_path / "r.png", padded_ego, padded_agents, padded_valid,
        title="idm: score 0.31", planned=planned, highlight="off-road", step=T - 1 - (T - 1) % 5,
    )
    plain = render_rollout(scenario, tmp_path / "p.png", ego, scenario.agents, scenario.agent_valid,
                           title="idm: score 0.31", step=T - 1 - (T - 1) % 5)
    with Image.open(out) as img, Image.open(plain) as ref:
        assert _pixels_near(img, PLAN_COLOR) > 20 and _pixels_near(ref, PLAN_COLOR) == 0
    gif = render_rollout(scenario, tmp_path / "r.gif", ego, scenario.agents, scenario.agent_valid, planned=planned)
    with Image.open(gif) as img:
        assert img.n_frames > 1


def test_rollout_shape_mismatch_is_an_error(tmp_path: Path, scenario: Scenario) -> None:
    with pytest.raises(ValueError, match="3 agents x 40 steps"):
        render_rollout(scenario, tmp_path / "r.png", scenario.ego, scenario.agents[:2], scenario.agent_valid)


def test_ego_box_is_ahead_of_the_rear_axle() -> None:
    from av.types import VehicleParams
    from av.viz import _ego_corners

    v = VehicleParams(length=4.0, width=2.0, rear_axle_to_center=1.5)
    ego = np.array([[10.0, 20.0, np.pi / 2, 0.0, 3.0]])  # heading north
    c = _ego_corners(ego, v)[0]
    # centre (10, 21.5); FL, RL, RR, FR
    assert np.allclose(c, [[9.0, 23.5], [9.0, 19.5], [11.0, 19.5], [11.0, 23.5]])


def test_bad_output_and_step_are_refused(tmp_path: Path, scenario: Scenario) -> None:
    with pytest.raises(AvError, match="must end in .png or .gif"):
        render_scenario(scenario, tmp_path / "a.jpg")
    with pytest.raises(AvError, match="step 40 outside"):
        render_scenario(scenario, tmp_path / "a.png", step=40)
    assert list(tmp_path.iterdir()) == []


def _store(tmp_path: Path) -> Path:
    base = build_scenario()
    path = tmp_path / "store"
    write_store(path, [base, _variant(base)])
    return path


def test_cli_viz_writes_png_and_gif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path)
    assert main(["viz", str(store), "hand-0", "--out", str(tmp_path / "v.png")]) == 0
    assert main(["viz", str(store), "hand-0-fast", "--out", str(tmp_path / "v.gif"), "--with-parent"]) == 0
    with Image.open(tmp_path / "v.png") as png, Image.open(tmp_path / "v.gif") as gif:
        assert png.format == "PNG" and gif.n_frames > 1
        assert gif.width == round(2 * PANEL_IN * GIF_DPI)  # variant and parent side by side
    assert str(tmp_path / "v.png") in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["hand-0", "--out", "x.jpg"], "must end in .png or .gif"),
        (["ghost", "--out", "x.png"], "no scenario with id 'ghost'"),
        (["hand-0", "--out", "x.png", "--with-parent"], "not a variant"),
    ],
    ids=["bad-extension", "unknown-id", "not-a-variant"],
)
def test_cli_viz_rejects_bad_input_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    store = _store(tmp_path)
    args = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    assert main(["viz", str(store), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("av: error:") and message in err
    assert not list(tmp_path.glob("x.*"))


def test_drivable_fill_follows_the_even_odd_rule() -> None:
    # Agg fills non-zero; _drivable_path orients holes so the fill matches MapData's even-odd rule.
    from conftest import build_map, rectangle
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch

    from av.viz import _drivable_path

    # a square with a hole holding an island (one ring given clockwise), and a separate square
    rings = [rectangle(0, 0, 10, 10), rectangle(2, 2, 8, 8), rectangle(4, 4, 6, 6)[::-1], rectangle(20, 0, 30, 10)]
    fig = Figure(figsize=(3, 1), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 30)
    ax.set_ylim(0, 10)
    ax.add_patch(PathPatch(_drivable_path(build_map([], [], [], [], [], rings)), fc="black", lw=0))
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    probes = [(1, 1), (3, 3), (5, 5), (25, 5), (15, 5)]
    px = ax.transData.transform(probes)
    filled = [bool(rgba[rgba.shape[0] - int(y), int(x), 0] < 128) for x, y in px]
    assert filled == [True, False, True, True, False]


def test_real_drive_picture(tmp_path: Path, real_scenarios: list[Scenario]) -> None:
    from av.viz import DRIVABLE_COLOR

    s = real_scenarios[0]
    with Image.open(render_scenario(s, tmp_path / f"{s.id}.png")) as img:
        area = img.width * img.height
        assert _pixels_near(img, EGO_COLOR) > 50
        assert _pixels_near(img, DRIVABLE_COLOR, tol=6) > 0.1 * area  # the road around the ego is drawn


def test_constant_velocity_off_the_road_scores_dac_0_and_is_drawn_off_the_grey(tmp_path: Path) -> None:
    """The road ends at x = 60 m; a constant-velocity ego at 10 m/s drives on past it. The
    drivable-area metric and the picture use the same surface (:func:`av.viz.drivable_paths`)."""
    from av.batch import collate
    from av.viz import drivable_paths, render_rollout
    from closedloop.driver import rollout as drive
    from closedloop.evaluator import evaluate, reasons
    from closedloop.planner import make_planner
    from closedloop.sim import make_simulator

    s = build_scenario(num_steps=90, history_steps=10, num_agents=0, ego_speed=10.0, road_length=60.0)
    sim = make_simulator("builtin", agents="log")
    r = drive(sim, collate([s]), make_planner("constant_velocity"), record_plans=False)
    out = evaluate(r)
    assert float(out["drivable_area"][0]) == 0.0 and float(out["cls"][0]) == 0.0
    t_off = float(out["drivable_area_time"][0])
    assert 5.0 < t_off < 6.5 and f"off the drivable area at t = {t_off:.1f} s" in reasons(out)[0]

    rings, polygons = drivable_paths(s.map)
    def on_grey(xy: np.ndarray) -> bool:
        return bool(rings.contains_point(xy) or any(p.contains_point(xy) for p in polygons))

    ego = r.ego[0].numpy()
    k_off = int(round(t_off / s.dt))
    assert on_grey(ego[s.history_steps, :2]) and on_grey(ego[k_off - 15, :2])
    assert not on_grey(ego[k_off + 10, :2])  # drawn off the grey surface, as scored
    out_png = render_rollout(s, tmp_path / "off.png", ego, r.agents[0].numpy(), r.agent_valid[0].numpy(),
                             highlight=reasons(out)[0])
    img = Image.open(out_png)
    assert img.format == "PNG" and _pixels_near(img, EGO_COLOR) > 0
