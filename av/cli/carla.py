"""``av carla``: the CARLA server the CARLA backend talks to.

* ``av carla check [--carla-host H] [--carla-port P] [--carla-timeout S]``: connect and print the
  server's version and map as JSON; without a server there, one line naming the address and how
  to start CARLA 0.9.16, and exit 2.
* ``av carla run --store STORE --scenario ID --planner NAME --out RUN_DIR``: drive a planner
  through one scenario on the CARLA server with the one closed-loop driver (the same one the
  builtin simulator uses), score it with the behavior evaluator and write ``summary.json`` and a
  bird's-eye GIF of the drive.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """``--carla-host``, ``--carla-port``, ``--carla-timeout`` (defaults: :class:`CarlaSettings`)."""
    from closedloop.sim.carla_backend import CarlaSettings

    d = CarlaSettings()
    parser.add_argument("--carla-host", default=d.host, help=f"CARLA server host (default: {d.host})")
    parser.add_argument("--carla-port", type=int, default=d.port, help=f"CARLA server RPC port (default: {d.port})")
    parser.add_argument("--carla-timeout", type=float, default=d.timeout_s,
                        help=f"seconds to wait for the server (default: {d.timeout_s})")


def register(sub: argparse._SubParsersAction) -> None:
    from av.cli.args import add_planner_settings_args

    p = sub.add_parser("carla", help="the CARLA simulator backend")
    s = p.add_subparsers(dest="carla_command", metavar="COMMAND", required=True)
    check = s.add_parser("check", help="connect to a CARLA server and show its version and map")
    add_server_args(check)
    check.set_defaults(func=_check)

    run = s.add_parser("run", help="drive a planner through a scenario on a CARLA server and score it")
    run.add_argument("--store", type=Path, required=True, help="scenario store")
    run.add_argument("--scenario", required=True, help="scenario id (see av data list STORE)")
    run.add_argument("--planner", required=True, help="registered planner name or package.module:factory")
    add_planner_settings_args(run)
    run.add_argument("--agents", choices=("log", "tm"), default="log",
                     help="agents replay the log, or drive on the Traffic Manager (default: log)")
    run.add_argument("--town", default="", help="load this CARLA town instead of the scenario's OpenDRIVE")
    run.add_argument("--out", type=Path, required=True, help="run directory")
    add_server_args(run)
    run.set_defaults(func=_run)


def _check(args: argparse.Namespace) -> int:
    from closedloop.sim.carla_backend import CarlaSettings, connect

    settings = CarlaSettings(host=args.carla_host, port=args.carla_port, timeout_s=args.carla_timeout).validate()
    client = connect(settings)
    world = client.get_world()
    print(json.dumps({"server": f"{settings.host}:{settings.port}", "server_version": client.get_server_version(),
                      "client_version": client.get_client_version(), "map": world.get_map().name,
                      "synchronous_mode": world.get_settings().synchronous_mode}, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    import torch

    from av.batch import collate
    from av.cli.args import planner_settings_from_args
    from av.fileio import atomic_write_json
    from av.viz import render_rollout
    from closedloop.driver import rollout
    from closedloop.evaluator import evaluate, reasons
    from closedloop.planner import make_planner
    from closedloop.sim import make_simulator
    from scenarios.store import read_store

    (scenario,) = read_store(args.store, [args.scenario])
    planner = make_planner(args.planner, **planner_settings_from_args([args.planner], args)[args.planner])
    settings = {"host": args.carla_host, "port": args.carla_port, "timeout_s": args.carla_timeout,
                "agents": args.agents, "town": args.town}
    batch = collate([scenario])
    with make_simulator("carla", scenarios=[scenario], **settings) as sim, torch.no_grad():
        result = rollout(sim, batch, planner)
    scores = {k: float(v[0]) for k, v in evaluate(result).items()}
    why = [x for x in reasons({k: v[:1] for k, v in evaluate(result).items()})[0].split("; ") if x]
    args.out.mkdir(parents=True, exist_ok=True)
    T, N = scenario.num_steps, scenario.num_agents
    render_rollout(scenario, args.out / "drive.gif", result.ego[0, :T].numpy(), result.agents[0, :N, :T].numpy(),
                   result.agent_valid[0, :N, :T].numpy(), title=f"{planner.name} on CARLA",
                   planned=None if result.planned is None else result.planned[0, :T].numpy())
    summary = {"scenario_id": scenario.id, "planner": planner.name, "simulator": "carla", "settings": settings,
               "scores": scores, "reasons": why, "gif": "drive.gif"}
    atomic_write_json(args.out / "summary.json", summary)
    print(json.dumps({k: summary[k] for k in ("scenario_id", "planner", "scores")}, indent=2))
    return 0
