"""``av scenarios``: list the variant transforms, generate variants, search adversarial variants.

* ``av scenarios transforms``: the registered transforms and their parameter ranges.
* ``av scenarios variants --store STORE --per-scenario K --seed S --out STORE2``: K plausible
  variants per scenario, with provenance, written with their parents (so that
  ``av viz STORE2 VARIANT_ID --with-parent`` works); prints the counts and rejections as JSON.
  With ``--hard-from RUN_DIR --hard-planner NAME --hardest N`` it mines hard examples instead:
  variants only around the N scenarios on which that planner scored the lowest CLS in the
  evaluation run RUN_DIR (``av closedloop eval``).
* ``av scenarios adversarial --store STORE --planner NAME --budget N --out STORE3``: variants on
  which the planner fails and the reference planner does not (cross-entropy search scored by the
  closed-loop simulator and evaluator: per-scenario CLS, non-reactive agents by default); writes
  the solvable failures (and their parents) and prints the search report as JSON.
* ``av scenarios export-xodr --store STORE --scenario ID --out F.xodr``: the scenario's road
  network as OpenDRIVE 1.7 (CARLA's ``generate_opendrive_world`` loads it).
* ``av scenarios export-xosc --store STORE --scenario ID --out F.xosc``: the scenario as
  OpenSCENARIO 1.2, with the OpenDRIVE file it references written beside it (``F.xodr``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from av.cli.args import add_config_args, config_from_args
from av.types import Scenario

if TYPE_CHECKING:
    from scenarios.adversarial import ScoreFn


@dataclass(frozen=True)
class VariantsOptions:
    """Options of ``av scenarios variants``."""

    store: Path = field(metadata={"help": "input scenario store"})
    out: Path = field(metadata={"help": "output scenario store (written atomically)"})
    per_scenario: int = field(default=4, metadata={"help": "variants per scenario"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    transforms: str = field(default="", metadata={"help": "comma-separated transforms (empty: all registered)"})
    parents: bool = field(default=True, metadata={"help": "also write the parent scenarios"})
    hard_from: str = field(default="", metadata={
        "help": "an `av closedloop eval` run directory: mine variants around the lowest-CLS scenarios"})
    hard_planner: str = field(default="idm", metadata={"help": "with --hard-from: the planner whose scores count"})
    hard_agents: str = field(default="log", metadata={"help": "with --hard-from: the agent mode whose scores count"})
    hardest: int = field(default=4, metadata={"help": "with --hard-from: how many lowest-scoring scenarios"})


@dataclass(frozen=True)
class AdversarialOptions:
    """Options of ``av scenarios adversarial`` (the search itself: ``SearchConfig``)."""

    store: Path = field(metadata={"help": "input scenario store (the parents)"})
    planner: str = field(metadata={"help": "registered planner to find failures of"})
    out: Path = field(metadata={"help": "output scenario store for the solvable failures"})
    budget: int = field(default=128, metadata={"help": "variants scored with the planner, in total"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    reference_planner: str = field(default="pdm_closed", metadata={"help": "planner that must still solve a variant"})
    agents: Literal["log", "idm"] = field(
        default="log", metadata={"help": "background agents: log replay (CLS-NR) or IDM (CLS-R)"})
    batch_size: int = field(default=64, metadata={"help": "scenarios simulated at once"})
    device: str = field(default="cpu", metadata={"help": "torch device for the simulation"})
    parents: bool = field(default=True, metadata={"help": "also write the parents of the kept variants"})
    family: str = field(default="", metadata={"help": "comma-separated search families (empty: all)"})


@dataclass(frozen=True)
class ExportOptions:
    """Options of ``av scenarios export-xodr`` / ``export-xosc``."""

    store: Path = field(metadata={"help": "scenario store"})
    scenario: str = field(metadata={"help": "id of the scenario to export"})
    out: Path = field(metadata={"help": "output file (.xodr / .xosc)"})


def register(sub: argparse._SubParsersAction) -> None:
    from scenarios.adversarial import SearchConfig

    p = sub.add_parser("scenarios", help="scenario variants and adversarial search")
    s = p.add_subparsers(dest="scenarios_command", metavar="COMMAND", required=True)

    tr = s.add_parser("transforms", help="list the registered variant transforms and their parameter ranges")
    tr.set_defaults(func=_transforms)

    var = s.add_parser("variants", help="generate plausible variants of every scenario of a store")
    add_config_args(var, VariantsOptions)
    var.set_defaults(func=_variants)

    adv = s.add_parser("adversarial", help="search solvable variants on which a planner fails")
    add_config_args(adv, AdversarialOptions)
    add_config_args(adv, SearchConfig, skip=("families",))
    adv.set_defaults(func=_adversarial)

    xodr = s.add_parser("export-xodr", help="write a scenario's road network as OpenDRIVE")
    add_config_args(xodr, ExportOptions)
    xodr.set_defaults(func=_export, suffix=".xodr")

    xosc = s.add_parser("export-xosc", help="write a scenario as OpenSCENARIO (and the OpenDRIVE it references)")
    add_config_args(xosc, ExportOptions)
    xosc.set_defaults(func=_export, suffix=".xosc")


def _export(args: argparse.Namespace) -> int:
    from av.errors import AvError
    from scenarios.store import read_store

    opts = config_from_args(ExportOptions, args)
    if opts.out.suffix != args.suffix:
        raise AvError(f"--out {opts.out}: must end in {args.suffix}")
    (scenario,) = read_store(opts.store, [opts.scenario])
    try:
        import scenariogeneration  # noqa: F401
    except ImportError:
        raise AvError("export needs the scenariogeneration package: pip install 'av-closedloop[asam]'") from None
    if args.suffix == ".xodr":
        from scenarios.opendrive import write_opendrive

        written = [write_opendrive(scenario, opts.out)]
    else:
        from scenarios.openscenario import write_openscenario

        written = list(write_openscenario(scenario, opts.out))
    print(json.dumps({"scenario": scenario.id, "written": [str(p) for p in written]}, indent=2))
    return 0


def _names(text: str, known: Sequence[str], what: str, option: str) -> list[str]:
    from av.errors import AvError

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise AvError(f"{option}: unknown {what} {bad[0]!r}; choose from {', '.join(known)}")
    return names


def _transforms(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from scenarios.variants import Choice, get_transform, transform_names

    table = Table(title="variant transforms")
    for col in ("name", "adversarial", "parameters", "what it does"):
        table.add_column(col)
    for name in transform_names():
        spec = get_transform(name)
        ranges = {k: list(p.options) if isinstance(p, Choice) else [p.lo, p.hi] for k, p in spec.params.items()}
        params = ", ".join(f"{k} in {r}" for k, r in ranges.items()) or "steps: [{transform, params}, ...]"
        table.add_row(name, "yes" if spec.adversarial else "", params, spec.summary)
    Console(width=200).print(table)
    return 0


def _variants(args: argparse.Namespace) -> int:
    from rich.console import Console

    from av.errors import AvError
    from scenarios.store import read_store, write_store
    from scenarios.variants import generate_variants, transform_names

    opts = config_from_args(VariantsOptions, args)
    if opts.out.resolve() == opts.store.resolve():
        raise AvError(f"--out {opts.out}: must differ from --store")
    names = _names(opts.transforms, transform_names(), "transform", "--transforms") or None
    parents = read_store(opts.store)
    if opts.hard_from:
        parents, variants, stats = _mine(opts, parents, names)
    else:
        variants, stats = generate_variants(parents, opts.per_scenario, opts.seed, names)
    n = write_store(opts.out, [*(parents if opts.parents else []), *variants])
    summary = {"store": str(opts.out), "written": n, "parents": len(parents), **stats.as_dict()}
    print(json.dumps(summary, indent=2))
    Console(stderr=True).print(
        f"wrote {len(variants)} variants of {len(parents)} scenarios to {opts.out} "
        f"({sum(stats.rejected.values())} candidates rejected)")
    return 0


def _mine(opts: VariantsOptions, parents: list[Scenario], names: list[str] | None) -> tuple:
    """Hard-example mining: variants around the ``opts.hardest`` parents with the lowest CLS of
    ``opts.hard_planner`` x ``opts.hard_agents`` in the eval run ``opts.hard_from``."""
    from av.errors import AvError
    from closedloop.runner import read_results
    from scenarios.adversarial import mine_hard

    table = read_results(Path(opts.hard_from))
    if table is None:
        raise AvError(f"--hard-from {opts.hard_from}: no results.parquet (run `av closedloop eval` first)")
    rows = table.select(opts.hard_planner, opts.hard_agents)
    cls = dict(zip(np.asarray(rows.column("scenario_id")).tolist(), np.asarray(rows.column("cls")).tolist()))
    scored = [p for p in parents if p.id in cls]
    if not scored:
        raise AvError(f"--hard-from {opts.hard_from}: no {opts.hard_planner}/{opts.hard_agents} scores "
                      f"for the scenarios of {opts.store}")
    variants, stats = mine_hard(scored, [cls[p.id] for p in scored], opts.hardest, opts.per_scenario, opts.seed, names)
    used = {v.provenance.parent_id for v in variants if v.provenance}
    return [p for p in scored if p.id in used], variants, stats


def _adversarial(args: argparse.Namespace) -> int:
    from rich.console import Console

    from av.errors import AvError
    from closedloop.planner import planner_names
    from scenarios.adversarial import FAMILIES, SearchConfig, adversarial_search
    from scenarios.store import read_store, write_store

    opts = config_from_args(AdversarialOptions, args)
    families = tuple(_names(opts.family, list(FAMILIES), "search family", "--family")) or tuple(FAMILIES)
    config = config_from_args(SearchConfig, args, families=families)
    for option, name in (("--planner", opts.planner), ("--reference-planner", opts.reference_planner)):
        _names(name, planner_names(), "planner", option)
    if opts.batch_size < 1:
        raise AvError(f"--batch-size must be at least 1, got {opts.batch_size}")
    parents = read_store(opts.store)
    score_fn = closedloop_scorer(opts.agents, opts.batch_size, opts.device)
    variants, report = adversarial_search(
        parents, score_fn, opts.planner, opts.budget, opts.seed, opts.reference_planner, config)
    used = {v.provenance.parent_id for v in variants if v.provenance}
    kept_parents = [p for p in parents if p.id in used] if opts.parents else []
    write_store(opts.out, [*kept_parents, *variants])
    print(json.dumps({"store": str(opts.out), "agents": opts.agents, **report.as_dict()}, indent=2))
    Console(stderr=True).print(f"wrote {len(variants)} solvable failures of {opts.planner} to {opts.out}")
    return 0


def closedloop_scorer(agents: str, batch_size: int, device: str) -> "ScoreFn":
    """``score_fn(scenarios, planner_name) -> CLS [len(scenarios)]``: the builtin simulator
    (``agents`` background agents) and the evaluator, ``batch_size`` scenarios at a time."""
    import logging
    import time

    import torch

    from av.batch import collate
    from closedloop.evaluator import evaluate
    from closedloop.planner import Planner, make_planner
    from closedloop.driver import rollout
    from closedloop.sim import make_simulator

    sim = make_simulator("builtin", agents=agents)
    planners: dict[str, Planner] = {}
    log = logging.getLogger(__name__)

    def score(scenarios: Sequence[Scenario], planner: str) -> np.ndarray:
        if planner not in planners:
            planners[planner] = make_planner(planner)
        out = []
        for i in range(0, len(scenarios), batch_size):
            start = time.perf_counter()
            batch = collate(scenarios[i : i + batch_size]).to(device)
            with torch.no_grad():
                out.append(evaluate(rollout(sim, batch, planners[planner], record_plans=False))["cls"].double().cpu().numpy())
            log.info("%s: scenarios %d-%d of %d scored in %.1f s (mean CLS %.3f)", planner, i + 1,
                     i + batch.batch_size, len(scenarios), time.perf_counter() - start, float(out[-1].mean()))
        return np.concatenate(out) if out else np.zeros(0)

    return score
