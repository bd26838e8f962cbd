"""Shards on a pool of Ray actors: long-lived worker processes, each reserving `cpus_per_shard` CPUs (and
`gpus_per_shard` GPUs where the shards run models), which take the shards one at a time.

Why actors and not one task per shard: a worker keeps what a shard loaded (the subject model and SAEs, an LLM
engine, the embedder; see `sae.llm.shared_client`) for every later shard, and a GPU belongs to one actor for its
whole life. Ray runs a task that reserves a GPU in a fresh process each time (`max_calls=1`), because a CUDA
context cannot follow the task to another device, so GPU tasks would load an 8B model once per shard.

An actor that dies mid-shard (killed, out of memory, its node lost) is restarted by Ray and its shard rerun, up to
`max_retries` times (`max_restarts`, `max_task_retries`); past that the shard fails and the others go on, on the
actors still alive. Exceptions a shard raises are not retried: they are bugs or bad inputs, and rerunning would
only repeat them.

The driver (the Dagster asset's process, or `saelake run`) joins the cluster with the plain Ray client; the
workers import saelake themselves, so it must be installed on every node (the image of deploy/). The actors
live until the driver's process ends, or until it asks for workers of another kind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from . import SELECTION, Progress, Result, Shard, Workers

log = logging.getLogger(__name__)


class ShardWorker:
    """The body of every actor: runs whatever shard function it is sent, in its one long-lived process."""

    def run(self, run_shard: Callable[[Shard], Result], shard: Shard) -> Result:
        return run_shard(shard)


# The actors this driver started, by what they reserve, how often they restart and the Ray job they belong to (a
# later ray.init is another job, whose driver cannot reach the actors of the earlier one; a new cluster may
# number its first job as the old one did). One kind at a time: see Workers.
_POOL: dict = {"key": None, "actors": []}


class RayEngine:
    name = "ray"
    in_process = False

    def __init__(self, address: str | None, max_retries: int, cpus_per_shard: int = 1, gpus_per_shard: float = 0.0,
                 workers: int | None = None):
        self.address = address
        self.max_retries = max_retries
        self.threads_per_shard = cpus_per_shard
        self.gpus_per_shard = gpus_per_shard
        self.workers = workers

    def connect(self) -> None:
        """Join the configured cluster unless this process already has (a test's cluster, an earlier stage)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            log.info("joined Ray at %s: %s", self.address or "a local instance", ray.cluster_resources())

    def map(self, run_shard: Callable[[Shard], Result], shards: Sequence[Shard], progress: Progress | None = None,
            workers: Workers = SELECTION) -> list[Result]:
        import ray

        if not shards:
            return []
        self.connect()
        idle = self._actors(workers, len(shards))
        function = ray.put(run_shard)  # shipped once, not with every shard
        queue = list(enumerate(shards))[::-1]  # popped from the end: the first shard first
        running: dict = {}  # object ref -> (actor, shard index)
        results: list = [None] * len(shards)
        failures = []
        while queue or running:
            while queue and idle:
                actor = idle.pop()
                index, shard = queue.pop()
                running[actor.run.remote(function, shard)] = (actor, index)
            if not running:  # shards left, and every actor is dead
                break
            # As each finishes, so progress is reported shard by shard. A failed shard does not stop the others:
            # what they stage is kept for the rerun, and none is left writing into staging after this returns.
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, index = running.pop(ref)
            try:
                results[index] = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as error:  # the actor died and its restarts ran out
                failures.append(error)
                _POOL["actors"].remove(actor)
            except ray.exceptions.RayError as error:  # the shard raised: the actor is fine
                failures.append(error)
                idle.append(actor)
            if progress is not None:
                progress(len(shards) - len(queue) - len(running), len(shards))
        if failures or queue:
            log.error("%d of %d shards failed, %d not run (no worker left)", len(failures), len(shards), len(queue))
            raise failures[0]
        return results

    def _actors(self, workers: Workers, n_shards: int) -> list:
        """The pool's actors for this map, started where too few are alive; any of another kind retired first."""
        import ray

        gpus = self.gpus_per_shard if workers.runs_models else 0.0
        context = ray.get_runtime_context()  # the job, and the driver's node: unique to this Ray session
        session = (context.get_job_id(), context.get_node_id())
        key = (session, workers.name, self.threads_per_shard, gpus, self.max_retries)
        if _POOL["key"] != key:
            if _POOL["key"] is not None and _POOL["key"][0] == session:
                for actor in _POOL["actors"]:
                    ray.kill(actor)
            # else the old actors ended with their session, and their handles are no longer valid
            _POOL.update(key=key, actors=[])
        size = min(n_shards, self.workers or self._fitting(gpus))
        actor_class = ray.remote(ShardWorker).options(
            num_cpus=self.threads_per_shard, num_gpus=gpus, max_restarts=self.max_retries,
            max_task_retries=self.max_retries)
        while len(_POOL["actors"]) < size:
            _POOL["actors"].append(actor_class.remote())
        return list(_POOL["actors"][:size])

    def _fitting(self, gpus: float) -> int:
        """How many actors the cluster's resources hold at once (set `execution.workers` on an autoscaling
        cluster, whose resources grow only when asked for)."""
        import ray

        resources = ray.cluster_resources()
        fits = math.floor(resources.get("CPU", 0) / self.threads_per_shard)
        if gpus:
            fits = min(fits, math.floor(resources.get("GPU", 0) / gpus))
        if fits < 1:
            raise RuntimeError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs, too "
                f"few for one shard worker ({self.threads_per_shard} CPUs, {gpus:g} GPUs); lower "
                "execution.cpus_per_shard / gpus_per_shard, or set execution.workers for a cluster that scales up")
        return fits
