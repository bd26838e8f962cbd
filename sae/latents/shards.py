"""One shard of the caching stage: a range of chunks of contexts, run through the subject model once, each chunk
of each partition written as its part file into the partition's staging folder. What a shard does lives here;
where it runs is the engine's business (sae/execution), and the commit of the partitions once every shard is
done the stage's (sae/latents/stage.py).

The chunks are the same whatever the shard count (`chunk_tokens` of contexts each, numbered from the first
context), and a chunk's batches start at its first context, so the shards' files are the files of one whole run.
A chunk file is written whole or not at all, and a shard skips the chunks already staged: a rerun after a crash,
or Ray rerunning the shard of a worker that died, redoes only the chunks that were lost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import PipelineConfig
from ..corpus.stage import load_context_tokens
from ..lake import lake_for
from ..models import load_model
from ..saes.codecs import Sae
from ..saes.stage import load_stored_sae, reads_from
from .engine import ActivationSink, CacheReport, LatentSink, Sink, chunk_contexts_for, run_cache

@dataclass(frozen=True)
class CacheShard:
    """All a worker needs to cache one context range of every partition of one table."""

    cfg: PipelineConfig
    table: str  # "activations" (dense) or "latents" (the SAEs' codes)
    partitions: tuple[tuple[str, str | None], ...]  # (hookpoint, sae): the sae None for activations
    fingerprints: tuple[str, ...]  # each partition's provenance: what its SAE was trained from, with the rest
    staging: tuple[str, ...]  # each partition's staging folder, opened by the driver
    chunks: tuple[int, int]  # [first, end) of the chunks of `chunk_tokens` tokens


@dataclass
class Subject:
    """The subject model and the SAEs of a shard's partitions, on the model's device."""

    model: torch.nn.Module
    saes: dict[tuple[str, str], Sae]


def load_subject(cfg: PipelineConfig, table: str, partitions) -> Subject:
    model = load_model(cfg.model, lake_for(cfg).root)
    device = next(model.parameters()).device
    saes = {} if table == "activations" else {
        (hookpoint, name): load_stored_sae(cfg, hookpoint, name).to(device) for hookpoint, name in partitions}
    return Subject(model, saes)


# What this worker process loaded for its last shards: one subject at a time, so a worker moving on to other
# SAEs does not keep two models on its GPU.
_LOADED: dict = {}


def shared_subject(shard: CacheShard) -> Subject:
    """The shard's subject model and SAEs, loaded once per worker process for every later shard that needs them."""
    key = (shard.cfg.model, str(lake_for(shard.cfg).root), shard.table, shard.partitions, shard.fingerprints)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_subject(shard.cfg, shard.table, shard.partitions)
    return _LOADED[key]


def cache_shard(shard: CacheShard, subject: Subject | None = None, progress: bool = False,
                after_chunk: Callable[[int], None] | None = None) -> CacheReport:
    """Run the shard's chunks through the model (`subject`, or the one this process loaded for its shards) and
    stage one file per chunk and partition; commits nothing. `after_chunk` is the tests' hook (see run_cache)."""
    cfg = shard.cfg
    subject = subject or shared_subject(shard)
    lake = lake_for(cfg)
    sinks: list[Sink] = []
    for (hookpoint, name), staging in zip(shard.partitions, shard.staging):
        if shard.table == "activations":
            sinks.append(ActivationSink(lake, hookpoint, None, staging=Path(staging)))
        else:
            sae = subject.saes[hookpoint, name]
            sinks.append(LatentSink(lake, hookpoint, None, name, sae, reads=reads_from(cfg, hookpoint, name, sae),
                                    staging=Path(staging)))
    return run_cache(subject.model, load_context_tokens(cfg), sinks, cfg.batch_size,
                     chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens), progress, after_chunk=after_chunk,
                     chunks=range(*shard.chunks), commit=False)
