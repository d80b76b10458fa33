"""Adversarial scenario search: plausible variants on which a planner fails but which a reference
planner still solves, and hard-example mining around a planner's worst scenarios.

``scenarios`` sits below ``closedloop``, so the simulator and evaluator come in as a function:
``score_fn(scenarios, planner_name) -> float array [len(scenarios)]``, higher is better (e.g.
per-scenario CLS-NR in [0, 1]). The ``av scenarios adversarial`` command wires it to the
closed-loop simulator and evaluator.

The search (:func:`adversarial_search`) is the cross-entropy method over the parameters of the
adversarial transforms (the *families* in :data:`FAMILIES`: a lead vehicle braking, a cut-in, a
crossing pedestrian, one or two agents shifted in time). Per parent it keeps a distribution over
families and, per family, a Gaussian over its numeric parameters (in units of their ranges) and
categorical probabilities over its choices. Each iteration samples a population for ALL parents,
scores it with one call of ``score_fn``, checks the most promising failures with the reference
planner (a second call), and refits every distribution to its parent's elite: the lowest-scoring
variants that are not known to be unsolvable. A variant counts as a planner failure if it scores
at least ``min_drop`` below its parent, and is kept only if the reference planner scores it at
least ``solved_threshold`` -- an unavoidable crash says nothing about the planner.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from av.errors import AvError
from av.types import Scenario
from scenarios import plausibility
from scenarios.variants import (
    Choice,
    Param,
    VariantStats,
    generate_variants,
    get_transform,
    stable_hash,
    try_variant,
)

log = logging.getLogger(__name__)
ScoreFn = Callable[[Sequence[Scenario], str], np.ndarray]

FAMILIES: dict[str, tuple[str, ...]] = {
    "lead_brake": ("lead_brake",),
    "cut_in": ("cut_in",),
    "ped_crossing": ("ped_crossing",),
    "time_shift": ("time_shift",),
    "time_shift_pair": ("time_shift", "time_shift"),
}
"""Search families: a single adversarial transform, or a chain of them (two agents shifted)."""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of :func:`adversarial_search` besides the budget and seed."""

    iterations: int = field(default=4, metadata={"help": "cross-entropy iterations (the budget is split over them)"})
    elite_frac: float = field(default=0.25, metadata={"help": "fraction of each parent's population refitted to"})
    solved_threshold: float = field(
        default=0.5, metadata={"help": "reference score at or above which a variant counts as solvable"})
    min_drop: float = field(
        default=0.2, metadata={"help": "a variant is a planner failure if it scores this much below its parent"})
    keep_per_parent: int = field(default=4, metadata={"help": "solvable failures kept per parent (lowest scores)"})
    families: tuple[str, ...] = field(default=tuple(FAMILIES), metadata={"help": "search families (see FAMILIES)"})
    attempts: int = field(default=6, metadata={"help": "tries to draw a plausible variant per population member"})
    smoothing: float = field(default=0.5, metadata={"help": "weight of the elite fit against the old distribution"})
    min_std: float = field(default=0.05, metadata={"help": "smallest standard deviation (units of a range)"})


