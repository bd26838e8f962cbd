"""Execution engines: where the shards of a stage run, kept apart from what a shard does (the stages say that).

An engine maps a module-level function over a list of shard descriptions and returns the results in the
shards' order. `local` runs them in this process, one after another; `ray` submits each as a Ray task. A
shard writes its own part file and is safe to run twice, so an engine may rerun a lost one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from ..config import ExecutionConfig

Shard = TypeVar("Shard")
Result = TypeVar("Result")
Progress = Callable[[int, int], None]  # (shards done, shards in all), called as each one finishes


class Engine(Protocol):
    name: str
    # The threads one shard may use (DuckDB's `threads`): None for every core of the machine, else what the
    # engine reserved for it, so that shards side by side on one node do not fight over its cores.
    threads_per_shard: int | None
    # Whether shards run in this process: then they may use what it already holds (a loaded LLM, its response
    # cache) instead of loading their own in each worker.
    in_process: bool

    def map(self, run_shard: Callable[[Shard], Result], shards: Sequence[Shard],
            progress: Progress | None = None) -> list[Result]:
        """`run_shard` over every shard; the results in the order of `shards`."""


def engine_for(execution: ExecutionConfig) -> Engine:
    """The engine the config's `execution` section names."""
    if execution.engine == "local":
        from .local import LocalEngine

        return LocalEngine()
    if execution.engine == "ray":
        from .ray import RayEngine

        return RayEngine(execution.address, execution.max_retries, execution.cpus_per_shard)
    raise ValueError(f"unknown execution engine {execution.engine!r}; valid: local, ray")


def latent_ranges(n_latents: int, shards: int) -> list[tuple[int, int]]:
    """[first, end) ranges that split latents 0..n_latents-1 into at most `shards` contiguous, near-equal parts
    (never an empty one)."""
    if n_latents < 1 or shards < 1:
        raise ValueError(f"cannot split {n_latents} latents into {shards} shards: both must be positive")
    parts = min(shards, n_latents)
    bounds = [n_latents * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
