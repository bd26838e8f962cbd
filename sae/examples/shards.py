"""One shard of the examples stage: the example windows and coverage of one latent range, each written as a part
file into its partition's staging folder. What a shard does lives here; where it runs is the engine's business
(sae/execution), and the commit of the partition once every shard is done the stage's (sae/examples/stage.py).

A shard is safe to run again: its part files are written whole or not at all (temp name, then rename), and a
shard whose two part files are both staged is not selected again, so a rerun after a crash, or Ray rerunning
a task whose worker died, redoes only the shards that were lost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ExamplesConfig
from ..lake import LATENT_ROW_GROUP, write_parquet
from .selection import coverage, select_examples


@dataclass(frozen=True)
class ExampleShard:
    """All a worker needs to select one latent range: plain paths and settings, no lake or config lookups."""

    latents: tuple[str, ...]  # the partition's latents files (every range reads them, pruned by latent)
    contexts: str
    sae: str
    examples: ExamplesConfig
    seed: int
    latent_range: tuple[int, int]  # [first, end)
    neighbours: pa.Table | None  # the nearest latents of the range's latents (None: no hard negatives)
    examples_part: str  # the part files it writes, in the staging folders of `examples` and `example_coverage`
    coverage_part: str
    threads: int | None = None  # DuckDB's threads (the engine's threads_per_shard)


@dataclass(frozen=True)
class ShardReport:
    latent_range: tuple[int, int]
    windows: int
    latents: int
    resumed: bool  # its part files were already staged by an earlier run with the same settings


def select_shard(shard: ExampleShard) -> ShardReport:
    """Select the range's examples and stage them: the coverage part first, the examples part last."""
    examples_part, coverage_part = Path(shard.examples_part), Path(shard.coverage_part)
    if examples_part.exists() and coverage_part.exists():
        return ShardReport(shard.latent_range, pq.read_metadata(examples_part).num_rows,
                           pq.read_metadata(coverage_part).num_rows, resumed=True)
    table = select_examples([Path(f) for f in shard.latents], Path(shard.contexts), shard.sae, shard.examples,
                            shard.seed, neighbours=shard.neighbours, latent_range=shard.latent_range,
                            threads=shard.threads)
    covered = coverage(table, shard.examples)
    write_parquet(covered, coverage_part)
    write_parquet(table, examples_part, row_group_size=LATENT_ROW_GROUP)
    return ShardReport(shard.latent_range, table.num_rows, covered.num_rows, resumed=False)
