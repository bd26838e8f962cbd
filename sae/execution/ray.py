"""Shards as Ray tasks: one task per shard, rerun by Ray when its worker dies (`max_retries`).

The driver (the Dagster asset's process, or `saelake run`) joins the cluster with the plain Ray client; the
workers import saelake themselves, so it must be installed on every node (the image of deploy/). Exceptions a
shard raises are not retried: they are bugs or bad inputs, and rerunning would only repeat them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from . import Progress, Result, Shard

log = logging.getLogger(__name__)


class RayEngine:
    name = "ray"
    in_process = False

    def __init__(self, address: str | None, max_retries: int, cpus_per_shard: int = 1):
        self.address = address
        self.max_retries = max_retries
        self.threads_per_shard = cpus_per_shard

    def connect(self) -> None:
        """Join the configured cluster unless this process already has (a test's cluster, an earlier stage)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            log.info("joined Ray at %s: %s", self.address or "a local instance", ray.cluster_resources())

    def map(self, run_shard: Callable[[Shard], Result], shards: Sequence[Shard],
            progress: Progress | None = None) -> list[Result]:
        import ray

        self.connect()
        task = ray.remote(num_cpus=self.threads_per_shard, max_retries=self.max_retries, retry_exceptions=False)(_call)
        function = ray.put(run_shard)  # shipped once, not with every shard
        pending = [task.remote(function, shard) for shard in shards]
        position = {ref: i for i, ref in enumerate(pending)}
        results: list = [None] * len(pending)
        failures = []
        while pending:
            # As each finishes, so progress is reported shard by shard. A failed shard does not stop the others:
            # what they stage is kept for the rerun, and none is left writing into staging after this returns.
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[position[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayError as error:
                failures.append(error)
            if progress is not None:
                progress(len(shards) - len(pending), len(shards))
        if failures:
            log.error("%d of %d shards failed", len(failures), len(shards))
            raise failures[0]
        return results


def _call(run_shard: Callable[[Shard], Result], shard: Shard) -> Result:
    """The body of every task: `run_shard` may be any picklable callable (a functools.partial too), which
    `ray.remote` itself does not take."""
    return run_shard(shard)
