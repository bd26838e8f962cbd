"""The explanation stage: per latent, an LLM reads its train windows and writes a short explanation.

Resumable: each batch of finished latents is written to the partition's staging folder as it completes,
behind a fingerprint of everything that shapes the answers; a rerun with the same settings explains only
the latents still missing (committed or staged rows are reused, not asked again). The latents are explained in
latent-range shards (sae/explanations/shards.py), in this process or on Ray, and the complete partition is
committed in one rename.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..config import TOKENS_BACKEND, ExecutionConfig, ExplainConfig
from ..execution import Progress
from ..frames import frame, to_arrow
from ..lake import Lake, read_parts, require_staged
from ..lineage import Provenance
from ..llm.base import ChatRequest, Completion, LLMClient, SamplingParams
from ..prompts import Window, example_rotation, explainer_messages, marked_text, parse_explanation
from .copies import copied_example
from .evidence import BASELINE_VERSION, TokenStats, baseline_explanation

log = logging.getLogger(__name__)

# Which explainer wrote a row: the configured LLM, the LLM-free token baseline, or a planted latent's truth.
LLM, TOKENS, TRUTH = "llm", "tokens", "truth"
EXAMPLE_ID = pa.struct([("ctx_id", pa.int32()), ("start", pa.int16())])
SCHEMA = pa.schema([
    ("latent", pa.int32()),
    ("explainer", pa.string()),  # llm | tokens | truth; a partition has one row per (latent, explainer)
    ("explanation", pa.string()),  # null where the answer had no "Explanation:" line (see `completion`)
    ("parsed", pa.bool_()),
    ("completion", pa.string()),  # the raw answer, always kept
    ("explainer_model", pa.string()),
    ("backend", pa.string()),
    ("prompt_version", pa.string()),
    ("sampling", pa.string()),  # the sampling parameters as JSON
    ("examples_used", pa.list_(EXAMPLE_ID)),  # the train windows shown, by (ctx_id, start)
    ("copied_example", pa.string()),  # the worked example's answer the explanation copies; null when none
    ("attempts", pa.int16()),  # answers asked for (more than one where a copy was retried)
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
    shown_answers: tuple[str, ...]  # the answers of the worked examples in the prompt


def main_explainer(cfg: ExplainConfig) -> str:
    """The explainer whose explanations stand for a latent where only one is shown (previews, comparisons)."""
    return TOKENS if cfg.llm.backend == TOKENS_BACKEND else LLM


def choose_latents(coverage: pa.Table, cfg: ExplainConfig, seed: int) -> list[int]:
    """The latents to explain, from the partition's `example_coverage` rows (latents that fired)."""
    available = frame(coverage).filter(pl.col("n_train") > 0)
    ids = available["latent"].to_list()
    if cfg.latents == "all":
        return sorted(ids)
    if cfg.latents == "list":
        unknown = sorted(set(cfg.latent_ids) - set(ids))
        if unknown:
            raise ValueError(f"explain.latent_ids {unknown[:10]} have no train examples (dead, or beyond the SAE's "
                             "width); pick latents that fire, e.g. from `saelake sql` over latent_stats")
        return sorted(set(cfg.latent_ids))
    complete = sorted(available.filter(pl.col("complete"))["latent"].to_list())
    rest = sorted(set(ids) - set(complete))
    if cfg.latents == "first":
        return sorted((complete + rest)[: cfg.n_latents])
    rng = random.Random(seed)
    picked = rng.sample(complete, min(cfg.n_latents, len(complete)))
    if len(picked) < cfg.n_latents:
        picked += rng.sample(rest, min(cfg.n_latents - len(picked), len(rest)))
    return sorted(picked)


