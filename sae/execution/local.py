"""The default engine: every shard in this process, one after another."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import SELECTION, Progress, Result, Shard, Workers


class LocalEngine:
    name = "local"
    threads_per_shard = None  # one shard at a time: it has the machine
    in_process = True

    def map(self, run_shard: Callable[[Shard], Result], shards: Sequence[Shard], progress: Progress | None = None,
            workers: Workers = SELECTION) -> list[Result]:
        results = []
        for shard in shards:
            results.append(run_shard(shard))
            if progress is not None:
                progress(len(results), len(shards))
        return results
