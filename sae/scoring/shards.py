"""One shard of the scoring stage: the scores rows of one latent range, staged as one part file. What a shard does
lives here; where it runs is the engine's business (sae/execution), and what needs the whole partition the driver's
(score_explanations in sae/scoring/stage.py): the scored and judged latents, each explainer's controls, the
intervention's steered continuations and output-side explanations, and the partition's commit once every shard
is done. The summaries and the calibration read the committed partitions, as before.

A shard's part is written whole or not at all (a temp name, then a rename), and a shard whose part is staged is
not run again, so a rerun, or Ray rerunning the task of a dead worker, redoes only the shards that were lost; their
LLM answers come back from the lake's response cache (sae/llm/response_cache.py), which every worker writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from ..config import LLMConfig
from ..explanations.explainer import Decode
from ..explanations.shards import ShardReport  # what an explanation shard reports: the same for a scores shard
from ..lake import write_parquet
from ..llm.base import LLMClient
from ..llm.response_cache import requests_sent
from .scorers import Scoring, score_rows


@dataclass(frozen=True)
class ScoreShard:
    """All a worker needs to score one latent range."""

    latent_range: tuple[int, int]  # [first, end)
    scoring: Scoring  # the partition's scoring of the range (Scoring.of_range), without client or decoder
    llm: LLMConfig | None  # the scorer LLM a worker loads (None: no scorer asks one)
    embedder: tuple[str, str] | None  # the embedder a worker loads, (name, device) (None: no embedding scorer)
    lake_root: str
    part: str  # the part file it stages


def score_shard(shard: ScoreShard, decode: Decode, client: LLMClient | None = None, embedder=None) -> ShardReport:
    """Score the range with `client` and `embedder` (None: this process's shared ones, loaded on first use) and
    stage its rows."""
    part = Path(shard.part)
    if part.exists():
        return ShardReport(shard.latent_range, pq.read_metadata(part).num_rows, 0, resumed=True)
    scores_any = bool(shard.scoring.own)  # a range with no scored latent loads no model
    if client is None and shard.llm is not None and scores_any:
        from ..llm import shared_client

        client = shared_client(shard.llm, Path(shard.lake_root))
    if embedder is None and shard.embedder is not None and scores_any:
        from ..embedding import shared_embedder

        embedder = shared_embedder(*shard.embedder)
    sent_before = requests_sent(client)
    table = score_rows(dataclasses.replace(shard.scoring, client=client, decode=decode), embedder)
    write_parquet(table, part)
    return ShardReport(shard.latent_range, table.num_rows, requests_sent(client) - sent_before, resumed=False)
