"""Closed-loop fine-tuning of the student (DAgger): the student drives, the teacher relabels.

Iteration ``i`` (1..N) of :func:`finetune`:

1. **Roll out** the current student (the previous iteration's) with the one closed-loop driver in
   the builtin simulator over the training pool (the training drives and the variants mined so
   far), with log-replayed and reactive (IDM) agents. A :class:`MixingPlanner` lets the teacher
   drive a scenario instead with probability ``beta_i = beta * beta_decay ** (i - 1)``; the coin
   of each (scenario, agent mode, iteration) is seeded, so it does not depend on sharding.
2. **Relabel** the visited states: every ``label_stride`` steps of each rollout the state the car
   actually reached (the simulated :class:`~av.observe.Window`, observed exactly as in the
   driver) gets the student's input features and the teacher search's labels
   (:meth:`~closedloop.planners.teacher.TeacherPlanner.labels`, with the logged futures of the
   agents as its privileged input). Steps 1-2 run per shard of scenarios, in-process or as Ray
   tasks (:mod:`closedloop.distributed`), with identical results.
3. **Aggregate** the states of every iteration so far and **fine-tune** the student on them with
   the distillation system (:class:`distill.systems.DistillationSystem`, :func:`distill.train.fit`).
   Against forgetting what distillation taught (it cost the held-out drives their score), the
   aggregate also holds the logged states of the training drives relabelled by the teacher (the
   distillation data, ``logged_states``), the loss keeps a regression to the logged future
   (``log_weight``), the learning rate is low, and each iteration starts from the best student so
   far by the selection score below (``from_best``), not the last.
4. **Evaluate** the new student on the training drives, the hard variants (mined around the
   starting student's failures) and the held-out drives, non-reactive and reactive.
5. **Mine**: the training drives the student still fails (CLS below ``fail_below`` in either mode)
   get variants (:func:`scenarios.adversarial.mine_hard`), which join the pool.

Iteration 0 only evaluates the starting student and mines the hard set. ``RUN/iter-NNN/`` holds an
iteration's states (``states.pt``), checkpoint (``student.ckpt``), evaluation (``eval.json``) and
mined variants (``variants/``); it is built in ``RUN/iter-NNN.partial/`` and renamed when complete,
so a killed run continues from the last completed iteration (and inside the interrupted one from
its saved states and its last training epoch) with the result it would have had: everything is
seeded per iteration. ``RUN/report.json`` / ``report.html`` / ``scores.png`` give the scores per
iteration and set, the best iteration (the selection score: mean CLS-NR and CLS-R on the training
drives and hard variants only, never the held-out drives; iteration 0 included), and GIFs of the
failures fixed (``RUN/fixed/``: rollouts that failed at iteration 0 and pass at the last, before
and after).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from av.batch import ScenarioBatch, collate
from av.errors import AvError
from av.features import FEATURE_NAMES, encode
from av.fileio import atomic_write_bytes, atomic_write_json
from av.observation import Observation, Privileged, Trajectory
from av.observe import ObservationSpec, log_window, observe, prepare_map, privileged
from av.types import Scenario
from closedloop.distributed import RayBackend, map_shards
from closedloop.finetune_config import FinetuneConfig
from closedloop.driver import rollout
from closedloop.evaluator import evaluate, reasons
from closedloop.rollout import Rollout
from distill.data import EpochShuffle, SampleSet, future_index
from distill.labels import Labels

SCHEMA_VERSION = 1
#: The simulator's step (s); mixed plans are resampled to it.
STEP = 0.1
LABEL_NAMES = ("plan", "proposals", "scores")
STATE_NAMES = (*FEATURE_NAMES, "target", "target_valid", *LABEL_NAMES)
#: Per-scenario evaluator values kept in ``eval.json``.
EVAL_METRICS = ("cls", "pdms", "at_fault_collisions", "drivable_area")
#: Evaluation sets: the training drives, the variants mined around the starting student's
#: failures, and the held-out drives.
EVAL_SETS = ("train", "hard", "heldout")


def _rows(value: Any, rows: Tensor) -> Any:
    """An Observation / Privileged with only the batch rows ``rows`` (long ``[b]``)."""
    return dataclasses.replace(value, **{f.name: getattr(value, f.name)[rows] for f in dataclasses.fields(value)
                                         if isinstance(getattr(value, f.name), Tensor)})


class MixingPlanner:
    """DAgger's mixed policy: the teacher plans the scenarios ``use_teacher`` (bool ``[B]``), the
    student the others. Plans are resampled to 0.1 s and cut to the shorter horizon."""

    name = "dagger_mix"
    privileged = True

    def __init__(self, student: Any, teacher: Any, use_teacher: Tensor) -> None:
        self.student, self.teacher, self.use_teacher = student, teacher, use_teacher
        self.observation_spec = student.observation_spec

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        poses = self.student.plan(observation).resampled(STEP)
        rows = self.use_teacher.to(poses.device).nonzero().flatten()
        if len(rows):
            taught = self.teacher.plan(_rows(observation, rows), _rows(privileged, rows)).resampled(STEP)
            H = min(poses.shape[1], taught.shape[1])
            poses = poses[:, :H].clone()
            poses[rows] = taught[:, :H].to(poses)
        return Trajectory(poses, STEP)


def teacher_coins(ids: Sequence[str], agents: str, seed: int, beta: float) -> Tensor:
    """bool ``[B]``: the teacher drives scenario ``ids[b]`` (probability ``beta``, seeded by
    ``seed``, the scenario id and the agent mode, so independent of batching and sharding)."""
    from scenarios.variants import stable_hash

    mode = {"log": 0, "idm": 1}[agents]
    return torch.tensor([bool(np.random.default_rng([seed, stable_hash(i), mode]).random() < beta) for i in ids],
                        dtype=torch.bool)


@dataclass(frozen=True)
class ShardJob:
    """One shard: roll ``student`` (checkpoint path) out over ``scenarios`` with ``agents``
    background agents, the teacher (:class:`~closedloop.planners.teacher.TeacherSettings` values
    ``teacher``) driving with probability ``beta``; score the rollouts; with ``collect`` also
    relabel the visited states every ``label_stride`` steps. With ``replay`` nothing is simulated
    or scored: the logged drives' own states are relabelled (the distillation data)."""

    scenarios: tuple[Scenario, ...]
    agents: str
    student: str
    teacher: dict[str, Any]
    beta: float
    seed: int
    collect: bool
    plan_every: int
    label_stride: int
    replay: bool = False


