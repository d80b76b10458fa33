"""The evaluation run: scenario store -> batches -> closed-loop simulation -> evaluator -> table.

``run_eval(EvalConfig(store, planner, agents, out))`` simulates every scenario of the store with
one planner and one background-agent mode, scores each rollout with the behavior evaluator and
merges the rows into the run directory:

* ``RUN_DIR/results.parquet``: one row per scenario x planner x agent mode, one column per
  metric (``scenario_id``, ``planner``, ``agents`` first) and ``reasons``, why the scenario lost
  points in words (:func:`closedloop.evaluator.reasons`); ``schema_version`` in the file's
  metadata. Rows of the same planner and agent mode are replaced, others kept.
* ``RUN_DIR/summary.json``: one row per planner x agent mode with the scenario count, the mean
  of every metric, its 95 % bootstrap confidence interval (fixed seed) and ``<metric>_n``, the
  number of scenarios it is over (undefined values, NaN or a placeholder such as a
  ``first_at_fault_step`` of -1, are left out), and the worst
  scenarios (lowest CLS) with the reasons they lost points and their GIF under ``media/``;
  the planner's cost: ``params`` (learned planners) and ``latency_ms`` (:func:`planner_cost`).
* ``RUN_DIR/report.html`` (see :mod:`closedloop.report`), regenerated after every run.

Each file is written atomically, and each planner x agent mode is committed as soon as it is
done. A planner x agent mode is keyed by what it is made from (:func:`run_inputs`: the store's
content digest, the planner and its settings, the simulator and its settings, batch size,
device, package and schema version); its summary row records those inputs and their ``key``.
With ``resume`` a finished group with the same key is kept, any other is redone, and an
interrupted group continues from its last finished batch: every batch's rows are written
atomically under ``RUN_DIR/partial/<planner>--<agents>--<key>/`` and merged at the end.
Runs are deterministic: the same store and settings give identical tables, resumed or not.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from av import __version__
from av.batch import collate
from av.errors import AvError
from av.fileio import atomic_write_bytes, atomic_write_json
from av.keys import digest, path_digests, tree_digest
from av.settings import settings_dict
from av.types import Scenario
from closedloop.evaluator import PLACEHOLDERS, UNAVERAGED, Reference, evaluate, reasons
from closedloop.planner import Planner, make_planner, planner_settings
from closedloop.rollout import Rollout
from closedloop.driver import rollout as drive
from closedloop.sim import SimConfig, make_simulator
from scenarios.store import iter_store, store_count

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
RESULTS = "results.parquet"
SUMMARY = "summary.json"
MEDIA = "media"
PARTIAL = "partial"
KEYS = ("scenario_id", "planner", "agents")
#: String columns of the results that are not metrics: why the scenario lost points, in words.
TEXT = ("reasons",)
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
#: What a planning call costs, in each summary row: parameter count, median batch-1 CPU latency.
COST_KEYS = ("params", "latency_ms")
LATENCY_CALLS = 20


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: ``planner`` with ``agents`` background agents on every scenario of ``store``."""

    store: Path = field(metadata={"help": "scenario store directory"})
    planner: str = field(metadata={"help": "registered planner name or package.module:factory"})
    out: Path = field(metadata={"help": "run directory (results, summary, report)"})
    agents: Literal["log", "idm"] = field(
        default="log", metadata={"help": "background agents: log replay (non-reactive) or IDM (reactive)"})
    planner_settings: Mapping[str, Any] = field(
        default_factory=dict, metadata={"help": "planner settings (keys and values as for make_planner)"})
    sim: str = field(default="builtin", metadata={"help": "simulator backend (registered name)"})
    batch_size: int = field(default=64, metadata={"help": "scenarios simulated together"})
    plan_every: int = field(default=1, metadata={"help": "call the planner every k steps (10 Hz steps)"})
    worst: int = field(default=3, metadata={"help": "worst scenarios (lowest CLS) rendered per planner"})
    device: str = field(default="cpu", metadata={"help": "torch device for simulation and planning"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads during the run (0: torch's default; 1 is fastest for small batches)"})
    resume: bool = field(default=False, metadata={
        "help": "keep planner x agent modes already in the run with the same inputs; continue an interrupted one"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    report: bool = field(default=True, metadata={"help": "regenerate report.html after the run"})

    def validate(self) -> "EvalConfig":
        """Raise :class:`AvError` naming the first bad option; return ``self``."""
        if self.sim == "carla":
            raise AvError("--sim carla: CARLA runs one scenario at a time; use `av carla run`")
        if self.threads < 0:
            raise AvError(f"--threads must be >= 0, got {self.threads}")
        for name in ("batch_size", "plan_every"):
            if int(getattr(self, name)) < 1:
                raise AvError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.worst < 0:
            raise AvError(f"--worst must be >= 0, got {self.worst}")
        if self.agents not in ("log", "idm"):
            raise AvError(f"--agents must be 'log' or 'idm', got {self.agents!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise AvError(f"--device {self.device}: CUDA is not available on this machine")
        return self


@dataclass(frozen=True)
class ResultTable:
    """Per-scenario results: one row per scenario x planner x agent mode.

    ``table`` is a :class:`pyarrow.Table` with the string columns :data:`KEYS` and one float64
    column per metric (NaN where a metric is undefined for a scenario).
    """

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.table.column_names if c not in KEYS and c not in TEXT]

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def equals(self, other: "ResultTable") -> bool:
        """Same columns in the same order and the same values (NaN equals NaN)."""
        if self.table.schema != other.table.schema or len(self) != len(other):
            return False
        for name in self.table.column_names:
            a, b = self.column(name), other.column(name)
            same = np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else bool(np.all(a == b))
            if not same:
                return False
        return True

    def select(self, planner: str, agents: str) -> "ResultTable":
        """The rows of one planner x agent mode."""
        p = np.asarray(self.column("planner")) == planner
        a = np.asarray(self.column("agents")) == agents
        return ResultTable(self.table.filter(pa.array(p & a)))


# --------------------------------------------------------------------------- evaluation


def _batches(store: Path, batch_size: int) -> Iterator[list[Scenario]]:
    """Scenarios of ``store`` in store order, in lists of at most ``batch_size`` sharing ``dt``."""
    pending: dict[float, list[Scenario]] = {}
    for s in iter_store(store):
        group = pending.setdefault(round(s.dt, 9), [])
        group.append(s)
        if len(group) == batch_size:
            yield group
            pending[round(s.dt, 9)] = []
    for group in pending.values():
        if group:
            yield group


@dataclass
class _Worst:
    """A scenario kept for rendering: its rollout slice (numpy, local frame) and its scores."""

    scenario: Scenario
    scores: dict[str, float]
    reasons: list[str]
    ego: np.ndarray
    agents: np.ndarray
    agent_valid: np.ndarray
    planned: np.ndarray | None


def _slice(rollout: Rollout, i: int, scenario: Scenario) -> tuple[np.ndarray, ...]:
    T, N = scenario.num_steps, scenario.num_agents
    planned = None if rollout.planned is None else rollout.planned[i, :T].cpu().numpy()
    return (
        rollout.ego[i, :T].cpu().numpy(),
        rollout.agents[i, :N, :T].cpu().numpy(),
        rollout.agent_valid[i, :N, :T].cpu().numpy(),
        planned,
    )


def _rank_key(w: _Worst) -> tuple[float, str]:
    cls = w.scores.get("cls", math.nan)
    return (cls if math.isfinite(cls) else -1.0, w.scenario.id)


@dataclass
class _Part:
    """The results of one batch: its rows and its ``worst`` candidates (lowest CLS first)."""

    rows: list[dict[str, Any]]
    worst: list[_Worst]


def _simulator(config: EvalConfig) -> tuple[str, SimConfig]:
    """The simulator backend and its settings for ``config``."""
    return config.sim, SimConfig(agents=config.agents)


#: The planner whose progress normalises NAVSIM's EP (injected into the evaluator, as NAVSIM does).
PDMS_REFERENCE = "pdm_closed"


def _pdms_reference(config: EvalConfig) -> Reference:
    """PDM-Closed driven with log-replayed agents on the run's simulator, device and plan rate."""
    name, _ = _simulator(config)
    sim = make_simulator(name, **settings_dict(SimConfig(agents="log")))
    planner = make_planner(PDMS_REFERENCE)
    return lambda batch: drive(sim, batch.to(config.device), planner, plan_every=config.plan_every, record_plans=False)


def _score_batch(sim: Any, chunk: list[Scenario], planner: Planner, config: EvalConfig,
                 on_step: Callable[[int, int], None] | None = None) -> _Part:
    batch = collate(chunk).to(config.device)
    with torch.no_grad():
        rollout = drive(sim, batch, planner, plan_every=config.plan_every, record_plans=config.worst > 0,
                        on_step=on_step)
        scores = {m: v.detach().double().cpu().numpy()
                  for m, v in evaluate(rollout, reference=_pdms_reference(config)).items()}
    why = reasons({m: torch.from_numpy(v) for m, v in scores.items()})
    rows, worst = [], []
    for i, s in enumerate(chunk):
        row: dict[str, Any] = {"scenario_id": s.id, "planner": planner.name, "agents": config.agents}
        row.update({m: float(v[i]) for m, v in scores.items()})
        row["reasons"] = why[i]
        rows.append(row)
        lost = [x for x in why[i].split("; ") if x] if config.worst > 0 else []
        if lost:  # scenarios that lost no points are never "worst"
            worst.append(_Worst(s, {m: row[m] for m in scores}, lost, *_slice(rollout, i, s)))
    return _Part(rows, sorted(worst, key=_rank_key)[: config.worst])


def _save_part(path: Path, part: _Part) -> None:
    def tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

    worst = [{"scenario_id": w.scenario.id, "scores": w.scores, "reasons": w.reasons, "ego": tensor(w.ego),
              "agents": tensor(w.agents), "agent_valid": tensor(w.agent_valid), "planned": tensor(w.planned)}
             for w in part.worst]
    buf = io.BytesIO()
    torch.save({"rows": part.rows, "worst": worst}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_part(path: Path, chunk: list[Scenario]) -> _Part | None:
    """The batch saved at ``path`` (``None`` if it is unreadable or not of these scenarios)."""
    def array(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.numpy()

    by_id = {s.id: s for s in chunk}
    try:
        raw = torch.load(path, weights_only=True)
        if [r["scenario_id"] for r in raw["rows"]] != list(by_id):
            return None
        worst = [_Worst(by_id[w["scenario_id"]], w["scores"], w["reasons"], array(w["ego"]),
                        array(w["agents"]), array(w["agent_valid"]), array(w["planned"])) for w in raw["worst"]]
    except Exception:  # a damaged partial file is recomputed, never trusted
        return None
    return _Part(raw["rows"], worst)


def evaluate_planner(config: EvalConfig, planner: Planner, partial: Path | None = None
                     ) -> tuple[ResultTable, list[_Worst]]:
    """Simulate and score every scenario of ``config.store`` with ``planner``.

    Returns the rows (sorted by scenario id) and the ``config.worst`` lowest-CLS scenarios among
    those that lost points. With a ``partial`` directory each batch's results are saved there as
    ``batch-NNNNN.pt`` when done, and batches already saved there are loaded, not simulated.
    """
    name, sim_config = _simulator(config)
    sim = make_simulator(name, **settings_dict(sim_config))
    total = store_count(config.store)
    rows: list[dict[str, Any]] = []
    worst: list[_Worst] = []
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not (config.progress and console.is_terminal), transient=True) as bar:
        task = bar.add_task(f"{planner.name} / {config.agents}", total=total)
        log.info("%s / %s agents: %d scenarios in batches of %d", planner.name, config.agents, total, config.batch_size)
        for k, chunk in enumerate(_batches(config.store, config.batch_size)):
            bar.update(task, description=f"{planner.name} / {config.agents} batch {k + 1}")
            saved = None if partial is None else partial / f"batch-{k:05d}.pt"
            part = _load_part(saved, chunk) if saved is not None and saved.is_file() else None
            start, done = time.perf_counter(), len(rows)
            if part is None:
                def moved(step: int, steps: int, done: int = done, n: int = len(chunk)) -> None:
                    bar.update(task, completed=done + n * step // max(steps, 1))  # per scenario, not per batch

                part = _score_batch(sim, chunk, planner, config, moved)
                if saved is not None:
                    _save_part(saved, part)
                how = f"simulated and scored in {time.perf_counter() - start:.1f} s"
            else:
                how = "loaded from an interrupted run"
            rows += part.rows
            worst = sorted([*worst, *part.worst], key=_rank_key)[: config.worst]
            bar.update(task, completed=len(rows))
            cls = [r["cls"] for r in part.rows if math.isfinite(r["cls"])]
            log.info("%s / %s batch %d: scenarios %d-%d of %d %s, mean CLS %.3f", planner.name, config.agents,
                     k + 1, done + 1, len(rows), total, how, float(np.mean(cls)) if cls else math.nan)
    if not rows:
        raise AvError(f"{config.store}: the store holds no scenarios")
    rows.sort(key=lambda r: r["scenario_id"])
    return ResultTable(_to_table(rows)), worst


def _to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    metrics: list[str] = []
    for r in rows:
        metrics += [k for k in r if k not in KEYS and k not in TEXT and k not in metrics]
    cols: dict[str, pa.Array] = {k: pa.array([r[k] for r in rows], pa.string()) for k in KEYS}
    cols.update({k: pa.array([r.get(k, "") for r in rows], pa.string()) for k in TEXT})
    for m in metrics:
        cols[m] = pa.array([float(r.get(m, math.nan)) for r in rows], pa.float64())
    return pa.table(cols)


# --------------------------------------------------------------------------- run directory


def read_results(run_dir: str | Path) -> ResultTable | None:
    """The results of a run directory, or ``None`` if it has none yet."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise AvError(f"{path}: unreadable results ({e})") from None
    meta = table.schema.metadata or {}
    version = meta.get(b"schema_version", b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise AvError(f"{path}: results schema version {version}, this av writes {SCHEMA_VERSION}; "
                      "use a new --out directory")
    return ResultTable(table.replace_schema_metadata(None))


def _merge(old: ResultTable | None, new: ResultTable, planner: str, agents: str) -> ResultTable:
    if old is None:
        merged = new.table
    else:
        keep = ~((np.asarray(old.column("planner")) == planner) & (np.asarray(old.column("agents")) == agents))
        merged = pa.concat_tables([old.table.filter(pa.array(keep)), new.table], promote_options="default")
    names = [*KEYS, *[c for c in merged.column_names if c not in KEYS]]
    merged = merged.select(names)
    keys = list(zip(*(merged.column(k).to_pylist() for k in ("planner", "agents", "scenario_id"))))
    order = sorted(range(merged.num_rows), key=keys.__getitem__)
    merged = merged.take(pa.array(order, pa.int64()))
    # Metrics missing for some planner are NaN, not null.
    for i, name in enumerate(merged.column_names):
        if name not in KEYS:
            merged = merged.set_column(i, name, merged.column(name).fill_null("" if name in TEXT else math.nan))
    return ResultTable(merged)


def _write_results(run_dir: Path, table: ResultTable) -> None:
    t = table.table.replace_schema_metadata(
        {"schema_version": str(SCHEMA_VERSION), "format": "av-closedloop-results"})
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    atomic_write_bytes(run_dir / RESULTS, buf.getvalue())


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def mean_ci95(values: np.ndarray, placeholder: float | None = None) -> tuple[float, list[float | None], int]:
    """Mean of the defined ``values``, its 95 % percentile-bootstrap interval (fixed seed) and
    the number ``n`` of values it is over. Undefined: not finite, or equal to ``placeholder``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if placeholder is not None:
        v = v[v != placeholder]
    if v.size == 0:
        return math.nan, [None, None], 0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = v[rng.integers(0, v.size, size=(BOOTSTRAP_SAMPLES, v.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), [float(lo), float(hi)], int(v.size)


def summarize(table: ResultTable, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``summary.json`` value of ``table``: one row per planner x agent mode.

    Row fields ``worst``, ``store``, ``plan_every``, ``key`` and ``inputs`` are carried over from
    ``previous`` (the last summary) for the groups they describe.
    """
    carried = {(r["planner"], r["agents"]): r for r in (previous or {}).get("rows", [])}
    groups = sorted({(r["planner"], r["agents"]) for r in table.table.select(["planner", "agents"]).to_pylist()})
    rows = []
    for planner, agents in groups:
        part = table.select(planner, agents)
        row: dict[str, Any] = {"planner": planner, "agents": agents, "scenarios": len(part)}
        headline = [m for m in ("cls", "pdms") if m in part.metrics]
        metrics = headline + [m for m in part.metrics if m not in headline and m not in UNAVERAGED]
        stats = {m: mean_ci95(part.column(m), PLACEHOLDERS.get(m)) for m in metrics}
        row.update({m: _finite(mean) for m, (mean, _, _) in stats.items()})
        row.update({f"{m}_ci95": ci for m, (_, ci, _) in stats.items()})
        row.update({f"{m}_n": n for m, (_, _, n) in stats.items()})
        old = carried.get((planner, agents), {})
        row.update({k: old[k] for k in ("store", "plan_every", "worst", "key", "inputs", *COST_KEYS) if k in old})
        rows.append(row)
    return {"schema_version": SCHEMA_VERSION, "rows": rows}


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AvError(f"{path}: corrupt JSON ({e.msg}, line {e.lineno})") from None
    if summary.get("schema_version") != SCHEMA_VERSION:
        raise AvError(f"{path}: summary schema version {summary.get('schema_version')}, this av writes "
                      f"{SCHEMA_VERSION}; use a new --out directory")
    return summary


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _render_worst(run_dir: Path, planner: str, agents: str, worst: list[_Worst]) -> list[dict[str, Any]]:
    """Render the worst scenarios to ``media/`` (stale pictures of this group are removed)."""
    from av.viz import render_rollout

    media = run_dir / MEDIA
    prefix = f"{_safe(planner)}--{_safe(agents)}--"
    keep, out = set(), []
    for w in worst:
        rel = f"{MEDIA}/{prefix}{_safe(w.scenario.id)}.gif"
        cls = w.scores.get("cls", math.nan)
        title = f"{planner} / {agents} agents, CLS {cls:.2f}"
        render_rollout(w.scenario, run_dir / rel, w.ego, w.agents, w.agent_valid, title=title,
                       planned=w.planned, highlight="; ".join(w.reasons[:2]))
        keep.add(run_dir / rel)
        out.append({"scenario_id": w.scenario.id, "cls": _finite(cls),
                    "pdms": _finite(w.scores.get("pdms", math.nan)), "reasons": w.reasons, "gif": rel})
    if media.is_dir():
        for old in media.glob(f"{prefix}*.gif"):
            if old not in keep:
                old.unlink()
    return out


def run_inputs(config: EvalConfig) -> dict[str, Any]:
    """What the results of ``config`` are made from (JSON values; their :func:`~av.keys.digest` is
    the group's key): the store's content digest, planner settings and the content digests of
    the files they name (checkpoints, models), simulator settings, batch size, device, package
    and schema version. Raises :class:`AvError` for bad planner settings."""
    sim_name, sim_config = _simulator(config)
    settings = planner_settings(config.planner, **config.planner_settings)
    return {
        "schema_version": SCHEMA_VERSION,
        "av_version": __version__,
        "store_digest": tree_digest(config.store),
        "planner": config.planner,
        "planner_settings": settings_dict(settings),
        "planner_files": path_digests(settings),
        "simulator": {"name": sim_name, "settings": settings_dict(sim_config)},
        "plan_every": config.plan_every,
        "batch_size": config.batch_size,
        "device": config.device,
        "worst": config.worst,
        "pdms_reference": PDMS_REFERENCE,
    }


def _partial_dirs(run_dir: Path, planner: str, agents: str) -> list[Path]:
    return sorted((run_dir / PARTIAL).glob(f"{_safe(planner)}--{_safe(agents)}--*"))


def planner_cost(planner: Planner, scenario: Scenario, calls: int = LATENCY_CALLS) -> dict[str, Any]:
    """``params``: the parameter count of a learned planner's ``network`` (``None`` for rule
    planners); ``latency_ms``: the median wall time (ms) of one ``plan`` call at batch 1 on the
    CPU (with the run's threads), on ``scenario``'s first planning state, after two warm-up calls."""
    import time

    from av.nets import parameter_count
    from av.observe import ObservationSpec, observe, privileged

    net = getattr(planner, "network", None)
    batch = collate([scenario])
    spec = getattr(planner, "observation_spec", None) or ObservationSpec()
    t = batch.history_steps
    obs = observe(batch, t, spec)
    priv = privileged(batch, t, spec) if planner.privileged else None
    times = []
    with torch.no_grad():
        for k in range(calls + 2):
            start = time.perf_counter()
            planner.plan(obs, priv)
            if k >= 2:
                times.append(time.perf_counter() - start)
    return {"params": None if net is None else parameter_count(net), "latency_ms": 1e3 * float(np.median(times))}


def keep_runs(run_dir: str | Path, keys: set[str]) -> list[tuple[str, str]]:
    """Drop from ``run_dir`` every planner x agent mode whose key is not in ``keys`` (results,
    summary rows and their pictures); return the dropped groups. A job that evaluates a fixed
    set of runs calls it so that no result of other inputs is shown beside them."""
    run_dir = Path(run_dir)
    old, summary = read_results(run_dir), read_summary(run_dir)
    if old is None or summary is None:
        return []
    keep = {(r["planner"], r["agents"]) for r in summary["rows"] if r.get("key") in keys}
    groups = list(zip(old.column("planner").tolist(), old.column("agents").tolist()))
    dropped = sorted(set(groups) - keep)
    if not dropped:
        return []
    mask = pa.array([g in keep for g in groups])
    _write_results(run_dir, ResultTable(old.table.filter(mask)))
    for planner, agents in dropped:
        _render_worst(run_dir, planner, agents, [])
    atomic_write_json(run_dir / SUMMARY, {**summary, "rows": [r for r in summary["rows"]
                                                               if (r["planner"], r["agents"]) in keep]})
    return dropped


def run_eval(config: EvalConfig) -> ResultTable:
    """Evaluate one planner x agent mode and merge it into ``config.out`` (see the module doc).

    Returns the rows of this run. Raises :class:`AvError` for an unknown planner or bad planner
    settings, a missing or empty store, or a run directory written by another schema version.
    """
    config.validate()
    store_count(config.store)  # a missing or foreign store fails here, before any work
    planner = make_planner(config.planner, **config.planner_settings)  # bad settings fail before any log line
    log.info("evaluating %s with %s agents on %s into %s", config.planner, config.agents, config.store, config.out)
    inputs = run_inputs(config)
    key = digest(inputs)
    run_dir = Path(config.out)
    old = read_results(run_dir)
    previous = read_summary(run_dir)
    if config.resume and old is not None and previous is not None:
        done = old.select(planner.name, config.agents)
        meta = next((r for r in previous["rows"] if (r["planner"], r["agents"]) == (planner.name, config.agents)), {})
        if len(done) and meta.get("key") == key:
            log.info("%s / %s: up to date in %s, kept", planner.name, config.agents, run_dir)
            return done
    partial = run_dir / PARTIAL / f"{_safe(planner.name)}--{_safe(config.agents)}--{key[:16]}"
    for stale in _partial_dirs(run_dir, planner.name, config.agents):
        if stale != partial or not config.resume:
            shutil.rmtree(stale)
    partial.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        table, worst = evaluate_planner(config, planner, partial)
        log.info("%s: measuring the batch-1 planning latency", planner.name)
        cost = planner_cost(planner, next(iter_store(config.store)))
    finally:
        torch.set_num_threads(threads)
    merged = _merge(old, table, planner.name, config.agents)
    summary = summarize(merged, previous)
    if config.worst > 0:
        log.info("%s / %s: drawing the %d worst scenarios into %s", planner.name, config.agents, len(worst),
                 run_dir / MEDIA)
    rendered = _render_worst(run_dir, planner.name, config.agents, worst) if config.worst > 0 else []
    for row in summary["rows"]:
        if (row["planner"], row["agents"]) == (planner.name, config.agents):
            row.update(store=str(config.store), plan_every=config.plan_every, worst=rendered, key=key, inputs=inputs, **cost)
    _write_results(run_dir, merged)
    atomic_write_json(run_dir / SUMMARY, summary)
    shutil.rmtree(partial)
    if not any((run_dir / PARTIAL).iterdir()):
        (run_dir / PARTIAL).rmdir()
    log.info("%s / %s: %d scenarios, wrote %s and %s", planner.name, config.agents, len(table),
             run_dir / RESULTS, run_dir / SUMMARY)
    if config.report:
        from closedloop.report import write_report

        log.info("report: %s", write_report(run_dir))
    return table
