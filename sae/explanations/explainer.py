"""The explanation stage: per latent, an LLM reads its train windows and writes a short explanation.

Resumable: each batch of finished latents is written to the partition's staging folder as it completes,
behind a fingerprint of everything that shapes the answers; a rerun with the same settings explains only
the latents still missing (committed or staged rows are reused, not asked again). The complete partition
is committed in one rename.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import ExplainConfig
from ..lake import Lake, write_parquet
from ..lineage import Provenance
from ..llm.base import ChatRequest, Completion, LLMClient, SamplingParams
from ..prompts import Window, explainer_messages, explainer_version, marked_text, parse_explanation

log = logging.getLogger(__name__)

EXAMPLE_ID = pa.struct([("ctx_id", pa.int32()), ("start", pa.int16())])
SCHEMA = pa.schema([
    ("latent", pa.int32()),
    ("explanation", pa.string()),  # null where the answer had no "Explanation:" line (see `completion`)
    ("parsed", pa.bool_()),
    ("completion", pa.string()),  # the raw answer, always kept
    ("explainer_model", pa.string()),
    ("backend", pa.string()),
    ("prompt_version", pa.string()),
    ("sampling", pa.string()),  # the sampling parameters as JSON
    ("examples_used", pa.list_(EXAMPLE_ID)),  # the train windows shown, by (ctx_id, start)
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("latency_s", pa.float32()),
    ("cached", pa.bool_()),  # answered from the response cache
    ("created_at", pa.timestamp("us", tz="UTC")),
])

Decode = Callable[[Sequence[int]], list[str]]


@dataclass
class LatentPrompt:
    latent: int
    request: ChatRequest
    example_ids: list[dict]


def choose_latents(coverage: pa.Table, cfg: ExplainConfig, seed: int) -> list[int]:
    """The latents to explain, from the partition's `example_coverage` rows (latents that fired)."""
    available = coverage.filter(pc.field("n_train") > 0)
    ids = available.column("latent").to_pylist()
    if cfg.latents == "all":
        return sorted(ids)
    if cfg.latents == "list":
        unknown = sorted(set(cfg.latent_ids) - set(ids))
        if unknown:
            raise ValueError(f"explain.latent_ids {unknown[:10]} have no train examples (dead, or beyond the SAE's "
                             "width); pick latents that fire, e.g. from `saelake sql` over latent_stats")
        return sorted(set(cfg.latent_ids))
    complete = sorted(available.filter(pc.field("complete")).column("latent").to_pylist())
    rest = sorted(set(ids) - set(complete))
    if cfg.latents == "first":
        return sorted((complete + rest)[: cfg.n_latents])
    rng = random.Random(seed)
    picked = rng.sample(complete, min(cfg.n_latents, len(complete)))
    if len(picked) < cfg.n_latents:
        picked += rng.sample(rest, min(cfg.n_latents - len(picked), len(rest)))
    return sorted(picked)