@dataclass(frozen=True)
class ShardResult:
    """``scores``: per scenario id, :data:`EVAL_METRICS` values; ``teacher_driven``: ids the
    teacher drove; ``states``: :data:`STATE_NAMES` tensors ``[S, ...]`` (collect only) and
    ``state_ids`` their ``(scenario id, agent mode, step)``."""

    scores: dict[str, dict[str, float]]
    teacher_driven: tuple[str, ...]
    states: dict[str, Tensor] | None
    state_ids: tuple[tuple[str, str, int], ...]


def _teacher(settings: dict[str, Any]) -> Any:
    from av.settings import build_settings
    from closedloop.planners.teacher import TeacherPlanner, TeacherSettings

    return TeacherPlanner(build_settings(TeacherSettings, settings))


def run_shard(job: ShardJob) -> ShardResult:
    """Roll out, score and (``job.collect``) relabel one shard (see :class:`ShardJob`). Runs with
    one torch thread, so the result is the same in any process."""
    from closedloop.planners.learned import StudentPlanner, StudentSettings
    from closedloop.sim import make_simulator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student = StudentPlanner(StudentSettings(checkpoint=job.student))
        batch = collate(list(job.scenarios))
        if job.replay:
            with torch.no_grad():
                states, steps = relabel_states(batch, batch, batch.history_steps, student.observation_spec,
                                               student.network.config.horizon, _teacher(job.teacher),
                                               job.label_stride)
            return ShardResult({}, (), states, tuple((sid, "replay", t) for sid, t in steps))
        coins = teacher_coins(batch.ids, job.agents, job.seed, job.beta)
        teacher = _teacher(job.teacher) if job.collect or bool(coins.any()) else None
        if teacher is not None and teacher.network is not None and teacher.observation_spec != student.observation_spec:
            raise AvError("the teacher network and the student observe with different ObservationSpecs")
        planner = MixingPlanner(student, teacher, coins) if bool(coins.any()) else student
        with torch.no_grad(), make_simulator("builtin", agents=job.agents) as sim:
            ro = rollout(sim, batch, planner, plan_every=job.plan_every, record_plans=False)
            values = evaluate(ro, threads=None)
        scores = {sid: {m: float(values[m][b]) for m in EVAL_METRICS} for b, sid in enumerate(batch.ids)}
        driven = tuple(i for i, c in zip(batch.ids, coins.tolist()) if c)
        if not job.collect:
            return ShardResult(scores, driven, None, ())
        states, steps = visited_states(ro, student.observation_spec, student.network.config.horizon, teacher,
                                       job.label_stride)
        ids = tuple((sid, job.agents, t) for sid, t in steps)
        return ShardResult(scores, driven, states, ids)
    finally:
        torch.set_num_threads(threads)


