"""One shard of the explanations stage: the explanations of one latent range, staged as one part file. What a shard
does lives here; where it runs is the engine's business (sae/execution), and which latents are chosen and the
commit of the partition once every shard is done the driver's (explain_shards in sae/explanations/explainer.py).

A shard stages its LLM answers batch by batch as it goes (`part-<shard>-<batch>.parquet` beside its part), so a
crash loses at most one batch; once its latents are all explained it writes its part (`part-<shard>.parquet`:
every explainer's rows of the range, sorted) whole, then removes its batches. A shard whose part is staged is not
run again, so a rerun, or Ray rerunning the task of a dead worker, redoes only the shards that were lost, from
their batches. Its new answers also go to the lake's response cache (see sae/llm/response_cache.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ExplainConfig
from ..frames import frame, to_arrow
from ..lake import write_parquet
from ..llm.base import LLMClient
from ..llm.response_cache import requests_sent
from ..prompts import explainer_version
from .explainer import LLM, SCHEMA, Decode, explain_with_retries, rows_for


@dataclass(frozen=True)
class ExplanationShard:
    """All a worker needs to explain one latent range: its rows and settings, no lake or config lookups."""

    latent_range: tuple[int, int]  # [first, end)
    latents: tuple[int, ...]  # the range's chosen latents, which the LLM explains (none: no model is loaded)
    examples: pa.Table  # the train windows of those latents
    stats: dict | None  # their evidence (TokenStats by latent), where the prompt shows any
    fixed: pa.Table  # the range's rows of the explainers that ask no model (token baseline, planted truth)
    cfg: ExplainConfig
    lake_root: str  # where a worker loads the LLM from, and the response cache
    reusable: tuple[str, ...]  # committed part files made with the same settings: their rows are kept, not asked
    part: str  # the part file it stages


@dataclass(frozen=True)
class ShardReport:
    latent_range: tuple[int, int]
    rows: int
    llm_calls: int  # requests that reached the backend (not answered from the response cache)
    resumed: bool  # its part was already staged by an earlier run with the same settings


def explain_shard(shard: ExplanationShard, decode: Decode, client: LLMClient | None = None,
                  progress: bool = False) -> ShardReport:
    """Explain the range's chosen latents with `client` (None: this process's shared client of the explainer LLM,
    loaded on first use) and stage the range's rows."""
    part = Path(shard.part)
    batches = sorted(part.parent.glob(f"{part.stem}-*.parquet"))
    if part.exists():
        _remove(batches)  # a run killed between writing the part and removing them left them
        return ShardReport(shard.latent_range, pq.read_metadata(part).num_rows, 0, resumed=True)
    parts, sent = [frame(shard.fixed)], 0
    if shard.latents:
        done = _reusable_rows(shard, batches)
        parts.append(done)
        todo = [latent for latent in shard.latents if latent not in set(done["latent"])]
        if todo:
            if client is None:
                from ..llm import shared_client

                client = shared_client(shard.cfg.llm, Path(shard.lake_root))
            sent_before, version = requests_sent(client), explainer_version(shard.cfg.prompt)
            for start in range(0, len(todo), shard.cfg.batch_latents):
                answers = explain_with_retries(shard.examples, todo[start : start + shard.cfg.batch_latents],
                                               shard.cfg, client, decode, shard.stats, progress)
                batch = rows_for(answers, client, version)
                path = part.with_name(f"{part.stem}-{len(batches):05d}.parquet")
                write_parquet(batch, path)
                batches.append(path)
                parts.append(frame(batch))
            sent = requests_sent(client) - sent_before
    table = to_arrow(pl.concat(parts).sort("latent", "explainer"), SCHEMA)
    write_parquet(table, part)
    _remove(batches)
    return ShardReport(shard.latent_range, table.num_rows, sent, resumed=False)


def _reusable_rows(shard: ExplanationShard, batches: list[Path]) -> pl.DataFrame:
    """The LLM rows of the shard's latents made with the same settings: committed ones and the staged batches
    of an earlier attempt (a latent's first row kept where it is in both, after an interrupted rerun)."""
    first, end = shard.latent_range
    # Only the range's row groups of the committed files are read (they are sorted by latent).
    committed = [pq.read_table(list(shard.reusable), schema=SCHEMA,
                               filters=[("latent", ">=", first), ("latent", "<", end)])] if shard.reusable else []
    tables = committed + [pq.read_table(path, schema=SCHEMA) for path in batches] or [SCHEMA.empty_table()]
    rows = pl.concat([frame(t) for t in tables]).unique(["latent", "explainer"], keep="first", maintain_order=True)
    return rows.filter((pl.col("explainer") == LLM) & pl.col("latent").is_in(list(shard.latents)))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
