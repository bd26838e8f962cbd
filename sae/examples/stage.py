"""The examples stage as plain functions over a config and a lake: every kind of example selected per latent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..checks import ERROR, CheckOutcome, CheckSpec, record_checks
from ..config import PipelineConfig
from ..execution import Progress, contiguous_ranges, engine_for
from ..lake import lake_for, read_parts, require_staged
from ..lineage import fresh_files, lineage_of
from ..models import load_tokenizer
from ..saes.stage import load_planted, load_stored_sae, num_latents_of
from .shards import ExampleShard, ShardReport, select_shard

# Committed in this order: a crash in between leaves the partition stale, never half new.
TABLES = ("example_coverage", "examples")


def build_examples(cfg: PipelineConfig, hookpoint: str, name: str, progress: Progress | None = None,
                   run_shard: Callable[[ExampleShard], ShardReport] = select_shard,
                   ) -> tuple[pa.Table, pa.Table, list[ShardReport]]:
    """Select every kind of example for every latent of one partition; store examples and coverage.

    The latents are split into `execution.shards` ranges, selected by the configured engine (in this process
    or on Ray actors), each staged as one part file per table; both partitions are committed only once every
    range is staged. A rerun with the same settings and shards keeps the ranges already staged. `run_shard`
    is what each shard runs (a wrapper of `select_shard` that fails on purpose, in the tests)."""
    lake, key = lake_for(cfg), (hookpoint, name)
    provenance = lineage_of(cfg).provenance("examples", key)
    ranges = contiguous_ranges(num_latents_of(cfg, hookpoint, name), cfg.execution.shards)
    resume = f"{provenance.fingerprint} in {len(ranges)} shards"
    staging = {table: lake.open_staging(table, hookpoint, name, resume=resume) for table in TABLES}
    latents = tuple(str(f) for f in fresh_files(cfg, "latents", key))
    contexts, neighbours = str(fresh_files(cfg, "contexts")[0]), nearest_latents_of(cfg, hookpoint, name)
    engine = engine_for(cfg.execution)
    # Each shard carries the nearest latents of its own range alone: that is all it reads of them.
    shards = [ExampleShard(latents, contexts, name, cfg.examples, cfg.seed, latent_range,
                           None if neighbours is None else neighbours.filter(
                               (pc.field("latent") >= latent_range[0]) & (pc.field("latent") < latent_range[1])),
                           examples_part=str(staging["examples"] / f"part-{i:05d}.parquet"),
                           coverage_part=str(staging["example_coverage"] / f"part-{i:05d}.parquet"),
                           threads=engine.threads_per_shard)
              for i, latent_range in enumerate(ranges)]
    reports = engine.map(run_shard, shards, progress)
    tables = []
    parts = {"examples": [Path(s.examples_part).name for s in shards],
             "example_coverage": [Path(s.coverage_part).name for s in shards]}
    for table in TABLES:  # both complete before either is committed
        require_staged(staging[table], parts[table])
    for table in TABLES:
        folder = lake.commit(staging[table], table, hookpoint, name, provenance=provenance)
        tables.append(read_parts(sorted(folder.glob("part-*.parquet"))))
    covered, examples = tables
    return examples, covered, reports


def nearest_latents_of(cfg: PipelineConfig, hookpoint: str, name: str) -> pa.Table | None:
    """Each latent's nearest latents, whose peaks give its hard negatives: by decoder cosine for an SAE; the
    other families for planted latents (no decoder); none for the neuron baselines (their decoder is the
    identity, so every cosine is 0)."""
    from .neighbours import nearest_latents

    spec, m = cfg.sae(name), cfg.examples.neighbour_latents
    if spec.neurons is not None:
        return None
    if spec.planted is not None:
        return load_planted(cfg, hookpoint, name).neighbours(m)
    return nearest_latents(load_stored_sae(cfg, hookpoint, name).W_dec.detach(), m)


def preview_examples(cfg: PipelineConfig, table: pa.Table, n_latents: int = 3, per_latent: int = 2,
                     threshold: float = 0.5) -> list[dict]:
    """A few top windows of the first latents as text, tokens at >= `threshold` x peak marked «like this»."""
    tokenizer = load_tokenizer(cfg.model, lake_for(cfg).root)
    rows = []
    latents = sorted(set(table.column("latent").to_pylist()))[:n_latents]
    for example in table.filter(pc.field("kind") == "top").to_pylist():
        if example["latent"] not in latents or sum(r["latent"] == example["latent"] for r in rows) >= per_latent:
            continue
        peak = max(example["acts"]) or 1.0
        pieces = [tokenizer.decode([t]) for t in example["tokens"]]
        text = "".join(f"«{p}»" if a >= threshold * peak and a > 0 else p for p, a in zip(pieces, example["acts"]))
        rows.append({"latent": example["latent"], "kind": example["kind"], "peak_act": example["peak_act"],
                     "text": text})
    return rows


CHECKS = (CheckSpec("train_test_disjoint", ERROR,
                     "no test window of a latent shares a token with any of its train windows"),
          CheckSpec("silent_windows_silent", ERROR,
                    "random and neighbour windows are silent at every token, per the latents table"))


def check_examples(cfg: PipelineConfig, key: tuple[str, str]) -> list[CheckOutcome]:
    """The partition's data checks, recorded in the lake's `checks` table."""
    from .checks import silent_windows_silent, train_test_disjoint

    examples = lake_for(cfg).files("examples", *key)
    outcomes = [train_test_disjoint(examples), silent_windows_silent(examples, fresh_files(cfg, "latents", key))]
    return record_checks(cfg, "examples", key, outcomes)