def visited_states(ro: Rollout, spec: ObservationSpec, horizon: int, teacher: Any, stride: int
                   ) -> tuple[dict[str, Tensor], list[tuple[str, int]]]:
    """The states a rollout reached, relabelled by ``teacher`` (:func:`relabel_states` of the
    simulated history ``ro.ego``, ``ro.agents`` from the rollout's start)."""
    batch = ro.scenario
    simulated = dataclasses.replace(batch, ego=ro.ego.to(batch.ego), agents=ro.agents.to(batch.agents),
                                    agent_valid=ro.agent_valid)
    return relabel_states(batch, simulated, ro.start_step, spec, horizon, teacher, stride)


@torch.no_grad()
def relabel_states(batch: ScenarioBatch, simulated: ScenarioBatch, start: Tensor, spec: ObservationSpec,
                   horizon: int, teacher: Any, stride: int) -> tuple[dict[str, Tensor], list[tuple[str, int]]]:
    """States of ``simulated`` (``batch`` with the ego and agents as driven) as training samples
    relabelled by ``teacher``.

    Every ``stride`` steps from ``start`` (long ``[B]``) while a logged step follows, the driven
    history is observed as the driver does (``spec``; the teacher's own spec for its labels)
    and encoded (:func:`av.features.encode`). Returns tensors keyed by
    :data:`STATE_NAMES`: the features, ``target`` ``[S, horizon, 3]`` / ``target_valid`` (the
    logged ego future in the simulated ego frame, m and rad) and the teacher's ``plan``
    ``[S, horizon, 3]``, ``proposals`` ``[S, K, horizon, 3]``, ``scores`` ``[S, K]`` (cut to the
    student's ``horizon``); and the ``(scenario id, step)`` of each state.
    """
    tspec = teacher.observation_spec
    cache, tcache = prepare_map(batch, spec), prepare_map(batch, tspec)
    index = future_index(batch.dt, horizon, spec.future_steps)
    last = batch.step_valid.long().sum(1) - 1
    parts: dict[str, list[Tensor]] = {n: [] for n in STATE_NAMES}
    ids: list[tuple[str, int]] = []
    k = 0
    while True:
        t = start + k * stride
        keep = t < last
        if not bool(keep.any()):
            break
        t = torch.minimum(t, (last - 1).clamp_min(0))
        window = log_window(simulated, t, spec.history_steps)
        feats = encode(observe(batch, t, spec, window=window, cache=cache))
        fut = privileged(batch, t, spec, window=window)
        twin = window if tspec.history_steps == spec.history_steps else log_window(simulated, t, tspec.history_steps)
        labels: Labels = teacher.labels(observe(batch, t, tspec, window=twin, cache=tcache),
                                        privileged(batch, t, tspec, window=twin))
        for name, x in zip(FEATURE_NAMES, feats.as_tuple()):
            parts[name].append(x[keep].cpu())
        parts["target"].append(fut.ego_future[:, index, :3][keep].float().cpu())
        parts["target_valid"].append(fut.ego_future_valid[:, index][keep].cpu())
        parts["plan"].append(labels.plan[:, :horizon][keep].float().cpu())
        parts["proposals"].append(labels.proposals[:, :, :horizon][keep].float().cpu())
        parts["scores"].append(labels.scores[keep].float().cpu())
        ids += [(batch.ids[b], int(t[b])) for b in keep.nonzero().flatten().tolist()]
        k += 1
    return {n: torch.cat(v) for n, v in parts.items()} if ids else {}, ids