def prompt_windows(rows: pl.DataFrame, n_examples: int) -> pl.DataFrame:
    """The train windows shown for one latent: the top half by peak, then quantile draws spread over the bins
    from the strongest bin down (one per bin in turn)."""
    top = rows.filter(pl.col("kind") == "top").sort("peak_act", descending=True, maintain_order=True)
    # Round robin: the i-th window of every bin (strongest bin first) comes before the (i+1)-th of any bin.
    spread = (rows.filter(pl.col("kind") == "quantile").with_columns(turn=pl.int_range(pl.len()).over("bin"))
              .sort(["turn", "bin"], descending=[False, True], maintain_order=True).drop("turn"))
    n_top = min(top.height, max(n_examples - spread.height, (n_examples + 1) // 2))
    return pl.concat([top.head(n_top), spread.head(n_examples - n_top)])


def _windows(rows: pl.DataFrame, decode: Decode) -> list[Window]:
    return [Window(tuple(decode(tokens)), tuple(acts))
            for tokens, acts in zip(rows["tokens"].to_list(), rows["acts"].to_list())]


def build_prompts(examples: pa.Table | pl.DataFrame, latents: list[int], cfg: ExplainConfig, decode: Decode,
                  stats: dict[int, TokenStats] | None = None, attempt: int = 0) -> list[LatentPrompt]:
    """One chat request per latent from its train windows (and silent train windows if contrastive), with the
    latent's evidence where `stats` are given and the prompt shows any, and the worked examples of `attempt`."""
    train = frame(examples).filter((pl.col("split") == "train") & pl.col("latent").is_in(latents)).select(
        ["latent", "kind", "bin", "ctx_id", "start", "peak_act", "tokens", "acts"])
    rows_of = {key[0]: rows for key, rows in train.partition_by("latent", as_dict=True).items()}
    # Another seed per attempt: with sampling on, a retry draws anew even where the examples alone would not do.
    sampling = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=attempt)
    shows_evidence = stats is not None and (cfg.prompt.frequent_tokens or cfg.prompt.promoted_tokens)
    prompts = []
    for latent in latents:  # one request per latent: the windows are decoded and laid out for the model
        rows = rows_of.get(latent, train.clear())
        activating = rows.filter(pl.col("kind") != "random")
        shown = prompt_windows(activating, cfg.n_examples)
        silent = rows.filter(pl.col("kind") == "random")
        evidence = None
        if shows_evidence:
            known = stats.get(latent, TokenStats((), 0, ()))
            evidence = known.evidence(cfg.prompt.frequent_tokens, cfg.prompt.promoted_tokens)
        worked = example_rotation(attempt)
        messages = explainer_messages(_windows(shown, decode), cfg.prompt, _windows(silent, decode),
                                      activating["peak_act"].max(), evidence, worked)
        used = pl.concat([shown, silent]) if cfg.prompt.contrastive else shown
        ids = used.select("ctx_id", "start").to_dicts()
        prompts.append(LatentPrompt(latent, ChatRequest(messages, sampling), ids,
                                    tuple(example.answer for example in worked)))
    return prompts


@dataclass
class Answer:
    """A latent's last answer, whether it still copies a worked example, and what all its attempts cost."""

    prompt: LatentPrompt
    completion: Completion
    copied: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool


def explain_with_retries(examples: pa.Table | pl.DataFrame, latents: list[int], cfg: ExplainConfig,
                         client: LLMClient, decode: Decode, stats: dict[int, TokenStats] | None,
                         progress: bool = False) -> list[Answer]:
    """Each latent's answer; one that copies a worked example shown is asked again with other examples (and
    another seed), up to explain.max_attempts in all. The last answer is kept, copy or not."""
    answers: dict[int, Answer] = {}
    todo = list(latents)
    for attempt in range(cfg.max_attempts):
        prompts = build_prompts(examples, todo, cfg, decode, stats, attempt)
        completions = client.complete([p.request for p in prompts], progress=progress)
        for prompt, done in zip(prompts, completions):
            before = answers.get(prompt.latent)
            answers[prompt.latent] = Answer(
                prompt, done, copied_example(parse_explanation(done.text), prompt.shown_answers), attempt + 1,
                done.prompt_tokens + (before.prompt_tokens if before else 0),
                done.completion_tokens + (before.completion_tokens if before else 0),
                done.latency_s + (before.latency_s if before else 0.0), done.cached and (before is None or before.cached))
        todo = [p.latent for p in prompts if answers[p.latent].copied is not None]
        if not todo:
            break
    return [answers[latent] for latent in latents]


def rows_for(answers: list[Answer], client: LLMClient, prompt_version: str, explainer: str = LLM) -> pa.Table:
    n = len(answers)
    explanations = [parse_explanation(a.completion.text) for a in answers]
    return pa.table({
        "latent": [a.prompt.latent for a in answers], "explainer": [explainer] * n, "explanation": explanations,
        "parsed": [e is not None for e in explanations], "completion": [a.completion.text for a in answers],
        "explainer_model": [client.model] * n, "backend": [client.backend] * n, "prompt_version": [prompt_version] * n,
        "sampling": [json.dumps(a.prompt.request.sampling.as_dict()) for a in answers],
        "examples_used": [a.prompt.example_ids for a in answers], "copied_example": [a.copied for a in answers],
        "attempts": [a.attempts for a in answers], "prompt_tokens": [a.prompt_tokens for a in answers],
        "completion_tokens": [a.completion_tokens for a in answers], "latency_s": [a.latency_s for a in answers],
        "cached": [a.cached for a in answers], "created_at": [datetime.now(timezone.utc)] * n,
    }, schema=SCHEMA)


def fixed_rows(latents: Sequence[int], texts: Sequence[str], explainer: str, backend: str,
               prompt_version: str) -> pa.Table:
    """Rows of an explainer that asks no model (the token baseline, a planted latent's truth): the text is
    both the explanation and the completion, `backend` names the explainer's model too, no tokens or time."""
    n = len(latents)
    return pa.table({
        "latent": list(latents), "explainer": [explainer] * n, "explanation": list(texts), "parsed": [True] * n,
        "completion": list(texts), "explainer_model": [backend] * n, "backend": [backend] * n,
        "prompt_version": [prompt_version] * n, "sampling": [json.dumps({})] * n, "examples_used": [[]] * n,
        "copied_example": [None] * n, "attempts": [1] * n, "prompt_tokens": [0] * n, "completion_tokens": [0] * n,
        "latency_s": [0.0] * n, "cached": [False] * n, "created_at": [datetime.now(timezone.utc)] * n,
    }, schema=SCHEMA)


def token_baseline_rows(coverage: pa.Table, stats: dict[int, TokenStats]) -> pa.Table:
    """The token baseline's explanation of every latent that fired (has train examples), no LLM asked."""
    fired = frame(coverage).filter(pl.col("n_train") > 0)["latent"].to_list()
    latents = sorted(latent for latent in fired if latent in stats)
    return fixed_rows(latents, [baseline_explanation(stats[latent]) for latent in latents], TOKENS, TOKENS,
                      BASELINE_VERSION)


def explain_partition(lake: Lake, hookpoint: str, sae: str, examples: pa.Table, coverage: pa.Table,
                      cfg: ExplainConfig, client: LLMClient | None, decode: Decode, seed: int,
                      provenance: Provenance, stats: dict[int, TokenStats] | None = None,
                      progress: bool = False, fixed: pa.Table | None = None) -> pa.Table:
    """The partition's explanations in one shard in this process (see explain_shards, which also says what each
    shard did)."""
    return explain_shards(lake, hookpoint, sae, examples, coverage, cfg, client, decode, seed, provenance, stats,
                          progress, fixed)[0]


def explain_shards(lake: Lake, hookpoint: str, sae: str, examples: pa.Table, coverage: pa.Table,
                   cfg: ExplainConfig, client: LLMClient | None, decode: Decode, seed: int,
                   provenance: Provenance, stats: dict[int, TokenStats] | None = None,
                   progress: bool = False, fixed: pa.Table | None = None,
                   execution: ExecutionConfig = ExecutionConfig(), n_latents: int | None = None,
                   shard_progress: Progress | None = None, run_shard: Callable | None = None) -> tuple[pa.Table, list]:
    """Explain the chosen latents of one partition with the LLM, resuming from earlier rows made with the same
    settings; and every latent with the token baseline (from `stats`), where it is on. With
    `explain.llm.backend: tokens` the baseline is the only explainer and `client` is not used. `fixed` rows
    (other explainers that ask no model, see `fixed_rows`) are stored beside them.

    The latents are split into `execution.shards` ranges, explained by the configured engine (sae/explanations/
    shards.py), each staged as one part file, and the partition is committed once every range is staged; a rerun
    with the same settings and shards keeps the ranges staged and the batches of the others. What needs the whole
    partition stays here: the choice of latents (a sample is drawn over all of them) and the rows that ask no
    model. The ranges split `n_latents` (the variant's width; None: up to the highest latent of `coverage`). In
    this process the shards ask `client`; on Ray each worker loads the LLM once (llm.shared_client).
    `run_shard(shard, decode=, client=, progress=)` is what each shard runs (explain_shard; a wrapper that fails
    on purpose, in the tests). Returns the committed rows and each shard's report."""
    from ..execution import LLM, contiguous_ranges, engine_for
    from .shards import ExplanationShard, explain_shard

    chosen = choose_latents(coverage, cfg, seed) if cfg.llm.backend != TOKENS_BACKEND else []
    asking_none = [frame(SCHEMA.empty_table())]
    if cfg.llm.backend == TOKENS_BACKEND or cfg.token_baseline:
        asking_none.append(frame(token_baseline_rows(coverage, stats or {})))
    if fixed is not None:
        asking_none.append(frame(fixed))
    no_model = pl.concat(asking_none)
    covered = frame(coverage)["latent"]
    if n_latents is None:
        n_latents = int(covered.max()) + 1 if len(covered) else 1
    ranges = contiguous_ranges(n_latents, execution.shards)
    staging = lake.open_staging("explanations", hookpoint, sae,
                                resume=f"{provenance.fingerprint} in {len(ranges)} shards")
    stored = lake.stored_provenance("explanations", hookpoint, sae)
    reusable = tuple(str(f) for f in lake.files("explanations", hookpoint, sae)) \
        if stored is not None and stored.fingerprint == provenance.fingerprint else ()
    train = frame(examples).filter(pl.col("split") == "train")
    engine = engine_for(execution)
    log.info("%s|%s: %d latents chosen for the LLM, in %d shards on the %s engine", hookpoint, sae, len(chosen),
             len(ranges), engine.name)
    shards = []
    for i, (first, end) in enumerate(ranges):
        mine = [latent for latent in chosen if first <= latent < end]
        shards.append(ExplanationShard(
            (first, end), tuple(mine), train.filter(pl.col("latent").is_in(mine)).to_arrow(),
            None if stats is None else {latent: stats[latent] for latent in mine if latent in stats},
            to_arrow(no_model.filter(pl.col("latent").is_between(first, end, closed="left")), SCHEMA), cfg,
            str(lake.root), reusable, str(staging / f"part-{i:05d}.parquet")))
    # A worker cannot receive this process's client: it loads its own there. Its progress bars would interleave in
    # this process's log; the engine reports each shard as it finishes instead.
    run = functools.partial(run_shard or explain_shard, decode=decode, client=client if engine.in_process else None,
                            progress=progress and engine.in_process)
    reports = engine.map(run, shards, shard_progress, workers=LLM)
    require_staged(staging, [Path(shard.part).name for shard in shards])
    folder = lake.commit(staging, "explanations", hookpoint, sae, provenance=provenance)
    return read_parts(sorted(folder.glob("part-*.parquet"))), reports


def top_window_text(examples: pa.Table, latent: int, decode: Decode, threshold: float = 0.0) -> str:
    """The latent's strongest train window with its active tokens marked, for previews."""
    rows = frame(examples).filter((pl.col("latent") == latent) & (pl.col("kind") == "top"))
    if rows.is_empty():
        return ""
    return marked_text(_windows(rows.slice(rows["peak_act"].arg_max(), 1), decode)[0], threshold)[0]
