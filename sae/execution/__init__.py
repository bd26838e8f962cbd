"""Execution engines: where the shards of a stage run, kept apart from what a shard does (the stages say that).

An engine maps a module-level function over a list of shard descriptions and returns the results in the
shards' order. `local` runs them in this process, one after another; `ray` hands them to a pool of Ray actors,
long-lived worker processes that keep what a shard loaded (the subject model, an LLM engine) for the next one.
A shard writes its own part files and is safe to run twice, so an engine may rerun a lost one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..config import ExecutionConfig

Shard = TypeVar("Shard")
Result = TypeVar("Result")
Progress = Callable[[int, int], None]  # (shards done, shards in all), called as each one finishes


@dataclass(frozen=True)
class Workers:
    """The kind of worker a stage's shards run on. Workers of one kind serve every shard of that kind and keep
    what the shards loaded; asking for another kind retires them first, so that a GPU that held the subject
    model is free before an LLM engine claims it."""

    name: str
    runs_models: bool  # reserves `execution.gpus_per_shard` GPUs (the selection, plain DuckDB, reserves none)


SELECTION = Workers("selection", runs_models=False)
SUBJECT_MODEL = Workers("subject model", runs_models=True)  # caching: the model and SAEs
LLM = Workers("llm", runs_models=True)  # explanations and scoring: the LLM engine, the embedder


class Engine(Protocol):
    name: str
    # The threads one shard may use (DuckDB's `threads`): None for every core of the machine, else what the
    # engine reserved for it, so that shards side by side on one node do not fight over its cores.
    threads_per_shard: int | None
    # Whether shards run in this process: then they may use what it already holds (a loaded LLM, its response
    # cache) instead of loading their own in each worker.
    in_process: bool

    def map(self, run_shard: Callable[[Shard], Result], shards: Sequence[Shard], progress: Progress | None = None,
            workers: Workers = SELECTION) -> list[Result]:
        """`run_shard` over every shard, on workers of the kind `workers`; the results in the order of `shards`."""


def engine_for(execution: ExecutionConfig) -> Engine:
    """The engine the config's `execution` section names."""
    if execution.engine == "local":
        from .local import LocalEngine

        return LocalEngine()
    if execution.engine == "ray":
        from .ray import RayEngine

        return RayEngine(execution.address, execution.max_retries, execution.cpus_per_shard,
                         execution.gpus_per_shard, execution.workers)
    raise ValueError(f"unknown execution engine {execution.engine!r}; valid: local, ray")


def contiguous_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """[first, end) ranges that split 0..n-1 (latents, or chunks of contexts) into at most `parts` contiguous,
    near-equal ranges (never an empty one)."""
    if n < 1 or parts < 1:
        raise ValueError(f"cannot split {n} items into {parts} shards: both must be positive")
    parts = min(parts, n)
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
