"""Scenario variants: seeded, pure ``Scenario -> Scenario`` transforms, registered by name.

A transform is a plain function ``fn(scenario, rng: numpy.random.Generator, **params) -> Scenario``
that never changes its input. It is registered with the ranges its parameters are sampled from
(:func:`register_transform`); the built-in ones live in :mod:`scenarios.transforms`.

:func:`make_variant` runs a transform with a seed and stamps the result with a deterministic id
(``f"{parent}~{transform}-{hash8}"``), tags and a :class:`~av.types.Provenance`, so that
:func:`regenerate` rebuilds the variant exactly from its provenance and its parent. A chain of
transforms is itself a transform, ``"chain"``, whose ``params`` are
``{"steps": [{"transform": name, "params": {...}}, ...]}``.

:func:`generate_variants` samples transforms and parameters from the registry with RNGs seeded by
``(seed, parent id, slot, attempt)`` -- so a variant does not depend on which other scenarios or
slots were generated, nor in what order -- validates every candidate (``Scenario.validate`` and
:mod:`scenarios.plausibility`), retries a few times, and counts what it rejected and why.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from av.errors import AvError
from av.types import Provenance, Scenario, ScenarioError
from scenarios import plausibility


class VariantError(AvError):
    """A transform cannot produce a plausible variant of this scenario.

    The message says why, prefixed by the transform's name (e.g. ``"cut_in: no adjacent lane
    next to the ego"``); ``reason`` is the same without specifics, for counting rejections.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


TransformFn = Callable[..., Scenario]


@dataclass(frozen=True)
class Uniform:
    """A float parameter drawn uniformly from ``[lo, hi]`` (rounded to 3 decimals)."""

    lo: float
    hi: float

    def sample(self, rng: np.random.Generator) -> float:
        return self.from_unit(float(rng.random()))

    def from_unit(self, u: float) -> float:
        """The value at fraction ``u`` in [0, 1] of the range."""
        return round(self.lo + float(np.clip(u, 0.0, 1.0)) * (self.hi - self.lo), 3)

    def to_unit(self, value: Any) -> float:
        return (float(value) - self.lo) / (self.hi - self.lo) if self.hi > self.lo else 0.5


@dataclass(frozen=True)
class Integers:
    """An integer parameter drawn uniformly from ``lo..hi`` (inclusive)."""

    lo: int
    hi: int

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.lo, self.hi + 1))

    def from_unit(self, u: float) -> int:
        return int(round(self.lo + float(np.clip(u, 0.0, 1.0)) * (self.hi - self.lo)))

    def to_unit(self, value: Any) -> float:
        return (int(value) - self.lo) / (self.hi - self.lo) if self.hi > self.lo else 0.5


@dataclass(frozen=True)
class Choice:
    """A categorical parameter drawn uniformly from ``options``."""

    options: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]


Param = Uniform | Integers | Choice


@dataclass(frozen=True)
class TransformSpec:
    """A registered transform: its function, parameter ranges and whether the adversarial search
    optimises it (``adversarial``). ``sampler`` overrides sampling from ``params`` (used by chain)."""

    name: str
    fn: TransformFn
    params: Mapping[str, Param]
    adversarial: bool = False
    summary: str = ""
    sampler: Callable[[np.random.Generator], dict[str, Any]] | None = None

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Parameters drawn from the registered ranges."""
        if self.sampler is not None:
            return self.sampler(rng)
        return {k: p.sample(rng) for k, p in self.params.items()}


_REGISTRY: dict[str, TransformSpec] = {}


def register_transform(
    name: str, params: Mapping[str, Param], adversarial: bool = False
) -> Callable[[TransformFn], TransformFn]:
    """Decorator: register ``fn(scenario, rng, **params) -> Scenario`` as transform ``name``."""

    def deco(fn: TransformFn) -> TransformFn:
        _REGISTRY[name] = TransformSpec(name, fn, dict(params), adversarial, _first_sentence(fn.__doc__ or ""))
        return fn

    return deco


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    return paragraph.split(". ")[0].rstrip(".") + "." if paragraph else ""


def _load_builtins() -> None:
    importlib.import_module("scenarios.transforms")


def transform_names(adversarial: bool | None = None) -> list[str]:
    """Registered transform names (sorted); only the adversarial (or non-adversarial) ones if asked."""
    _load_builtins()
    return sorted(n for n, s in _REGISTRY.items() if adversarial is None or s.adversarial == adversarial)


def get_transform(name: str) -> TransformSpec:
    """The registered transform ``name`` (raises :class:`AvError` naming the choices)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise AvError(f"unknown transform {name!r}; choose from {', '.join(transform_names())}")
    return _REGISTRY[name]