# --------------------------------------------------------------------------------------------
# Sharded collection and evaluation


def _shards(scenarios: Sequence[Scenario], size: int) -> list[tuple[Scenario, ...]]:
    return [tuple(scenarios[i:i + size]) for i in range(0, len(scenarios), size)]


def collect_states(scenarios: Sequence[Scenario], student: str, teacher: dict[str, Any], config: FinetuneConfig,
                   iteration: int, backend: RayBackend | None, logged: Sequence[Scenario] = ()
                   ) -> tuple[dict[str, Tensor], list[tuple[str, str, int]], dict[str, int]]:
    """Roll the student (mixed with the teacher at ``config.beta_at(iteration)``) over
    ``scenarios`` in every agent mode, relabel the visited states, and relabel the logged
    states of the drives ``logged`` (replayed, not simulated); returns the concatenated states,
    their ids and statistics (rollouts, teacher-driven rollouts, states, logged states)."""
    seed = config.seed * 1000 + iteration
    jobs = [ShardJob(shard, agents, student, teacher, config.beta_at(iteration), seed, True, config.plan_every,
                     config.label_stride)
            for agents in config.agent_modes() for shard in _shards(scenarios, config.shard_size)]
    jobs += [ShardJob(shard, "log", student, teacher, 0.0, seed, True, config.plan_every, config.label_stride,
                      replay=True) for shard in _shards(logged, config.shard_size)]
    results = map_shards(run_shard, jobs, backend)
    parts = [r.states for r in results if r.states]
    states = {n: torch.cat([p[n] for p in parts]) for n in STATE_NAMES} if parts else {}
    ids = [i for r in results for i in r.state_ids]
    stats = {"rollouts": sum(len(j.scenarios) for j in jobs if not j.replay),
             "teacher_driven": sum(len(r.teacher_driven) for r in results), "states": len(ids),
             "logged_states": sum(1 for i in ids if i[1] == "replay")}
    return states, ids, stats


