"""The latents stage as plain functions over a config and a lake: activations and latents cached from one
forward pass, and per-latent statistics."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..checks import ERROR, WARN, CheckOutcome, CheckSpec, record_checks
from ..config import PipelineConfig
from ..execution import SUBJECT_MODEL, Progress, contiguous_ranges, engine_for
from ..corpus.stage import count_contexts, load_context_tokens
from ..lake import LATENT_ROW_GROUP, Lake, lake_for, require_staged
from ..lake.sql import run_query
from ..lineage import fresh_files, lineage_of
from ..models import load_tokenizer
from ..saes.stage import load_planted, num_latents_of
from .engine import CacheReport, PlantedSink, chunk_contexts_for, chunk_file, run_planted
from .shards import CacheShard, cache_shard, load_subject


RunCacheShard = Callable[..., CacheReport]  # cache_shard, or a test's wrapper of it


def cache_activations(cfg: PipelineConfig, hookpoints: list[str], progress: bool = True,
                      shard_progress: Progress | None = None, run_shard: RunCacheShard = cache_shard,
                      **hooks) -> CacheReport:
    """Dense float16 activations of `hookpoints`, all from one forward pass. `shard_progress(done, total)` is
    called as each context range finishes; `hooks` go to every shard (the tests' `after_chunk`)."""
    return _cache(cfg, "activations", [(h, None) for h in hookpoints], progress, shard_progress, run_shard, hooks)


def cache_latents(cfg: PipelineConfig, partitions: list[tuple[str, str]], progress: bool = True,
                  shard_progress: Progress | None = None, run_shard: RunCacheShard = cache_shard,
                  **hooks) -> CacheReport:
    """Latents of every (hookpoint, sae) partition, all from one forward pass of the model; planted ones
    straight from the contexts' token ids. The report is the forward pass's (the planted one's without one)."""
    planted = [(h, n) for h, n in partitions if cfg.sae(n).planted is not None]
    encoded = [key for key in partitions if key not in planted]
    report = cache_planted(cfg, planted) if planted else None
    return _cache(cfg, "latents", encoded, progress, shard_progress, run_shard, hooks) if encoded else report


def cache_planted(cfg: PipelineConfig, partitions: list[tuple[str, str]]) -> CacheReport:
    """The planted latents of the partitions, from their stored definitions and the contexts (no model)."""
    lake, lineage = lake_for(cfg), lineage_of(cfg)
    sinks = [PlantedSink(lake, h, lineage.provenance("latents", (h, n)), n, load_planted(cfg, h, n))
             for h, n in partitions]
    return run_planted(load_context_tokens(cfg), sinks, chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens))


def _cache(cfg: PipelineConfig, table: str, partitions: list[tuple[str, str | None]], progress: bool,
           shard_progress: Progress | None, run_shard: RunCacheShard, hooks: dict) -> CacheReport:
    """The forward pass over every context for `partitions` of `table`, in `execution.shards` context ranges
    run by the configured engine; each partition committed once every range is staged. A rerun with the same
    settings keeps the chunks already staged, whatever the shard count. In this process the model is loaded
    here; on Ray each worker loads it once for all its shards."""
    lake, lineage = lake_for(cfg), lineage_of(cfg)
    # The activations' partitions are keyed by hookpoint alone.
    provenances = [lineage.provenance(table, key if table == "latents" else key[0]) for key in partitions]
    staging = [lake.open_staging(table, hookpoint, name, resume=provenance.fingerprint)
               for (hookpoint, name), provenance in zip(partitions, provenances)]
    n_chunks = -(-count_contexts(cfg) // chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens))
    shards = [CacheShard(cfg, table, tuple(partitions), tuple(p.fingerprint for p in provenances),
                         tuple(str(folder) for folder in staging), chunks)
              for chunks in contiguous_ranges(n_chunks, cfg.execution.shards)]
    engine = engine_for(cfg.execution)
    subject = load_subject(cfg, table, partitions) if engine.in_process else None
    # A worker's progress bars would interleave in this process's log; the engine reports each shard instead.
    run = functools.partial(run_shard, subject=subject, progress=progress and engine.in_process, **hooks)
    start = time.perf_counter()
    reports = engine.map(run, shards, shard_progress, workers=SUBJECT_MODEL)
    seconds = time.perf_counter() - start
    del run, subject  # the model's memory back before the commit
    chunk_files = [chunk_file(chunk) for chunk in range(n_chunks)]
    for folder in staging:  # every partition complete before any is committed
        require_staged(folder, chunk_files)
    for (hookpoint, name), folder, provenance in zip(partitions, staging, provenances):
        lake.commit(folder, table, hookpoint, name, provenance)
    return CacheReport.of_shards(reports, seconds)


HIST_BINS = 40  # bins of latent_stats.histogram (equal ones over each latent's (0, max_act])


def compute_latent_stats(cfg: PipelineConfig, hookpoint: str, name: str) -> pa.Table:
    lake = lake_for(cfg)
    files = fresh_files(cfg, "latents", (hookpoint, name))
    num_latents = num_latents_of(cfg, hookpoint, name)
    n_tokens = count_contexts(cfg) * cfg.ctx_len
    import duckdb

    with duckdb.connect() as con:
        table = run_query(
            con, "latent_stats", files=[str(f) for f in files], num_latents=num_latents, n_tokens=n_tokens,
            hist_bins=HIST_BINS).to_arrow_table()
    lake.write_partition(table, "latent_stats", hookpoint, name, row_group_size=LATENT_ROW_GROUP,
                         provenance=lineage_of(cfg).provenance("latent_stats", (hookpoint, name)))
    return table


def count_rows(files: list[Path]) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


def preview_latents(cfg: PipelineConfig, hookpoint: str, name: str, n: int = 5, window: int = 12) -> list[dict]:
    """The most frequent latents with the text around their peak activation, the peak token in «»."""
    import duckdb

    lake = lake_for(cfg)
    files = [str(f) for f in fresh_files(cfg, "latents", (hookpoint, name))]
    with duckdb.connect() as con:
        top = run_query(con, "latent_preview", files=files, n=n).fetchall()
    tokens = load_context_tokens(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    rows = []
    for latent, n_fired, max_act, peak in top:
        ids = tokens[peak["ctx_id"]]
        pos = peak["pos"]
        before = tokenizer.decode(ids[max(0, pos - window) : pos])
        after = tokenizer.decode(ids[pos + 1 : pos + 4])
        text = f"{before}«{tokenizer.decode(ids[pos : pos + 1])}»{after}"
        rows.append({"layer": hookpoint, "sae": name, "latent": latent, "n_fired": n_fired,
                     "max_act": max_act, "peak_context": text})
    return rows


CHECKS = (CheckSpec("readable_parts", ERROR, "every Parquet part of the partition can be read (names any that cannot)"),
          CheckSpec("bytes_per_non_zero", WARN, "at most 5 bytes on disk per non-zero activation"))


def check_latents(cfg: PipelineConfig, key: tuple[str, str]) -> list[CheckOutcome]:
    """The partition's data checks, recorded in the lake's `checks` table."""
    from .checks import bytes_per_non_zero, readable_parts

    lake = lake_for(cfg)
    files = lake.files("latents", *key)
    readable = readable_parts(files)
    if readable.passed:
        size = bytes_per_non_zero(lake.partition("latents", *key), count_rows(files))
    else:
        size = CheckOutcome("bytes_per_non_zero", False, WARN, "not measured: some parts cannot be read")
    return record_checks(cfg, "latents", key, [readable, size])