@dataclass(frozen=True)
class SearchReport:
    """Outcome of a search. Scores are ``score_fn`` values (e.g. CLS); a drop is parent - variant.

    ``searched``: parents the planner scores at least ``min_drop`` on (the others cannot drop that
    much and get no variants); ``evaluated``: variants scored with the planner (the budget);
    ``reference_evaluated``: variants
    scored with the reference planner; ``found``: evaluated variants scoring at least ``min_drop``
    below their parent; ``solvable``: those the reference planner solves; ``kept``: the returned
    variants (the lowest-scoring solvable ones, ``keep_per_parent`` per parent).
    ``kept_parent_score``, ``kept_score`` and ``mean_drop`` are means over the kept variants (of
    each one's parent score, its own score and their difference, so ``mean_drop`` =
    ``kept_parent_score - kept_score``); ``variants`` lists every kept variant with ``variant``
    and ``parent`` ids, ``family``, ``parent_score``, ``variant_score``, ``drop`` and
    ``reference_score`` (the reference planner's score on the variant).
    """

    planner: str
    reference_planner: str
    parents: int
    searched: int
    evaluated: int
    reference_evaluated: int
    found: int
    solvable: int
    kept: int
    kept_parent_score: float
    kept_score: float
    mean_drop: float
    mean_drop_solvable: float
    kept_by_family: dict[str, int]
    rejected: dict[str, int]
    seconds: float
    variants: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: floats rounded to 4 decimals, NaN (no variant to average) as ``None``."""
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return None if v != v else round(v, 4)
            if isinstance(v, list):
                return [clean(x) for x in v]
            return {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v

        return {k: clean(v) for k, v in self.__dict__.items()}


@dataclass
class _Family:
    """The sampling distribution of one family for one parent."""

    numeric: list[tuple[int, str, Param]]  # (step, parameter name, range) of each numeric dim
    choices: list[tuple[int, str, Choice]]
    mean: np.ndarray  # [D] in [0, 1] units of the ranges
    std: np.ndarray  # [D]
    probs: list[np.ndarray]  # one probability vector per choice parameter
    fresh: bool = True  # not refitted yet: sample uniformly


def _family(name: str) -> _Family:
    numeric, choices = [], []
    for step, transform in enumerate(FAMILIES[name]):
        for pname, p in get_transform(transform).params.items():
            (choices if isinstance(p, Choice) else numeric).append((step, pname, p))
    D = len(numeric)
    return _Family(numeric, choices, np.full(D, 0.5), np.full(D, 0.5),
                   [np.full(len(c.options), 1.0 / len(c.options)) for _, _, c in choices])


@dataclass
class _Candidate:
    parent: int
    family: str
    unit: np.ndarray
    picks: tuple[int, ...]
    variant: Scenario
    score: float = math.nan
    reference: float = math.nan


@dataclass
class _ParentState:
    families: dict[str, _Family]
    probs: np.ndarray  # over config.families
    tried: Counter = field(default_factory=Counter)
    worked: Counter = field(default_factory=Counter)


def _draw(fam: _Family, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    if fam.fresh:
        unit = rng.random(len(fam.mean))
    else:
        unit = np.clip(fam.mean + fam.std * rng.standard_normal(len(fam.mean)), 0.0, 1.0)
    picks = tuple(int(rng.choice(len(p), p=p)) for p in fam.probs)
    return unit, picks


def _params(name: str, fam: _Family, unit: np.ndarray, picks: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """The transform name and parameters that ``unit``/``picks`` stand for in family ``name``."""
    steps: list[dict[str, Any]] = [{} for _ in FAMILIES[name]]
    for u, (step, pname, p) in zip(unit, fam.numeric):
        steps[step][pname] = p.from_unit(float(u))  # type: ignore[union-attr]
    for k, (step, pname, c) in zip(picks, fam.choices):
        steps[step][pname] = c.options[k]
    if len(steps) == 1:
        return FAMILIES[name][0], steps[0]
    return "chain", {"steps": [{"transform": t, "params": p} for t, p in zip(FAMILIES[name], steps)]}


def _alive(state: _ParentState, names: Sequence[str], attempts: int) -> np.ndarray:
    """Families not yet shown inapplicable to the parent (``attempts`` failures, no success)."""
    return np.array([state.worked[n] > 0 or state.tried[n] < attempts for n in names])


def _sample(
    parents: Sequence[Scenario], states: list[_ParentState], counts: list[int], known: list[frozenset[tuple[str, str]]],
    iteration: int, seed: int, config: SearchConfig, stats: VariantStats,
) -> list[_Candidate]:
    """``counts[p]`` valid, plausible candidates per parent (fewer where attempts run out)."""
    names = list(config.families)
    out: list[_Candidate] = []
    for p, (parent, state) in enumerate(zip(parents, states)):
        for k in range(counts[p]):
            for attempt in range(config.attempts):
                alive = _alive(state, names, config.attempts)
                if not alive.any():
                    break
                rng = np.random.default_rng([seed, stable_hash(parent.id), iteration, k, attempt])
                w = state.probs * alive
                name = names[int(rng.choice(len(names), p=w / w.sum()))]
                fam = state.families[name]
                unit, picks = _draw(fam, rng)
                transform, params = _params(name, fam, unit, picks)
                state.tried[name] += 1
                v = try_variant(parent, transform, params, int(rng.integers(2**31)), known[p], stats)
                if v is not None:
                    state.worked[name] += 1
                    out.append(_Candidate(p, name, unit, picks, v))
                    break
    return out


def _refit(state: _ParentState, elite: list[_Candidate], names: Sequence[str], config: SearchConfig) -> None:
    a = config.smoothing
    freq = np.array([sum(c.family == n for c in elite) for n in names], float) / max(len(elite), 1)
    probs = (1 - a) * state.probs + a * freq
    state.probs = np.maximum(probs, 0.05) / np.maximum(probs, 0.05).sum()
    for name in names:
        members = [c for c in elite if c.family == name]
        if not members:
            continue
        fam = state.families[name]
        units = np.stack([c.unit for c in members])
        fam.mean = (1 - a) * fam.mean + a * units.mean(axis=0)
        fam.std = np.maximum((1 - a) * fam.std + a * units.std(axis=0), config.min_std)
        for j in range(len(fam.probs)):
            counts = np.bincount([c.picks[j] for c in members], minlength=len(fam.probs[j])) / len(members)
            fam.probs[j] = (1 - a) * fam.probs[j] + a * counts
        fam.fresh = False


def _scores(score_fn: ScoreFn, scenarios: Sequence[Scenario], planner: str) -> np.ndarray:
    if not scenarios:
        return np.zeros(0)
    out = np.asarray(score_fn(list(scenarios), planner), dtype=np.float64).reshape(-1)
    if out.shape != (len(scenarios),):
        raise ValueError(f"score_fn returned {out.shape[0]} scores for {len(scenarios)} scenarios")
    return out


def adversarial_search(
    parents: Sequence[Scenario],
    score_fn: ScoreFn,
    planner: str,
    budget: int,
    seed: int,
    reference_planner: str = "pdm_closed",
    config: SearchConfig = SearchConfig(),
) -> tuple[list[Scenario], SearchReport]:
    """Search plausible variants of ``parents`` on which ``planner`` scores at least
    ``config.min_drop`` below the parent while ``reference_planner`` still scores at least
    ``config.solved_threshold``; ``budget`` variants are scored with ``planner`` in total.

    Returns the kept variants (with provenance; the ``keep_per_parent`` lowest-scoring solvable
    failures of each parent) and a :class:`SearchReport`. Deterministic for a given ``seed``
    (and a deterministic ``score_fn``).
    """
    if budget < 1:
        raise AvError(f"--budget must be at least 1, got {budget}")
    if not parents:
        raise AvError("adversarial search: no parent scenarios")
    unknown = set(config.families) - set(FAMILIES)
    if unknown:
        raise AvError(f"unknown search family {sorted(unknown)[0]!r}; choose from {', '.join(FAMILIES)}")
    t0 = time.perf_counter()
    names = list(config.families)
    log.info("adversarial search: %d parents, budget %d, %s vs reference %s", len(parents), budget, planner,
             reference_planner)
    base = _scores(score_fn, parents, planner)
    known = [plausibility.issue_keys(p) for p in parents]
    states = [_ParentState({n: _family(n) for n in names}, np.full(len(names), 1.0 / len(names))) for _ in parents]
    stats, evaluated = VariantStats(), []
    # a parent the planner already fails cannot fail by min_drop more: it gets no population
    open_ = [p for p in range(len(parents)) if base[p] - config.min_drop >= 0.0]
    iterations = max(1, min(config.iterations, budget))
    for it in range(iterations if open_ else 0):
        n = budget // iterations + (budget % iterations if it == iterations - 1 else 0)
        counts = [0] * len(parents)
        for k, p in enumerate(open_):
            counts[p] = n // len(open_) + (k < n % len(open_))
        cands = _sample(parents, states, counts, known, it, seed, config, stats)
        scores = _scores(score_fn, [c.variant for c in cands], planner)
        for c, s in zip(cands, scores):
            c.score = float(s)
        _check_reference(cands, base, score_fn, reference_planner, config)
        for p, state in enumerate(states):
            mine = [c for c in cands if c.parent == p and not c.reference < config.solved_threshold]
            mine.sort(key=lambda c: (c.score, c.variant.id))
            n_elite = max(2, math.ceil(config.elite_frac * counts[p]))
            _refit(state, mine[:n_elite], names, config)
        evaluated += cands
        found = [c for c in cands if c.score <= base[c.parent] - config.min_drop]
        log.info("adversarial iteration %d/%d: %d variants scored, %d at least %.2f below their parent, "
                 "%d of them solved by %s (%.1f s so far)", it + 1, iterations, len(cands), len(found),
                 config.min_drop, sum(c.reference >= config.solved_threshold for c in found), reference_planner,
                 time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    return _summarise(parents, len(open_), base, evaluated, stats, planner, reference_planner, config, seconds)


def _check_reference(
    cands: list[_Candidate], base: np.ndarray, score_fn: ScoreFn, reference: str, config: SearchConfig
) -> None:
    """Score with the reference planner each parent's most promising failures (as many as its elite)."""
    picked: list[_Candidate] = []
    for p in sorted({c.parent for c in cands}):
        mine = sorted((c for c in cands if c.parent == p), key=lambda c: (c.score, c.variant.id))
        n_elite = max(2, math.ceil(config.elite_frac * len(mine)))
        picked += [c for c in mine[:n_elite] if c.score <= base[p] - config.min_drop]
    for c, s in zip(picked, _scores(score_fn, [c.variant for c in picked], reference)):
        c.reference = float(s)


