"""The explanations stage as plain functions over a config and a lake: the LLM and the explained latents."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..checks import WARN, CheckOutcome, CheckSpec, record_checks
from ..config import LLMConfig, PipelineConfig
from ..execution import Progress
from ..lake import lake_for, read_parts
from ..lineage import StaleDataError, fresh_files, lineage_of
from ..llm.response_cache import CachedClient
from ..models import load_tokenizer

if TYPE_CHECKING:
    from .shards import ShardReport


def token_decoder(cfg: PipelineConfig):
    """Token ids -> their texts one by one (memoised), as the prompts show them."""
    tokenizer = load_tokenizer(cfg.model, lake_for(cfg).root)
    pieces: dict[int, str] = {}

    def decode(ids) -> list[str]:
        out = []
        for i in ids:
            if i not in pieces:
                pieces[i] = tokenizer.decode([i])
            out.append(pieces[i])
        return out

    return decode


def open_llm(cfg: PipelineConfig, llm: LLMConfig) -> CachedClient:
    """The configured LLM backend behind the lake's response cache."""
    from ..llm import make_client

    lake = lake_for(cfg)
    return CachedClient(make_client(llm, lake.root), lake.root / "llm_cache")


def latent_token_stats(cfg: PipelineConfig, hookpoint: str, name: str, decode) -> dict:
    """Per latent of one partition: its frequent activating tokens over the corpus and its promoted tokens
    (sae/explanations/evidence.py)."""
    import duckdb

    from ..lake.sql import run_query
    from .evidence import IDS_PER_LATENT, MIN_FIRING_FRACTION, token_stats

    key = (hookpoint, name)
    with duckdb.connect() as con:
        frequent = run_query(con, "latent_top_tokens", latents=[str(f) for f in fresh_files(cfg, "latents", key)],
                             contexts=[str(f) for f in fresh_files(cfg, "contexts")], n=IDS_PER_LATENT,
                             min_fraction=MIN_FIRING_FRACTION).pl()
    logits = pq.read_table(fresh_files(cfg, "latent_logits", key)) if cfg.sae(name).has_decoder else None
    return token_stats(frequent, logits, decode)


def explain_latents(cfg: PipelineConfig, hookpoint: str, name: str, client, progress: bool = True) -> pa.Table:
    """The partition's explanations (build_explanations, without the shards' reports)."""
    return build_explanations(cfg, hookpoint, name, client, progress)[0]


def build_explanations(cfg: PipelineConfig, hookpoint: str, name: str, client, progress: bool = True,
                       shard_progress: Progress | None = None, run_shard: Callable | None = None,
                       ) -> tuple[pa.Table, list[ShardReport]]:
    """The partition's explanations, in `execution.shards` latent ranges on the configured engine (see
    explain_shards); a planted variant's latents each also get their ground truth (explainer `truth`). `client`
    is the LLM of the in-process engine (None: loaded where a shard first needs it); `run_shard` what each shard
    runs (explain_shard; a wrapper that fails on purpose, in the tests)."""
    from ..saes.stage import num_latents_of
    from .explainer import explain_shards

    key = (hookpoint, name)
    examples = read_parts(fresh_files(cfg, "examples", key))
    covered = read_parts(fresh_files(cfg, "examples", key, table="example_coverage"))
    decode = token_decoder(cfg)
    fixed = truth_rows(cfg, hookpoint, name, covered) if cfg.sae(name).planted is not None else None
    return explain_shards(lake_for(cfg), hookpoint, name, examples, covered, cfg.explain_for(name), client, decode,
                          cfg.seed, lineage_of(cfg).provenance("explanations", key),
                          stats=latent_token_stats(cfg, hookpoint, name, decode), progress=progress, fixed=fixed,
                          execution=cfg.execution, n_latents=num_latents_of(cfg, hookpoint, name),
                          shard_progress=shard_progress, run_shard=run_shard)