def _json_params(params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``params`` as they will be stored (a JSON round trip), so regeneration sees the same values."""
    try:
        return json.loads(json.dumps(dict(params), default=_json_default))
    except (TypeError, ValueError) as e:
        raise AvError(f"{where}: parameters are not JSON-serialisable ({e})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _checked(spec: TransformSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    expected = set(spec.params) if spec.sampler is None else {"steps"}
    if set(params) != expected:
        missing, extra = expected - set(params), set(params) - expected
        what = f"missing {sorted(missing)}" if missing else f"unknown {sorted(extra)}"
        raise AvError(f"transform {spec.name}: {what} parameter(s); expected {sorted(expected)}")
    return dict(params)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def make_variant(
    scenario: Scenario,
    transform: str,
    params: Mapping[str, Any],
    seed: int,
    parent_issues: frozenset[tuple[str, str]] | None = None,
) -> Scenario:
    """Apply transform ``transform`` with ``params`` and ``seed`` to ``scenario``; a valid,
    plausible variant or :class:`VariantError`.

    The result has id ``f"{scenario.id}~{transform}-{hash8}"`` (``hash8`` from the transform,
    params and seed), the parent's tags plus ``"variant"`` and the transform name (and a chain's
    step names), and
    ``provenance = Provenance(scenario.id, transform, params, seed)``. It must pass
    ``Scenario.validate`` and add no plausibility issue to those of ``scenario``
    (``parent_issues``: :func:`scenarios.plausibility.issue_keys` of ``scenario``, if already known).
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AvError(f"transform {transform}: seed must be a non-negative integer, got {seed!r}")
    spec = get_transform(transform)
    params = _checked(spec, _json_params(params, f"transform {transform}"))
    out = spec.fn(scenario, np.random.default_rng(int(seed)), **params)
    steps = [str(step["transform"]) for step in params["steps"]] if transform == "chain" else []
    tags = tuple(dict.fromkeys((*scenario.tags, "variant", transform, *steps)))
    out = out.replace(
        id=f"{scenario.id}~{transform}-{_digest([transform, params, int(seed)])}",
        tags=tags,
        provenance=Provenance(scenario.id, transform, params, int(seed)),
    ).validate()
    known = plausibility.issue_keys(scenario) if parent_issues is None else parent_issues
    issues = plausibility.find_issues(out, known)
    if issues:
        first = issues[0]
        raise VariantError(f"{transform}: implausible result ({first.message})",
                           reason=f"{transform}: implausible {first.kind}")
    return out


def regenerate(provenance: Provenance, parent: Scenario) -> Scenario:
    """Rebuild a variant exactly from its provenance and its parent scenario."""
    if parent.id != provenance.parent_id:
        raise AvError(f"regenerate: parent {parent.id!r} is not {provenance.parent_id!r}")
    return make_variant(parent, provenance.transform, provenance.params, provenance.seed)


# ---------------------------------------------------------------------------------- chain
def _chain(scenario: Scenario, rng: np.random.Generator, steps: Sequence[Mapping[str, Any]]) -> Scenario:
    """Apply several transforms in order (each with its own child RNG of ``rng``)."""
    if not steps:
        raise AvError("transform chain: needs at least one step")
    for step, child in zip(steps, rng.spawn(len(steps))):
        if not isinstance(step, Mapping) or set(step) != {"transform", "params"}:
            raise AvError('transform chain: each step must be {"transform": name, "params": {...}}')
        spec = get_transform(str(step["transform"]))
        scenario = spec.fn(scenario, child, **_checked(spec, step["params"]))
    return scenario


