"""The latents stage as plain functions over a config and a lake: activations and latents cached from one
forward pass, and per-latent statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..config import PipelineConfig
from ..corpus.stage import contexts_fingerprint, load_context_tokens
from ..lake import Lake, lake_for
from ..lake.sql import run_query
from ..models import load_model, load_tokenizer
from ..saes.stage import load_stored_sae, reads_from
from .engine import ActivationSink, CacheReport, LatentSink, chunk_contexts_for, run_cache


def _run_fingerprint(cfg: PipelineConfig, extra: str = "") -> str:
    # Activations depend on the model's dtype and the batch shapes too, not on where they were computed.
    return f"{contexts_fingerprint(cfg)}/{cfg.fingerprint('batch_size', 'chunk_tokens')}/{cfg.model.dtype}{extra}"


def cache_activations(cfg: PipelineConfig, hookpoints: list[str], progress: bool = True, **hooks) -> CacheReport:
    """Dense float16 activations of `hookpoints`, all from one forward pass."""
    return _cache(cfg, lambda lake, device: [ActivationSink(lake, h, _run_fingerprint(cfg)) for h in hookpoints],
                  progress, hooks)


def cache_latents(cfg: PipelineConfig, partitions: list[tuple[str, str]], progress: bool = True,
                  **hooks) -> CacheReport:
    """Latents of every (hookpoint, sae) partition, all from one forward pass of the model."""

    def sinks(lake: Lake, device: torch.device) -> list[LatentSink]:
        made = []
        for hookpoint, name in partitions:
            sae = load_stored_sae(cfg, hookpoint, name).to(device)
            fingerprint = _run_fingerprint(cfg, _folder_hash(lake.partition("saes", hookpoint, name)))
            reads = reads_from(cfg, hookpoint, name, sae)
            made.append(LatentSink(lake, hookpoint, fingerprint, name, sae, reads=reads))
        return made

    return _cache(cfg, sinks, progress, hooks)


def _cache(cfg: PipelineConfig, make_sinks, progress: bool, hooks: dict) -> CacheReport:
    lake = lake_for(cfg)
    tokens = load_context_tokens(cfg)
    model = load_model(cfg.model, lake.root)
    sinks = make_sinks(lake, next(model.parameters()).device)
    chunk = chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens)
    return run_cache(model, tokens, sinks, cfg.batch_size, chunk, progress, **hooks)


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def compute_latent_stats(cfg: PipelineConfig, hookpoint: str, name: str) -> pa.Table:
    lake = lake_for(cfg)
    files = lake.files("latents", hookpoint, name)
    if not files:
        raise FileNotFoundError(f"no latents for {hookpoint}|{name}: materialize `latents` first")
    num_latents = load_stored_sae(cfg, hookpoint, name).num_latents
    n_tokens = int(pq.read_metadata(lake.files("contexts")[0]).num_rows) * cfg.ctx_len
    import duckdb

    with duckdb.connect() as con:
        table = run_query(
            con, "latent_stats", files=[str(f) for f in files], num_latents=num_latents, n_tokens=n_tokens
        ).to_arrow_table()
    lake.write_partition(table, "latent_stats", hookpoint, name)
    return table


def count_rows(files: list[Path]) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


def preview_latents(cfg: PipelineConfig, hookpoint: str, name: str, n: int = 5, window: int = 12) -> list[dict]:
    """The most frequent latents with the text around their peak activation, the peak token in «»."""
    import duckdb

    lake = lake_for(cfg)
    files = [str(f) for f in lake.files("latents", hookpoint, name)]
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
