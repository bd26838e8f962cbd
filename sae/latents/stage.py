"""The latents stage as plain functions over a config and a lake: activations and latents cached from one
forward pass, and per-latent statistics."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..checks import ERROR, WARN, CheckOutcome, CheckSpec, record_checks
from ..config import PipelineConfig
from ..corpus.stage import count_contexts, load_context_tokens
from ..lake import LATENT_ROW_GROUP, Lake, lake_for
from ..lake.sql import run_query
from ..lineage import fresh_files, lineage_of
from ..models import load_model, load_tokenizer
from ..saes.stage import load_planted, load_stored_sae, num_latents_of, reads_from
from .engine import ActivationSink, CacheReport, LatentSink, PlantedSink, chunk_contexts_for, run_cache, run_planted


def cache_activations(cfg: PipelineConfig, hookpoints: list[str], progress: bool = True, **hooks) -> CacheReport:
    """Dense float16 activations of `hookpoints`, all from one forward pass."""
    lineage = lineage_of(cfg)
    return _cache(cfg, lambda lake, device: [ActivationSink(lake, h, lineage.provenance("activations", h))
                                             for h in hookpoints], progress, hooks)


def cache_latents(cfg: PipelineConfig, partitions: list[tuple[str, str]], progress: bool = True,
                  **hooks) -> CacheReport:
    """Latents of every (hookpoint, sae) partition, all from one forward pass of the model; planted ones
    straight from the contexts' token ids. The report is the forward pass's (the planted one's without one)."""
    lineage = lineage_of(cfg)
    planted = [(h, n) for h, n in partitions if cfg.sae(n).planted is not None]
    encoded = [key for key in partitions if key not in planted]
    report = cache_planted(cfg, planted) if planted else None

    def sinks(lake: Lake, device: torch.device) -> list[LatentSink]:
        made = []
        for hookpoint, name in encoded:
            sae = load_stored_sae(cfg, hookpoint, name).to(device)
            reads = reads_from(cfg, hookpoint, name, sae)
            provenance = lineage.provenance("latents", (hookpoint, name))
            made.append(LatentSink(lake, hookpoint, provenance, name, sae, reads=reads))
        return made

    return _cache(cfg, sinks, progress, hooks) if encoded else report


def cache_planted(cfg: PipelineConfig, partitions: list[tuple[str, str]]) -> CacheReport:
    """The planted latents of the partitions, from their stored definitions and the contexts (no model)."""
    lake, lineage = lake_for(cfg), lineage_of(cfg)
    sinks = [PlantedSink(lake, h, lineage.provenance("latents", (h, n)), n, load_planted(cfg, h, n))
             for h, n in partitions]
    return run_planted(load_context_tokens(cfg), sinks, chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens))


def _cache(cfg: PipelineConfig, make_sinks, progress: bool, hooks: dict) -> CacheReport:
    lake = lake_for(cfg)
    tokens = load_context_tokens(cfg)
    model = load_model(cfg.model, lake.root)
    sinks = make_sinks(lake, next(model.parameters()).device)
    chunk = chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens)
    return run_cache(model, tokens, sinks, cfg.batch_size, chunk, progress, **hooks)


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
