"""Bird's-eye-view pictures of scenarios and simulated rollouts: a PNG frame or a GIF animation.

One drawing code path: :func:`render_scenario` draws the logged states through the same code as
:func:`render_rollout`, which draws a simulated ego (with the logged ego as a faint ghost) and the
planned trajectory. Everything is in the scenario's local frame (metres); the view is a square
window of ``VIEW_SIZE`` metres that follows the ego, centred ``VIEW_AHEAD`` metres ahead of it.

Only matplotlib's Agg canvas is used (no display, no global backend switch); GIFs are assembled
with Pillow. The map is drawn once per figure; each frame only moves the agents, the ego, its
trail, the plan, the time stamp and the view window.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch, Polygon
from matplotlib.path import Path as MplPath
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from PIL import Image

from av.errors import AvError
from av.fileio import atomic_write_bytes
from av.geometry import box_corners
from av.types import YAW, AgentType, MapData, Scenario, VehicleParams
from av.vehicle import ego_box

VIEW_SIZE = 80.0  # side of the square view window, m
VIEW_AHEAD = 15.0  # the window centre lies this far ahead of the ego rear axle, m
GIF_STRIDE = 2  # draw every GIF_STRIDE-th step
GIF_FPS = 5
PNG_DPI = 110
GIF_DPI = 80
GIF_COLORS = 64  # palette size per GIF frame
PANEL_IN = 6.0  # width of one panel, inches
MARGIN_IN = 0.15  # space left and right of each square axes, inches
LEGEND_IN = 0.6  # height of the legend strip under the panels, inches
TITLE_IN = 0.5  # height of the title strip above the panels, inches
FIG_H_IN = LEGEND_IN + (PANEL_IN - 2 * MARGIN_IN) + TITLE_IN

AGENT_COLORS = {
    AgentType.VEHICLE: "#3b75c4",
    AgentType.PEDESTRIAN: "#f28e1c",
    AgentType.CYCLIST: "#2ca02c",
    AgentType.STATIC: "#8c8c8c",
}
EGO_COLOR = "#d62728"
PLAN_COLOR = "#9b30d9"
ROUTE_COLOR = "#7fb2f0"
DRIVABLE_COLOR = "#e1e1dc"
BACKGROUND_COLOR = "#ffffff"
LANE_COLOR = "#8f8f8f"
CONNECTOR_COLOR = "#b5b5b5"


@dataclass(frozen=True)
class _Track:
    """What one panel shows: a scenario's map and ``T`` steps of ego and agent states.

    ``ego`` ``[T, 5]`` rear-axle states; ``agents`` ``[N, T, 5]`` box-centre states with
    ``agent_valid`` bool ``[N, T]``; ``ghost`` ``[T, 5]`` the logged ego drawn faintly (or None);
    ``planned`` ``[T, H, 3]`` the plan (x, y, yaw) returned at each step, local frame (or None).
    """

    scenario: Scenario
    ego: np.ndarray
    agents: np.ndarray
    agent_valid: np.ndarray
    title: str
    ghost: np.ndarray | None = None
    planned: np.ndarray | None = None
    highlight: str = ""

    @property
    def num_steps(self) -> int:
        return int(self.ego.shape[0])


def render_scenario(
    scenario: Scenario, out: str | Path, parent: Scenario | None = None, step: int | None = None
) -> Path:
    """Draw a scenario's logged drive to ``out`` (``.png``: one frame, ``.gif``: the whole drive).

    The PNG shows step ``step`` (default: ``scenario.history_steps``, where simulation starts);
    a GIF shows every ``GIF_STRIDE``-th step at ``GIF_FPS`` frames per second. With ``parent``,
    the variant (left) and the scenario it was derived from (right) are drawn side by side at the
    same time step and in the same view. The file is written atomically; returns ``out``.
    """
    tracks = [_logged(scenario, _variant_title(scenario))]
    if parent is not None:
        tracks.append(_logged(parent, f"{parent.id}\nparent"))
    default = scenario.history_steps
    return _render(tracks, Path(out), default if step is None else step)


def render_rollout(
    scenario: Scenario,
    out: str | Path,
    ego: np.ndarray,
    agents: np.ndarray,
    agent_valid: np.ndarray,
    title: str = "",
    planned: np.ndarray | None = None,
    highlight: str = "",
    step: int | None = None,
) -> Path:
    """Draw a simulated rollout of ``scenario`` to ``out`` (``.png`` or ``.gif``).

    ``ego`` ``[T, 5]`` simulated rear-axle states; ``agents`` ``[N, T, 5]`` simulated box-centre
    states with ``agent_valid`` bool ``[N, T]``; ``planned`` ``[T, H, 3]`` the trajectory
    (x, y, yaw, local frame) the planner returned at each step, NaN where it returned none.
    Arrays may carry batch padding (more agents than ``scenario.num_agents``, steps past the
    scenario's end): it is ignored, so rows of a :class:`~closedloop.rollout.Rollout` can be
    passed as they are (as numpy, e.g. ``rollout.ego[b].cpu().numpy()``). The logged
    ego is drawn as a faint dashed ghost; ``highlight`` (e.g. ``"collision at t = 4.1 s"``) is
    printed in red on the picture. The PNG shows ``step`` (default: the last step, so the trail
    shows the whole simulated drive). Written atomically; returns ``out``.
    """
    N, T = scenario.num_agents, min(int(np.shape(ego)[0]), scenario.num_steps)
    ego = np.asarray(ego, dtype=np.float64)[:T]
    agents = np.asarray(agents, dtype=np.float64)[:N, :T]
    agent_valid = np.asarray(agent_valid, dtype=bool)[:N, :T]
    if ego.shape != (T, 5) or agents.shape != (N, T, 5) or agent_valid.shape != (N, T):
        raise ValueError(
            f"{scenario.id}: rollout must cover {N} agents x {T} steps, got ego {ego.shape}, "
            f"agents {agents.shape}, agent_valid {agent_valid.shape}"
        )
    plan = None if planned is None else np.asarray(planned, dtype=np.float64)[:T]
    heading = scenario.id + (f"\n{title}" if title else "")
    track = _Track(scenario, ego, agents, agent_valid, heading, scenario.ego[:T], plan, highlight)
    return _render([track], Path(out), T - 1 if step is None else step)


# --------------------------------------------------------------------------- internals
def _logged(s: Scenario, title: str) -> _Track:
    return _Track(s, s.ego, s.agents, s.agent_valid, title)


def _variant_title(s: Scenario) -> str:
    p = s.provenance
    if p is None:
        return f"{s.id}\n{s.source.scene_name} ({s.source.location})"
    return f"{s.id}\nvariant: {p.transform} of {p.parent_id} (seed {p.seed})"


def _render(tracks: Sequence[_Track], out: Path, step: int) -> Path:
    suffix = out.suffix.lower()
    if suffix not in (".png", ".gif"):
        raise AvError(f"{out}: picture must end in .png or .gif")
    T = tracks[0].num_steps
    if suffix == ".png" and not 0 <= step < T:
        raise AvError(f"{tracks[0].scenario.id}: step {step} outside [0, {T})")
    fig = Figure(figsize=(PANEL_IN * len(tracks), FIG_H_IN))
    canvas = FigureCanvasAgg(fig)
    panels = [_Panel(fig, i, len(tracks), tr) for i, tr in enumerate(tracks)]
    _legend(fig, tracks)
    lead = tracks[0]

    def show(t: int) -> None:
        pose = lead.ego[t]
        centre = pose[:2] + VIEW_AHEAD * np.array([np.cos(pose[YAW]), np.sin(pose[YAW])])
        for p in panels:
            p.show(t, centre)

    buf = io.BytesIO()
    if suffix == ".png":
        show(step)
        fig.savefig(buf, format="png", dpi=PNG_DPI, facecolor="white")
    else:
        fig.set_dpi(GIF_DPI)
        frames = []
        for t in [*range(0, T - 1, GIF_STRIDE), T - 1]:
            show(t)
            canvas.draw()
            rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
            frames.append(rgb.quantize(GIF_COLORS, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE))
        frames[0].save(
            buf, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // GIF_FPS, loop=0
        )
    atomic_write_bytes(out, buf.getvalue())
    return out


def _legend(fig: Figure, tracks: Sequence[_Track]) -> None:
    handles: list[Patch | Line2D] = [Patch(fc=EGO_COLOR, ec="k", label="ego")]
    types = np.unique(np.concatenate([t.scenario.agent_types for t in tracks]))
    handles += [Patch(fc=AGENT_COLORS[AgentType(k)], ec="k", label=AgentType(k).name.lower()) for k in types]
    if any(t.ghost is not None for t in tracks):
        handles.append(Patch(fill=False, ec=EGO_COLOR, ls="--", label="logged ego"))
    if any(t.planned is not None for t in tracks):
        handles.append(Line2D([], [], color=PLAN_COLOR, lw=1.5, label="plan"))
    handles += [
        Line2D([], [], color=ROUTE_COLOR, lw=5, label="route"),
        Line2D([], [], color=LANE_COLOR, lw=0.8, label="lane"),
        Line2D([], [], color=CONNECTOR_COLOR, lw=0.8, ls="--", label="connector"),
        Patch(fc=DRIVABLE_COLOR, ec="none", label="drivable"),
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles) if len(tracks) > 1 else -(-len(handles) // 2),
        fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0),
    )


class _Panel:
    """The artists of one axes: static map, moving boxes, trail, plan and texts."""

    def __init__(self, fig: Figure, index: int, count: int, track: _Track) -> None:
        self.track = track
        s = track.scenario
        side = PANEL_IN - 2 * MARGIN_IN
        width = PANEL_IN * count
        ax = fig.add_axes(
            ((PANEL_IN * index + MARGIN_IN) / width, LEGEND_IN / FIG_H_IN, side / width, side / FIG_H_IN)
        )
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_facecolor(BACKGROUND_COLOR)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(track.title, fontsize=9)
        self.ax = ax
        _draw_map(ax, s.map, s.route)
        self.ego_corners = _ego_corners(track.ego, s.ego_vehicle)
        self.agent_corners = _agent_corners(track.agents, s.agent_sizes)
        self.agent_colors = np.array([AGENT_COLORS[AgentType(k)] for k in s.agent_types], dtype=object)

        self.agents = PolyCollection([], edgecolors="k", linewidths=0.5, alpha=0.85, zorder=4)
        self.agent_ticks = LineCollection([], colors="k", linewidths=0.8, zorder=5)
        ax.add_collection(self.agents)
        ax.add_collection(self.agent_ticks)
        self.ghost = self.ghost_corners = None
        if track.ghost is not None:
            self.ghost_corners = _ego_corners(track.ghost, s.ego_vehicle)
            (self.ghost_trail,) = ax.plot([], [], color=EGO_COLOR, lw=1.0, ls="--", alpha=0.35, zorder=5)
            self.ghost = ax.add_patch(
                Polygon(np.zeros((4, 2)), fill=False, ec=EGO_COLOR, ls="--", lw=1.0, alpha=0.5, zorder=5)
            )
        (self.trail,) = ax.plot([], [], color=EGO_COLOR, lw=1.6, alpha=0.75, zorder=6)
        (self.plan,) = ax.plot([], [], color=PLAN_COLOR, lw=1.5, marker=".", ms=2.5, zorder=7)
        self.ego = ax.add_patch(Polygon(np.zeros((4, 2)), fc=EGO_COLOR, ec="k", lw=0.8, zorder=8))
        (self.ego_tick,) = ax.plot([], [], color="k", lw=1.0, zorder=9)
        box = dict(boxstyle="round,pad=0.25", fc="white", ec="none", alpha=0.85)
        self.clock = ax.text(
            0.02, 0.98, "", transform=ax.transAxes, va="top", fontsize=10, bbox=box, zorder=10
        )
        if track.highlight:
            ax.text(
                0.5, 0.98, textwrap.fill(track.highlight, 60), transform=ax.transAxes, va="top", ha="center", fontsize=9,
                color="white", bbox=dict(boxstyle="round,pad=0.3", fc=EGO_COLOR, ec="none"), zorder=10,
            )
        _scale_bar(ax)

    def show(self, t: int, centre: np.ndarray) -> None:
        """Move the artists to step ``t`` (clipped to this track's length) and the view to ``centre``."""
        tr = self.track
        t = min(t, tr.num_steps - 1)
        valid = tr.agent_valid[:, t]
        boxes = self.agent_corners[valid, t]
        self.agents.set_verts(list(boxes))
        self.agents.set_facecolors(list(self.agent_colors[valid]))
        front = 0.5 * (boxes[:, 0] + boxes[:, 3])
        centres = boxes.mean(axis=1)
        self.agent_ticks.set_segments(list(np.stack([centres, front], axis=1)))
        ego = self.ego_corners[t]
        self.ego.set_xy(ego)
        self.ego_tick.set_data(*np.stack([ego.mean(axis=0), 0.5 * (ego[0] + ego[3])], axis=1))
        self.trail.set_data(tr.ego[: t + 1, 0], tr.ego[: t + 1, 1])
        if self.ghost is not None:
            self.ghost.set_xy(self.ghost_corners[t])
            self.ghost_trail.set_data(tr.ghost[: t + 1, 0], tr.ghost[: t + 1, 1])
        if tr.planned is not None:
            p = tr.planned[t]
            p = p[np.isfinite(p[:, :2]).all(axis=1)]
            self.plan.set_data(p[:, 0], p[:, 1])
        seconds = tr.scenario.timestamps[t] - tr.scenario.timestamps[0]
        past = " (history)" if t < tr.scenario.history_steps else ""
        self.clock.set_text(f"t = {seconds:.1f} s{past}")
        half = 0.5 * VIEW_SIZE
        self.ax.set_xlim(centre[0] - half, centre[0] + half)
        self.ax.set_ylim(centre[1] - half, centre[1] + half)


def _scale_bar(ax: Axes) -> None:
    """A 10 m scale bar in the lower right corner (the scale is the same in every frame)."""
    bar = AnchoredSizeBar(
        ax.transData, 10.0, "10 m", "lower right", pad=0.4, frameon=True, size_vertical=0.4,
        fontproperties={"size": 8},
    )
    bar.patch.set_alpha(0.8)
    bar.set_zorder(10)
    ax.add_artist(bar)


def _ego_corners(ego: np.ndarray, v: VehicleParams) -> np.ndarray:
    """Ego box corners ``[T, 4, 2]`` (FL, RL, RR, FR) from rear-axle states ``[T, 5]``.

    The box centre lies ``v.rear_axle_to_center`` metres ahead of the rear axle along the heading.
    """
    dims = torch.tensor([v.length, v.width, v.wheelbase, v.rear_axle_to_center], dtype=torch.float64)
    box = ego_box(torch.tensor(ego[:, :3], dtype=torch.float64), dims)
    return box_corners(box[:, :2], box[:, 2], box[:, 3], box[:, 4]).numpy()


def _agent_corners(agents: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Agent box corners ``[N, T, 4, 2]`` from states ``[N, T, 5]`` and sizes ``[N, 2]``."""
    a = torch.tensor(agents, dtype=torch.float64)
    sz = torch.tensor(sizes, dtype=torch.float64).reshape(-1, 1, 2).expand(-1, a.shape[1], 2)
    return box_corners(a[..., :2], a[..., YAW], sz[..., 0], sz[..., 1]).numpy()


def _draw_map(ax: Axes, m: MapData, route: np.ndarray) -> None:
    """Static map artists: drivable surface (:func:`drivable_paths`), lane centrelines (connectors
    dashed), route lanes."""
    rings, polygons = drivable_paths(m)
    ax.add_collection(PolyCollection([p.vertices for p in polygons], facecolors=DRIVABLE_COLOR, edgecolors="none", zorder=0))
    if len(rings.vertices):
        ax.add_patch(PathPatch(rings, fc=DRIVABLE_COLOR, ec="#b9b9b3", lw=0.6, zorder=0))
    lanes = [m.lane(i)[:, :2] for i in range(m.num_lanes)]
    conn = m.lane_is_connector
    ax.add_collection(
        LineCollection([lanes[i] for i in np.flatnonzero(~conn)], colors=LANE_COLOR, linewidths=0.7, zorder=2)
    )
    ax.add_collection(
        LineCollection(
            [lanes[i] for i in np.flatnonzero(conn)], colors=CONNECTOR_COLOR, linewidths=0.6,
            linestyles=(0, (4, 3)), zorder=2,
        )
    )
    ax.add_collection(
        LineCollection([lanes[i] for i in route], colors=ROUTE_COLOR, linewidths=5, alpha=0.45, zorder=1)
    )


def drivable_paths(m: MapData) -> tuple[MplPath, list[MplPath]]:
    """The drivable surface as drawn: the drivable rings (one even-odd path, see
    :func:`_drivable_path`) and every lane / connector polygon. It is the evaluator's (nuPlan's
    drivable area is the union of the drivable-area layer, lanes and connectors), so a car drawn
    off the grey surface is one that the drivable-area metric flags."""
    o, pts = m.lane_polygon_offsets, m.lane_polygon_points
    polygons = [MplPath(pts[o[k] : o[k + 1]]) for k in range(len(o) - 1) if o[k + 1] - o[k] >= 3]
    return _drivable_path(m), polygons


def _drivable_path(m: MapData) -> MplPath:
    """The drivable rings ``[K]`` as one compound path that Agg's non-zero fill renders even-odd.

    A ring inside an odd number of other rings is a hole: it is oriented clockwise and the others
    counter-clockwise, so the winding number alternates 1, 0, 1, ... with the nesting depth
    (exact for the non-crossing rings of a map).
    """
    o, pts = m.drivable_ring_offsets, m.drivable_ring_points
    rings = [pts[o[k] : o[k + 1]] for k in range(len(o) - 1) if o[k + 1] - o[k] >= 3]
    firsts = np.array([r[0] for r in rings]).reshape(-1, 2)
    # inside[k, j]: ring k's first vertex lies inside ring j (once per picture, not per frame).
    inside = np.zeros((len(rings), len(rings)), dtype=bool)
    for j, r in enumerate(rings):
        inside[:, j] = MplPath(r).contains_points(firsts)
    np.fill_diagonal(inside, False)
    hole = inside.sum(axis=1) % 2 == 1
    verts, codes = [], []
    for ring, is_hole in zip(rings, hole):
        if (_signed_area(ring) > 0) == is_hole:
            ring = ring[::-1]
        verts += [ring, ring[:1]]
        codes += [MplPath.MOVETO] + [MplPath.LINETO] * (len(ring) - 1) + [MplPath.CLOSEPOLY]
    return MplPath(np.concatenate(verts) if verts else np.zeros((0, 2)), codes or None)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring ``[M, 2]``: positive when counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def render_attribution(
    scenario: Scenario,
    out: str | Path,
    ego: np.ndarray,
    agents: np.ndarray,
    agent_sizes: np.ndarray,
    agent_valid: np.ndarray,
    agent_weight: np.ndarray,
    lanes: np.ndarray,
    lane_weight: np.ndarray,
    plan: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """A PNG bird's-eye view of what a planner attended to at one step (local frame, metres).

    ``ego`` ``[5]`` rear-axle state; ``agents`` ``[N, 5]`` box centres of ``agent_sizes``
    ``[N, 2]`` (length, width) with ``agent_valid`` bool ``[N]`` and ``agent_weight`` ``[N]``
    (attribution, >= 0; agents are shaded red by it and the top three labelled with their
    share); ``lanes`` ``[L, P, 2]`` centrelines drawn with width and colour by ``lane_weight``
    ``[L]``; ``plan`` ``[H, 2]`` the plan. Written atomically; returns ``out``.
    """
    from matplotlib import colormaps

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise AvError(f"{out}: attribution picture must end in .png")
    fig = Figure(figsize=(PANEL_IN, PANEL_IN))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(textwrap.fill(title, 70), fontsize=8)
    _draw_map(ax, scenario.map, scenario.route)
    aw = np.where(agent_valid, np.nan_to_num(agent_weight), 0.0)
    lw = np.nan_to_num(lane_weight)
    top = max(float(aw.max(initial=0.0)), float(lw.max(initial=0.0)), 1e-12)
    reds, blues = colormaps["Reds"], colormaps["Blues"]
    segs = [lane for lane, w in zip(lanes, lw, strict=True) if w > 0]
    weights = lw[lw > 0] / top
    ax.add_collection(LineCollection(segs, colors=[blues(0.35 + 0.65 * w) for w in weights],
                                     linewidths=[1.0 + 5.0 * w for w in weights], zorder=3))
    corners = _agent_corners(agents[:, None], agent_sizes)[:, 0]  # [N, 4, 2]
    shown = np.flatnonzero(agent_valid)
    ax.add_collection(PolyCollection(list(corners[shown]), facecolors=[reds(0.15 + 0.85 * aw[i] / top) for i in shown],
                                     edgecolors="k", linewidths=0.5, zorder=4))
    for rank, i in enumerate(shown[np.argsort(-aw[shown])][:3]):
        if aw[i] > 0:
            ax.annotate(f"#{rank + 1} {aw[i] / aw.sum():.0%}", agents[i, :2], fontsize=7, zorder=10,
                        xytext=(4, 4), textcoords="offset points")
    ax.add_patch(Polygon(_ego_corners(ego[None], scenario.ego_vehicle)[0], fc=EGO_COLOR, ec="k", lw=0.8, zorder=8))
    if plan is not None:
        p = plan[np.isfinite(plan).all(axis=1)]
        ax.plot(p[:, 0], p[:, 1], color=PLAN_COLOR, lw=1.5, marker=".", ms=2.5, zorder=7)
    centre = ego[:2] + VIEW_AHEAD * np.array([np.cos(ego[YAW]), np.sin(ego[YAW])])
    half = 0.5 * VIEW_SIZE
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    _scale_bar(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, facecolor="white")
    atomic_write_bytes(out, buf.getvalue())
    return out