def evaluate_student(sets: dict[str, Sequence[Scenario]], student: str, config: FinetuneConfig,
                     backend: RayBackend | None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per set, agent mode and scenario id: :data:`EVAL_METRICS` of the student alone."""
    jobs, keys = [], []
    for name, scenarios in sets.items():
        for agents in ("log", "idm"):
            for shard in _shards(scenarios, config.shard_size):
                jobs.append(ShardJob(shard, agents, student, {}, 0.0, 0, False, config.eval_plan_every, 1))
                keys.append((name, agents))
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {n: {"log": {}, "idm": {}} for n in sets}
    for (name, agents), r in zip(keys, map_shards(run_shard, jobs, backend)):
        out[name][agents].update(r.scores)
    return out


def summarize(per_scenario: dict[str, dict[str, dict[str, float]]]) -> dict[str, float | int]:
    """CLS-NR (mean CLS, log agents), CLS-R (mean CLS, IDM agents), PDMS (log agents), and the
    fractions of rollouts (both modes) with an at-fault collision and off the drivable area."""
    log, idm = per_scenario.get("log", {}), per_scenario.get("idm", {})
    both = [*log.values(), *idm.values()]

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else math.nan

    return {
        "scenarios": len(log),
        "cls_nr": mean([v["cls"] for v in log.values()]),
        "cls_r": mean([v["cls"] for v in idm.values()]),
        "pdms": mean([v["pdms"] for v in log.values()]),
        "collisions": mean([float(v["at_fault_collisions"] > 0) for v in both]),
        "off_road": mean([float(v["drivable_area"] < 1) for v in both]),
    }


# --------------------------------------------------------------------------------------------
# Fine-tuning on precomputed states (the adapter to distill's system and trainer)


class StatesDataModule(pl.LightningDataModule):
    """Precomputed states (:data:`STATE_NAMES` tensors) as the data module
    :func:`distill.train.fit` trains on: seeded epoch shuffles, no validation set."""

    def __init__(self, states: dict[str, Tensor], batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_set = SampleSet(states)
        self.val_set = None
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size,
                          sampler=EpochShuffle(len(self.train_set), self.seed))


def finetune_student(start: str, states: dict[str, Tensor], out: Path, config: FinetuneConfig, seed: int) -> Path:
    """Fine-tune the student of checkpoint ``start`` on ``states`` with
    :class:`~distill.systems.DistillationSystem`; checkpoints, logs and ``student.ckpt`` go to
    ``out`` (an interrupted fine-tuning resumes from its last epoch)."""
    from av.nets import load_network
    from av.nets.checkpoint import read_checkpoint
    from distill.config import DistillLossConfig
    from distill.systems import DistillationSystem, OptimConfig
    from distill.train import TrainerConfig, fit

    pl.seed_everything(seed, workers=True, verbose=False)
    system = DistillationSystem(load_network(start), loss=DistillLossConfig(plan_weight=1.0, log_weight=config.log_weight),
                                optim=OptimConfig(lr=config.lr))
    # The score head trained with the student comes along (a fresh one would pull the student's
    # embedding towards random scores); a checkpoint without one keeps the seeded fresh head.
    head = {k: v for k, v in read_checkpoint(start)["state_dict"].items() if k.startswith("score_head.")}
    if head:
        system.load_state_dict(head, strict=False)
    trainer = TrainerConfig(max_epochs=config.epochs, seed=seed, accelerator=config.accelerator, devices=config.devices,
                            num_nodes=config.num_nodes, strategy=config.strategy, progress=False, resume=True)
    final, _ = fit(system, StatesDataModule(states, config.batch_size, seed), out, "student", trainer)
    return final


# --------------------------------------------------------------------------------------------
# The loop


def _save_states(path: Path, states: dict[str, Tensor], ids: list[tuple[str, str, int]], stats: dict) -> None:
    buf = io.BytesIO()
    torch.save({"schema_version": SCHEMA_VERSION, "states": states, "ids": [list(i) for i in ids], "stats": stats}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_states(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file is recomputed
        return None
    return data if isinstance(data, dict) and data.get("schema_version") == SCHEMA_VERSION else None


def _mine(train: Sequence[Scenario], scores: dict[str, dict[str, dict[str, float]]], config: FinetuneConfig,
          iteration: int, known: set[str]) -> list[Scenario]:
    """Variants around the ``config.hardest`` training drives with the lowest CLS (worse mode)
    among those below ``config.fail_below``; ids already in ``known`` are dropped."""
    from scenarios.adversarial import mine_hard

    worst = {s.id: min(scores[a][s.id]["cls"] for a in ("log", "idm")) for s in train}
    failed = [s for s in train if worst[s.id] < config.fail_below]
    if not failed or not config.hardest or not config.per_failure:
        return []
    variants, _ = mine_hard(failed, [worst[s.id] for s in failed], config.hardest, config.per_failure,
                            config.seed * 1000 + iteration)
    return [v for v in variants if v.id not in known]


def _iter_dir(run: Path, i: int) -> Path:
    return run / f"iter-{i:03d}"


def _say(config: FinetuneConfig, text: str) -> None:
    if config.progress:
        print(text, flush=True)


def finetune(stores: Sequence[str], student: str, teacher: dict[str, Any], out: str | Path,
             config: FinetuneConfig) -> dict[str, Any]:
    """Run (or continue) closed-loop fine-tuning into ``out`` (see the module docstring) and
    return the report. ``teacher``: :class:`~closedloop.planners.teacher.TeacherSettings`
    values (``checkpoint`` among them; none: rule proposals only)."""
    from distill.data import choose_val_scenes, load_scenarios
    from scenarios.store import read_store

    config = config.validate()
    run = Path(out)
    student = str(Path(student).resolve())
    teacher = {"search_steps": config.teacher_search_steps, **teacher}
    if teacher.get("checkpoint"):
        teacher["checkpoint"] = str(Path(teacher["checkpoint"]).resolve())
    _teacher(teacher)  # bad teacher settings fail before any work
    from av.nets import load_network

    if load_network(student).kind != "student":
        raise AvError(f"{student}: not a student checkpoint (av distill writes RUN/student.ckpt)")
    scenarios = sorted(load_scenarios(stores), key=lambda s: s.id)
    if not scenarios:
        raise AvError(f"{', '.join(stores)}: the stores hold no scenarios")
    held = choose_val_scenes(scenarios, tuple(n.strip() for n in config.heldout_scenes.split(",") if n.strip()))
    train = [s for s in scenarios if s.source.scene_name not in held]
    heldout = [s for s in scenarios if s.source.scene_name in held]
    # How the work is spread and how many iterations are asked for do not change any result.
    same = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in ("iterations", "ray", "ray_cpus", "max_retries", "progress")}
    settings = {"schema_version": SCHEMA_VERSION, "config": same,
                "stores": [str(Path(s).resolve()) for s in stores], "student": student, "teacher": teacher,
                "train": [s.id for s in train], "heldout": [s.id for s in heldout]}
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "config.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old != json.loads(json.dumps(settings)):
            raise AvError(f"{run}: holds a fine-tuning run with other settings; choose another --out")
    else:
        atomic_write_json(saved, settings)
    backend = config.backend()
    try:
        history = []
        hard: list[Scenario] = []
        pool_variants: list[Scenario] = []
        for i in range(config.iterations + 1):
            done = _iter_dir(run, i)
            if not (done / "iteration.json").is_file():
                _say(config, f"iteration {i}: {'evaluating the starting student' if i == 0 else 'running'}")
                _run_iteration(run, i, train, heldout, hard, pool_variants, student, teacher, config, backend,
                               history)
            summary = json.loads((done / "iteration.json").read_text())
            variants = read_store(done / "variants") if (done / "variants").is_dir() else []
            if i == 0:
                hard = list(variants)
            pool_variants += variants
            history.append(summary)
            _say(config, _line(summary))
    finally:
        if backend is not None:
            backend.close()
    best = _best(history)
    last = config.iterations
    by_id = {s.id: s for s in [*train, *hard, *heldout]}
    fixed = fixed_failures(json.loads((_iter_dir(run, 0) / "eval.json").read_text()),
                           json.loads((_iter_dir(run, last) / "eval.json").read_text()), config.fail_below)
    seen: set[str] = set()
    first, again = [], []  # one agent mode per scenario is drawn before a second mode of any
    for f in fixed:
        (again if f["scenario_id"] in seen else first).append(f)
        seen.add(f["scenario_id"])
    fixed = first + again
    drawn = render_fixed(run, fixed[:config.gifs], by_id, {0: student, last: student_of(run, last, student)}, config)
    fixed = drawn + [{**f, "gifs": []} for f in fixed[config.gifs:]]
    report = {"schema_version": SCHEMA_VERSION, "train_scenarios": len(train), "heldout_scenarios": len(heldout),
              "heldout_scenes": list(held), "hard_variants": len(hard), "iterations": history,
              "final_student": student_of(run, last, student), "best_iteration": best["iteration"],
              "best_student": student_of(run, best["iteration"], student), "fixed_failures": fixed}
    atomic_write_json(run / "report.json", report)
    write_report(run, report)
    return report


def fixed_failures(first: dict[str, Any], last: dict[str, Any], fail_below: float) -> list[dict[str, Any]]:
    """The rollouts that failed (CLS below ``fail_below``) in ``first`` and pass in ``last``
    (``eval.json`` values: set -> agent mode -> scenario id -> metrics), the largest gain first:
    ``{"set", "agents", "scenario_id", "cls_before", "cls_after"}``."""
    out = []
    for name in EVAL_SETS:
        for agents, scores in first.get(name, {}).items():
            after = last.get(name, {}).get(agents, {})
            for sid, v in scores.items():
                if sid in after and v["cls"] < fail_below <= after[sid]["cls"]:
                    out.append({"set": name, "agents": agents, "scenario_id": sid,
                                "cls_before": v["cls"], "cls_after": after[sid]["cls"]})
    return sorted(out, key=lambda f: (f["cls_before"] - f["cls_after"], f["set"], f["agents"], f["scenario_id"]))


def render_fixed(run: Path, fixed: list[dict[str, Any]], scenarios: dict[str, Scenario], students: dict[int, str],
                 config: FinetuneConfig) -> list[dict[str, Any]]:
    """Draw each fixed failure (:func:`fixed_failures`) as driven by the students ``{iteration:
    checkpoint}`` (the first and the last) to ``RUN/fixed/<scenario>-<agents>-iterNNN.gif``
    (:func:`av.viz.render_rollout`, the plans and the reasons it lost points on the picture);
    a GIF already there is kept. Returns ``fixed`` with ``gifs`` (paths relative to ``run``)."""
    from av.viz import render_rollout
    from closedloop.planners.learned import StudentPlanner, StudentSettings
    from closedloop.sim import make_simulator

    out = []
    for f in fixed:
        scenario, gifs = scenarios[f["scenario_id"]], []
        for it, checkpoint in sorted(students.items()):
            rel = f"fixed/{re.sub(r'[^A-Za-z0-9._-]+', '_', scenario.id)}-{f['agents']}-iter{it:03d}.gif"
            gifs.append(rel)
            if (run / rel).is_file():
                continue
            planner = StudentPlanner(StudentSettings(checkpoint=checkpoint))
            with torch.no_grad(), make_simulator("builtin", agents=f["agents"]) as sim:
                ro = rollout(sim, collate([scenario]), planner, plan_every=config.eval_plan_every, record_plans=True)
                values = evaluate(ro, threads=None)
            why = reasons(values)[0]
            render_rollout(scenario, run / rel, ro.ego[0].cpu().numpy(), ro.agents[0].cpu().numpy(),
                           ro.agent_valid[0].cpu().numpy(), title=f"iteration {it}, {f['agents']} agents, "
                           f"CLS {float(values['cls'][0]):.2f}", planned=ro.planned[0].cpu().numpy(),
                           highlight="; ".join(why.split("; ")[:2]))
        out.append({**f, "gifs": gifs})
    return out


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The iteration (0: the starting student) with the highest :func:`_selection_score`, the
    earliest among equals."""
    return max(history, key=lambda h: (_selection_score(h), -h["iteration"]))


def student_of(run: Path, iteration: int, start_student: str) -> str:
    """The checkpoint of ``iteration`` of the fine-tuning run ``run``: its ``student.ckpt``, or
    ``start_student`` for iteration 0 (which only evaluates the starting student)."""
    return str(_iter_dir(run, iteration) / "student.ckpt") if iteration else start_student


def _selection_score(summary: dict[str, Any]) -> float:
    """What picks the best iteration: mean CLS-NR and CLS-R over the training drives and the hard
    variants (never the held-out drives)."""
    values = [summary["scores"][k][m] for k in ("train", "hard") for m in ("cls_nr", "cls_r")
              if summary["scores"][k]["scenarios"]]
    return float(np.nanmean(values)) if values else -math.inf


def _line(summary: dict[str, Any]) -> str:
    s = summary["scores"]
    return f"iteration {summary['iteration']}: " + "; ".join(
        f"{k} CLS-NR {v['cls_nr']:.3f} CLS-R {v['cls_r']:.3f}" for k, v in s.items() if v["scenarios"])


def _run_iteration(run: Path, i: int, train: list[Scenario], heldout: list[Scenario], hard: list[Scenario],
                   pool_variants: list[Scenario], start_student: str, teacher: dict[str, Any], config: FinetuneConfig,
                   backend: RayBackend | None, history: list[dict[str, Any]]) -> None:
    """Build ``RUN/iter-NNN`` in ``RUN/iter-NNN.partial`` (kept across kills) and rename it.
    ``history``: the summaries of iterations ``0..i-1``."""
    from scenarios.store import write_store

    work = run / f"iter-{i:03d}.partial"
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    summary: dict[str, Any] = {"iteration": i}
    if i == 0:
        checkpoint = start_student
    else:
        start = _best(history) if config.from_best else history[-1]
        previous = student_of(run, start["iteration"], start_student)
        pool = sorted([*train, *pool_variants], key=lambda s: s.id)
        entry = _load_states(work / "states.pt")
        if entry is None:
            logged = train if i == 1 and config.logged_states else []
            states, ids, stats = collect_states(pool, previous, teacher, config, i, backend, logged)
            _save_states(work / "states.pt", states, ids, stats)
            entry = _load_states(work / "states.pt")
        parts = [entry["states"]] + [_load_states(_iter_dir(run, j) / "states.pt")["states"] for j in range(1, i)]
        parts = [p for p in parts if p]
        if not parts:
            raise AvError("the rollouts visited no state to relabel (scenarios shorter than their history?)")
        aggregated = {n: torch.cat([p[n] for p in parts]) for n in STATE_NAMES}
        checkpoint = str(finetune_student(previous, aggregated, work, config, config.seed * 1000 + i))
        summary.update({"beta": config.beta_at(i), "started_from": start["iteration"], "pool": len(pool),
                        **entry["stats"],
                        "aggregated_states": len(aggregated["ego"])})
    sets = {"train": train, "hard": hard, "heldout": heldout}
    scores = evaluate_student({k: v for k, v in sets.items() if v}, checkpoint, config, backend)
    known = {s.id for s in [*train, *pool_variants]}
    mined = _mine(train, scores["train"], config, i, known)
    if i == 0 and mined:  # the hard set is mined now: score the starting student on it too
        scores.update(evaluate_student({"hard": mined}, checkpoint, config, backend))
    atomic_write_json(work / "eval.json", scores)
    if mined:
        write_store(work / "variants", mined)
    summary.update({"mined_variants": len(mined), "seconds": round(time.perf_counter() - began, 1),
                    "scores": {k: summarize(scores.get(k, {})) for k in EVAL_SETS}})
    atomic_write_json(work / "iteration.json", summary)
    target = _iter_dir(run, i)
    if target.exists():
        shutil.rmtree(target)
    os.replace(work, target)


def write_report(run: Path, report: dict[str, Any]) -> None:
    """``scores.png`` (CLS-NR / CLS-R per iteration and set) and ``report.html`` (the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = report["iterations"]
    x = [h["iteration"] for h in its]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, metric, title in zip(axes, ("cls_nr", "cls_r"), ("CLS-NR", "CLS-R")):
        for name in EVAL_SETS:
            ys = [h["scores"][name][metric] for h in its]
            if any(math.isfinite(y) for y in ys):
                ax.plot(x, ys, marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(run / "scores.png", buf.getvalue())
    head = "".join(f"<th>{h}</th>" for h in ("iteration", "set", "scenarios", "CLS-NR", "CLS-R", "PDMS",
                                               "collisions", "off-road", "states", "beta"))
    rows = []
    for h in its:
        for name in EVAL_SETS:
            s = h["scores"][name]
            if not s["scenarios"]:
                continue
            cells = [h["iteration"], name, s["scenarios"], *(f"{s[k]:.3f}" for k in ("cls_nr", "cls_r", "pdms",
                                                                                      "collisions", "off_road")),
                     h.get("aggregated_states", "-"), f"{h['beta']:.3f}" if "beta" in h else "-"]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>closed-loop fine-tuning</title></head><body>"
            f"<h1>Closed-loop fine-tuning (DAgger)</h1><p>{report['train_scenarios']} training drives, "
            f"{report['heldout_scenarios']} held out ({', '.join(report['heldout_scenes']) or 'none'}), "
            f"{report['hard_variants']} hard variants. Best iteration on the training drives and hard variants: "
            f"{report['best_iteration']}.</p><img src='scores.png'>"
            f"<table border='1' cellspacing='0' cellpadding='3'><tr>{head}</tr>{''.join(rows)}</table>"
            f"{_fixed_section(report['fixed_failures'])}</body></html>")
    atomic_write_bytes(run / "report.html", html.encode())


def _fixed_section(fixed: list[dict[str, Any]]) -> str:
    from html import escape

    if not fixed:
        return "<h2>Failures fixed</h2><p>No rollout that failed at iteration 0 passes at the last.</p>"
    items = "".join(
        f"<h3>{escape(f['scenario_id'])} ({f['set']}, {f['agents']} agents): CLS {f['cls_before']:.2f} &rarr; "
        f"{f['cls_after']:.2f}</h3>" + "".join(f"<img src='{escape(g)}' width='420'>" for g in f["gifs"])
        for f in fixed)
    return f"<h2>Failures fixed (failed at iteration 0, pass at the last; before and after)</h2>{items}"


__all__ = ["FinetuneConfig", "MixingPlanner", "ShardJob", "ShardResult", "StatesDataModule", "collect_states",
           "evaluate_student", "finetune", "finetune_student", "fixed_failures", "relabel_states", "render_fixed",
           "run_shard", "summarize", "teacher_coins", "visited_states"]