def _summarise(
    parents: Sequence[Scenario], searched: int, base: np.ndarray, evaluated: list[_Candidate], stats: VariantStats,
    planner: str, reference: str, config: SearchConfig, seconds: float,
) -> tuple[list[Scenario], SearchReport]:
    found = [c for c in evaluated if c.score <= base[c.parent] - config.min_drop]
    solvable = [c for c in found if c.reference >= config.solved_threshold]
    kept: list[_Candidate] = []
    for p in range(len(parents)):
        seen: set[str] = set()
        for c in sorted((c for c in solvable if c.parent == p), key=lambda c: (c.score, c.variant.id)):
            if c.variant.id not in seen and len(seen) < config.keep_per_parent:
                seen.add(c.variant.id)
                kept.append(c)

    def mean(x: list[float]) -> float:
        return float(np.mean(x)) if x else math.nan

    report = SearchReport(
        planner=planner,
        reference_planner=reference,
        parents=len(parents),
        searched=searched,
        evaluated=len(evaluated),
        reference_evaluated=sum(not math.isnan(c.reference) for c in evaluated),
        found=len(found),
        solvable=len(solvable),
        kept=len(kept),
        kept_parent_score=mean([float(base[c.parent]) for c in kept]),
        kept_score=mean([c.score for c in kept]),
        mean_drop=mean([float(base[c.parent]) - c.score for c in kept]),
        mean_drop_solvable=mean([float(base[c.parent]) - c.score for c in solvable]),
        kept_by_family=dict(sorted(Counter(c.family for c in kept).items())),
        rejected=dict(sorted(stats.rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
        seconds=round(seconds, 2),
        variants=[{"variant": c.variant.id, "parent": parents[c.parent].id, "family": c.family,
                   "parent_score": float(base[c.parent]), "variant_score": c.score,
                   "drop": float(base[c.parent]) - c.score, "reference_score": c.reference} for c in kept],
    )
    return [c.variant for c in kept], report


def mine_hard(
    parents: Sequence[Scenario],
    scores: Sequence[float] | np.ndarray,
    count: int,
    per_parent: int,
    seed: int,
    transforms: Sequence[str] | None = None,
) -> tuple[list[Scenario], VariantStats]:
    """Hard-example mining: ``per_parent`` variants around each of the ``count`` parents on which
    the planner scored lowest (``scores[i]`` belongs to ``parents[i]``; ties broken by id)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(parents),):
        raise AvError(f"mine_hard: {scores.shape[0]} scores for {len(parents)} parents")
    order = sorted(range(len(parents)), key=lambda i: (scores[i], parents[i].id))[: max(count, 0)]
    return generate_variants([parents[i] for i in order], per_parent, seed, transforms)


__all__ = ["FAMILIES", "ScoreFn", "SearchConfig", "SearchReport", "adversarial_search", "mine_hard"]