def prompt_windows(rows: list[dict], n_examples: int) -> list[dict]:
    """The train windows shown for one latent: the top half by peak, then quantile draws spread over the bins
    from the strongest bin down (one per bin in turn)."""
    top = sorted((r for r in rows if r["kind"] == "top"), key=lambda r: -r["peak_act"])
    by_bin = defaultdict(list)
    for r in rows:
        if r["kind"] == "quantile":
            by_bin[r["bin"]].append(r)
    spread = []
    while any(by_bin.values()):
        for b in sorted(by_bin, reverse=True):
            if by_bin[b]:
                spread.append(by_bin[b].pop(0))
    n_top = min(len(top), max(n_examples - len(spread), (n_examples + 1) // 2))
    return top[:n_top] + spread[: n_examples - n_top]


def build_prompts(examples: pa.Table, latents: list[int], cfg: ExplainConfig, decode: Decode) -> list[LatentPrompt]:
    """One chat request per latent from its train windows (and silent train windows if contrastive)."""
    train = examples.filter((pc.field("split") == "train") & pc.field("latent").isin(latents))
    rows_of = defaultdict(list)
    for row in train.select(["latent", "kind", "bin", "ctx_id", "start", "peak_act", "tokens", "acts"]).to_pylist():
        rows_of[row["latent"]].append(row)
    sampling = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
    prompts = []
    for latent in latents:
        activating = [r for r in rows_of[latent] if r["kind"] != "random"]
        shown = prompt_windows(activating, cfg.n_examples)
        silent = [r for r in rows_of[latent] if r["kind"] == "random"]
        windows = [Window(tuple(decode(r["tokens"])), tuple(r["acts"])) for r in shown]
        silent_windows = [Window(tuple(decode(r["tokens"])), tuple(r["acts"])) for r in silent]
        max_act = max((r["peak_act"] for r in activating), default=None)
        messages = explainer_messages(windows, cfg.prompt, silent_windows, max_act)
        ids = [{"ctx_id": r["ctx_id"], "start": r["start"]} for r in shown + (silent if cfg.prompt.contrastive else [])]
        prompts.append(LatentPrompt(latent, ChatRequest(messages, sampling), ids))
    return prompts


def rows_for(prompts: list[LatentPrompt], completions: list[Completion], client: LLMClient,
             prompt_version: str) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = []
    for prompt, done in zip(prompts, completions):
        explanation = parse_explanation(done.text)
        rows.append({
            "latent": prompt.latent, "explanation": explanation, "parsed": explanation is not None,
            "completion": done.text, "explainer_model": client.model, "backend": client.backend,
            "prompt_version": prompt_version, "sampling": json.dumps(prompt.request.sampling.as_dict()),
            "examples_used": prompt.example_ids, "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens, "latency_s": done.latency_s, "cached": done.cached,
            "created_at": now,
        })
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def explain_partition(lake: Lake, hookpoint: str, sae: str, examples: pa.Table, coverage: pa.Table,
                      cfg: ExplainConfig, client: LLMClient, decode: Decode, seed: int, provenance: Provenance,
                      progress: bool = False) -> pa.Table:
    """Explain the chosen latents of one partition, resuming from earlier rows made with the same settings."""
    latents = choose_latents(coverage, cfg, seed)
    version = explainer_version(cfg.prompt)
    staging = lake.open_staging("explanations", hookpoint, sae, resume=provenance.fingerprint)
    done = _reusable_rows(lake, hookpoint, sae, staging, provenance.fingerprint)
    done = done.filter(pc.field("latent").isin(latents))
    finished = set(done.column("latent").to_pylist())
    todo = [latent for latent in latents if latent not in finished]
    log.info("%s|%s: %d latents chosen, %d already explained, %d to go", hookpoint, sae, len(latents),
             len(finished), len(todo))
    parts = [done]
    for first in range(0, len(todo), cfg.batch_latents):
        prompts = build_prompts(examples, todo[first : first + cfg.batch_latents], cfg, decode)
        completions = client.complete([p.request for p in prompts], progress=progress)
        part = rows_for(prompts, completions, client, version)
        write_parquet(part, staging / f"part-{len(list(staging.glob('part-*.parquet'))):05d}.parquet")
        parts.append(part)
    table = pa.concat_tables(parts).sort_by("latent")
    # The batches' staging folder becomes the one-file partition (the response cache keeps every answer).
    lake.write_partition(table, "explanations", hookpoint, sae, provenance=provenance)
    return table


def _reusable_rows(lake: Lake, hookpoint: str, sae: str, staging: Path, fingerprint: str) -> pa.Table:
    """Rows from the committed partition and from staged batches (`staging`, opened for this fingerprint)
    that were made with the same settings."""
    tables = []
    stored = lake.stored_provenance("explanations", hookpoint, sae)
    if stored is not None and stored.fingerprint == fingerprint:
        tables.extend(pq.read_table(path, schema=SCHEMA) for path in lake.files("explanations", hookpoint, sae))
    tables.extend(pq.read_table(p, schema=SCHEMA) for p in sorted(staging.glob("part-*.parquet")))
    if not tables:
        return SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    # A latent may be both committed and staged (an interrupted rerun); keep its first row.
    first_rows = table.append_column("row", pa.array(range(table.num_rows))).group_by("latent").aggregate(
        [("row", "min")]).column("row_min")
    return table.take(first_rows)


def top_window_text(examples: pa.Table, latent: int, decode: Decode, threshold: float = 0.0) -> str:
    """The latent's strongest train window with its active tokens marked, for previews."""
    rows = examples.filter((pc.field("latent") == latent) & (pc.field("kind") == "top")).select(
        ["peak_act", "tokens", "acts"]).to_pylist()
    if not rows:
        return ""
    best = max(rows, key=lambda r: r["peak_act"])
    return marked_text(Window(tuple(decode(best["tokens"])), tuple(best["acts"])), threshold)[0]