def truth_rows(cfg: PipelineConfig, hookpoint: str, name: str, covered: pa.Table) -> pa.Table:
    """The ground-truth explanation of every planted latent that fired (has train windows to explain from)."""
    from ..saes.planted import ARCHITECTURE
    from ..saes.stage import load_planted
    from .explainer import TRUTH, fixed_rows

    truth = load_planted(cfg, hookpoint, name).explanations
    fired = sorted(set(covered.filter(pc.field("n_train") > 0).column("latent").to_pylist()) & set(truth))
    return fixed_rows(fired, [truth[latent] for latent in fired], TRUTH, ARCHITECTURE, ARCHITECTURE)


def explainer_counts(table: pa.Table) -> dict[str, int]:
    """Rows per explainer, parsed LLM answers and those still copying a worked example, for the metadata."""
    rows = table.select(["explainer", "parsed", "copied_example"]).to_pylist()
    counts = {f"latents_{e}": sum(r["explainer"] == e for r in rows) for e in sorted({r["explainer"] for r in rows})}
    llm = [r for r in rows if r["explainer"] == "llm"]
    return {**counts, "parsed": sum(r["parsed"] for r in llm), "copies": sum(r["copied_example"] is not None for r in llm)}


def preview_explanations(cfg: PipelineConfig, hookpoint: str, name: str, table: pa.Table, n: int = 8) -> list[dict]:
    """The first explained latents with their main explainer's explanation and strongest example, active
    tokens <<marked>>."""
    from .explainer import main_explainer, top_window_text

    examples = read_parts(fresh_files(cfg, "examples", (hookpoint, name)))
    decode = token_decoder(cfg)
    main = [row for row in table.to_pylist() if row["explainer"] == main_explainer(cfg.explain)]
    return [{"layer": hookpoint, "sae": name, "latent": row["latent"],
             "explanation": row["explanation"] if row["parsed"] else f"(unparsed) {row['completion'][:80]}",
             "top_example": top_window_text(examples, row["latent"], decode)}
            for row in main[:n]]


CHECKS = (CheckSpec("parse_failure_rate", WARN, "at most 20% of the answers lack an `Explanation:` line"),
          CheckSpec("names_planted_words", WARN,
                    "on planted latents, each explainer names the family's word in at least 80% of its explanations"))


def planted_families(cfg: PipelineConfig, hookpoint: str, name: str):
    """The families of a planted variant as the lake defines them, None for any other variant."""
    from ..saes.stage import load_planted

    return load_planted(cfg, hookpoint, name).families if cfg.sae(name).planted is not None else None


def check_explanations(cfg: PipelineConfig, key: tuple[str, str]) -> list[CheckOutcome]:
    """The partition's data checks, recorded in the lake's `checks` table."""
    from .checks import names_planted_words, parse_failure_rate

    files = lake_for(cfg).files("explanations", *key)
    outcomes = [parse_failure_rate(files), names_planted_words(pq.read_table(files), planted_families(cfg, *key))]
    return record_checks(cfg, "explanations", key, outcomes)


def naming_lines(cfg: PipelineConfig) -> list[str]:
    """A line per planted partition and explainer: how often its explanations name the planted word."""
    from .checks import MIN_NAMING_RATE, planted_naming

    lines = []
    for hookpoint in cfg.hookpoints:
        for spec in cfg.saes:
            if spec.planted is None:
                continue
            try:
                table = pq.read_table(fresh_files(cfg, "explanations", (hookpoint, spec.name)))
            except StaleDataError:  # missing or stale: `saelake status` says so elsewhere
                continue
            for explainer, (named, total) in planted_naming(table, planted_families(cfg, hookpoint, spec.name)).items():
                verdict = "ok" if total and named / total >= MIN_NAMING_RATE else "WEAK"
                lines.append(f"{explainer} on {hookpoint}|{spec.name}: {verdict} — names the planted word in "
                             f"{named} of {total} explanations (wanted: {MIN_NAMING_RATE:.0%})")
    return lines
