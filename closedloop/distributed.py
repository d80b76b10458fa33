"""Running one function over shards of work: in-process, or as Ray tasks on a cluster.

``map_shards(fn, shards, backend)`` returns ``[fn(s) for s in shards]`` in shard order. With a
:class:`RayBackend` every shard is one Ray task; a task whose worker process dies is run again
(up to ``max_retries`` times) by Ray, and since a shard's result is only its task's return value
(workers write nothing), a retried shard is neither lost nor counted twice. ``fn`` must be a
module-level function and its results must depend only on its shard (seed inside it), so the
in-process and the Ray runs return the same values.

``RayBackend("local")`` starts a local cluster (``ray.init(num_cpus=..., include_dashboard=False)``)
and shuts it down on :meth:`RayBackend.close`; ``RayBackend("auto")`` or ``"ray://host:10001"``
joins an existing cluster (started with ``ray start --head`` on one machine and
``ray start --address HEAD:6379`` on the others; the run directory and checkpoints must then be
on a file system every machine sees). Ray is imported only here, and only when a backend is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from av.errors import AvError

S = TypeVar("S")
R = TypeVar("R")


@dataclass
class RayBackend:
    """Where Ray tasks run: ``address`` ``"local"`` (start a cluster of ``num_cpus`` CPUs here) or a
    Ray address (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); ``max_retries``: reruns of a
    task whose worker died; ``cpus_per_task``: CPUs reserved by each shard's task."""

    address: str = "local"
    num_cpus: int = 2
    max_retries: int = 3
    cpus_per_task: float = 1.0
    _started: bool = False

    def start(self) -> "RayBackend":
        """Connect (or start the local cluster) unless Ray is already initialised in this process."""
        try:
            import ray
        except ImportError:
            raise AvError("--ray needs the ray package (pip install 'ray==2.60.0')") from None
        if self.max_retries < 0:
            raise AvError(f"--max-retries must be >= 0, got {self.max_retries}")
        if not ray.is_initialized():
            try:
                if self.address == "local":
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise AvError(f"--ray {self.address}: cannot connect ({str(e).splitlines()[0][:200]})") from None
            self._started = True
        return self

    def close(self) -> None:
        """Shut down the Ray session if this backend started it."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def map_shards(fn: Callable[[S], R], shards: Sequence[S], backend: RayBackend | None = None) -> list[R]:
    """``[fn(s) for s in shards]``, in-process (``backend`` None) or one Ray task per shard."""
    if backend is None:
        return [fn(s) for s in shards]
    import ray

    backend.start()
    task = ray.remote(num_cpus=backend.cpus_per_task, max_retries=backend.max_retries,
                      retry_exceptions=False)(fn)
    refs = [task.remote(s) for s in shards]
    try:
        return list(ray.get(refs))
    except ray.exceptions.WorkerCrashedError as e:
        raise AvError(f"a Ray worker died {backend.max_retries + 1} times on one shard ({e})") from None
    except ray.exceptions.RayTaskError as e:
        cause: Any = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, AvError):
            raise cause from None
        raise


def _rollout_shard(shard: tuple[tuple[Any, ...], str, str]) -> float:
    """Simulate scenarios ``shard[0]`` with planner ``shard[1]`` and ``shard[2]`` agents (one torch
    thread); returns the simulated scenario-seconds."""
    import torch

    from av.batch import collate
    from closedloop.driver import rollout
    from closedloop.planner import make_planner
    from closedloop.sim import make_simulator

    scenarios, planner, agents = shard
    torch.set_num_threads(1)
    batch = collate(list(scenarios))
    with torch.no_grad(), make_simulator("builtin", agents=agents) as sim:
        ro = rollout(sim, batch, make_planner(planner), record_plans=False)
    simulated = ro.step_valid & (torch.arange(ro.step_valid.shape[1])[None] > ro.start_step[:, None])
    return float(simulated.sum()) * batch.dt


def bench_rollouts(scenarios: Sequence[Any], planner: str = "idm", agents: str = "log", shard_size: int = 8,
                   workers: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """Closed-loop rollout throughput (simulated scenario-seconds per wall second) of ``planner``
    over ``scenarios`` in shards of ``shard_size``: in-process, then on a local Ray cluster of each
    of ``workers`` CPUs (its start-up not timed; one untimed warm-up pass loads the workers)."""
    import time

    shards = [(tuple(scenarios[i:i + shard_size]), planner, agents) for i in range(0, len(scenarios), shard_size)]
    rows = []

    def timed(backend: RayBackend | None) -> tuple[float, float]:
        start = time.perf_counter()
        seconds = sum(map_shards(_rollout_shard, shards, backend))
        return seconds, time.perf_counter() - start

    seconds, wall = timed(None)
    rows.append({"mode": "in-process", "workers": 1, "wall_s": round(wall, 2),
                 "scenario_s_per_s": round(seconds / wall, 1)})
    for n in workers:
        backend = RayBackend("local", num_cpus=n).start()
        try:
            timed(backend)  # warm-up: start the workers and import the simulator there
            seconds, wall = timed(backend)
        finally:
            backend.close()
        rows.append({"mode": "ray", "workers": n, "wall_s": round(wall, 2),
                     "scenario_s_per_s": round(seconds / wall, 1)})
    return {"planner": planner, "agents": agents, "scenarios": len(scenarios), "shards": len(shards),
            "simulated_scenario_s": round(seconds, 1), "rows": rows}


__all__ = ["RayBackend", "bench_rollouts", "map_shards"]