def _sample_chain(rng: np.random.Generator) -> dict[str, Any]:
    """Two different non-chain transforms in random order, each with sampled parameters."""
    names = [n for n in transform_names() if n != "chain"]
    picked = rng.choice(len(names), size=2, replace=False)
    return {"steps": [{"transform": names[i], "params": get_transform(names[i]).sample(rng)} for i in picked]}


_REGISTRY["chain"] = TransformSpec("chain", _chain, {}, False, "Several transforms applied in order.", _sample_chain)


# ---------------------------------------------------------------------------------- generation
@dataclass
class VariantStats:
    """What :func:`generate_variants` did: candidates tried, variants kept, rejections by reason."""

    attempts: int = 0
    generated: int = 0
    by_transform: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "generated": self.generated,
            "rejected": int(sum(self.rejected.values())),
            "by_transform": dict(sorted(self.by_transform.items())),
            "rejections": dict(sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash of ``text`` (Python's ``hash`` is salted per process)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def try_variant(
    parent: Scenario, transform: str, params: Mapping[str, Any], seed: int,
    known_issues: frozenset[tuple[str, str]], stats: VariantStats,
) -> Scenario | None:
    """:func:`make_variant`, or ``None`` (with the reason counted in ``stats``) if the transform
    does not apply, the result is invalid, or it adds a plausibility issue the parent lacks."""
    stats.attempts += 1
    try:
        v = make_variant(parent, transform, params, seed, known_issues)
    except VariantError as e:
        stats.rejected[e.reason] += 1
        return None
    except ScenarioError as e:  # a transform bug: never emit it, but count it where it shows
        stats.rejected[f"{transform}: invalid ({str(e).split(': ', 1)[-1]})"] += 1
        return None
    stats.generated += 1
    stats.by_transform[transform] += 1
    return v


def generate_variants(
    scenarios: Sequence[Scenario],
    per_scenario: int,
    seed: int,
    transforms: Sequence[str] | None = None,
    attempts: int = 4,
) -> tuple[list[Scenario], VariantStats]:
    """``per_scenario`` plausible variants of each scenario (fewer where every attempt failed).

    For slot ``j`` of scenario ``s`` and attempt ``a``, the transform (from ``transforms``, default
    all registered ones), its parameters and its seed come from
    ``np.random.default_rng([seed, stable_hash(s.id), j, a])``. Returns the variants (in scenario
    order) and the statistics (attempts, generated, rejections by reason).
    """
    if per_scenario < 0:
        raise AvError(f"--per-scenario must be >= 0, got {per_scenario}")
    names = sorted(transforms) if transforms else transform_names()
    specs = [get_transform(n) for n in names]
    stats, out, seen = VariantStats(), [], set()
    for parent in scenarios:
        known = plausibility.issue_keys(parent)
        for slot in range(per_scenario):
            for attempt in range(attempts):
                rng = np.random.default_rng([seed, stable_hash(parent.id), slot, attempt])
                spec = specs[int(rng.integers(len(specs)))]
                params = spec.sample(rng)
                v = try_variant(parent, spec.name, params, int(rng.integers(2**31)), known, stats)
                if v is not None and v.id not in seen:
                    seen.add(v.id)
                    out.append(v)
                    break
    return out, stats


def bench_variants(scenarios: Sequence[Scenario], per_scenario: int = 4, seed: int = 0) -> dict[str, Any]:
    """Throughput of :func:`generate_variants` (transform + validate + plausibility) on ``scenarios``."""
    t0 = time.perf_counter()
    variants, stats = generate_variants(scenarios, per_scenario, seed)
    seconds = time.perf_counter() - t0
    return {
        "scenarios": len(scenarios),
        "variants": len(variants),
        "attempts": stats.attempts,
        "rejected": int(sum(stats.rejected.values())),
        "seconds": round(seconds, 3),
        "variants_per_s": round(len(variants) / seconds, 2) if seconds > 0 else float("inf"),
        "attempts_per_s": round(stats.attempts / seconds, 2) if seconds > 0 else float("inf"),
    }


__all__ = [
    "Choice",
    "Integers",
    "Param",
    "TransformSpec",
    "Uniform",
    "VariantError",
    "VariantStats",
    "bench_variants",
    "generate_variants",
    "get_transform",
    "make_variant",
    "regenerate",
    "register_transform",
    "stable_hash",
    "transform_names",
    "try_variant",
]
