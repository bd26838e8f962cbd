"""The scoring stage as plain functions over a config and a lake: explanations scored, summarised and plotted."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from ..checks import WARN, CheckOutcome, CheckSpec, record_checks
from ..config import LLM_SCORERS, LLMConfig, PipelineConfig
from ..execution import Progress
from ..explanations.explainer import LLM
from ..explanations.explainer import SCHEMA as EXPLANATIONS_SCHEMA
from ..explanations.stage import token_decoder
from ..lake import lake_for, read_parts, require_staged
from ..lake.sql import run_query
from ..lineage import connect_fresh, fresh_files, lineage_of

if TYPE_CHECKING:
    from ..explanations.shards import ShardReport


def open_embedder(cfg: PipelineConfig):
    from ..embedding import Embedder

    return Embedder(cfg.score.embedder, device=cfg.score.embedder_device)


def scorer_llm(cfg: PipelineConfig) -> LLMConfig:
    """The LLM of the scorers: score.llm, else the explainer's."""
    return cfg.score.llm or cfg.explain.llm


def score_explanations(cfg: PipelineConfig, hookpoint: str, name: str, client, embedder,
                       progress: bool = True) -> pa.Table:
    """The partition's scores (score_shards, without the shards' reports)."""
    return score_shards(cfg, hookpoint, name, client, embedder, progress)[0]


def score_shards(cfg: PipelineConfig, hookpoint: str, name: str, client, embedder, progress: bool = True,
                 shard_progress: Progress | None = None, run_shard: Callable | None = None,
                 ) -> tuple[pa.Table, list[ShardReport]]:
    """Score one partition's explanations on its test windows; written to `scores` (and, for the intervention
    scorer, its generations to `steered_generations` and its output-side explanations to `output_explanations`
    first).

    The rows are made in `execution.shards` latent ranges on the configured engine (sae/scoring/shards.py), each
    staged as one part file, and the partition is committed once every range is staged; a rerun with the same
    settings and shards keeps the ranges staged. What needs the whole partition stays here: the latents scored and
    judged (samples of all of them), the controls (a derangement across each explainer's latents), the intruder's
    pool of windows, and the intervention's continuations and output-side explanations (made before the shards,
    with `client`). `client` and `embedder` serve the in-process engine (None: loaded where a shard first needs
    them); on Ray each worker loads its own once. `run_shard(shard, decode=, client=, embedder=)` is what each
    shard runs (score_shard; a wrapper that fails on purpose, in the tests). Returns the committed rows and each
    shard's report."""
    from ..execution import LLM, contiguous_ranges, engine_for
    from ..llm import shared_client
    from ..saes.stage import num_latents_of
    from .scorers import judged_latents_of, partition_scoring
    from .shards import ScoreShard, score_shard

    lake, key = lake_for(cfg), (hookpoint, name)
    provenance = lineage_of(cfg).provenance("scores", key)
    examples, explained = fresh_files(cfg, "examples", key), fresh_files(cfg, "explanations", key)
    explanations, score = read_parts(explained), cfg.score_for(name)
    generations, output = None, EXPLANATIONS_SCHEMA.empty_table()
    if "intervention" in score.scorers and cfg.sae(name).has_decoder:
        judged = judged_latents_of(explanations, score, cfg.seed)
        generations = write_steered_generations(cfg, hookpoint, name, judged)
        if score.output_prompts:
            # Written here, whatever the engine: the LLM of this process (loaded now where the engine runs elsewhere).
            output = output_explanations(cfg, hookpoint, name, client or shared_client(scorer_llm(cfg), lake.root),
                                         generations, judged, progress)
    # Written for every scored partition, empty where none were asked for: no earlier run's rows linger.
    lake.write_partition(output, "output_explanations", hookpoint, name, provenance=provenance)
    engine, decode = engine_for(cfg.execution), token_decoder(cfg)
    # A worker's progress bars would interleave in this process's log; the engine reports each shard instead.
    scoring = partition_scoring(read_parts(examples), explanations, score, decode, cfg.seed, cfg.examples.n_quantiles,
                                cfg.explain.prompt.highlight_threshold, progress=progress and engine.in_process,
                                generations=generations, output_explanations=output)
    ranges = contiguous_ranges(num_latents_of(cfg, hookpoint, name), cfg.execution.shards)
    staging = lake.open_staging("scores", hookpoint, name, resume=f"{provenance.fingerprint} in {len(ranges)} shards")
    llm = scorer_llm(cfg) if any(s in LLM_SCORERS for s in score.scorers) else None
    embedding = (cfg.score.embedder, cfg.score.embedder_device) if "embedding" in score.scorers else None
    shards = [ScoreShard(latent_range, scoring.of_range(*latent_range), llm, embedding, str(lake.root),
                         str(staging / f"part-{i:05d}.parquet")) for i, latent_range in enumerate(ranges)]
    # A worker cannot receive this process's client or embedder: it loads its own there.
    run = functools.partial(run_shard or score_shard, decode=decode, client=client if engine.in_process else None,
                            embedder=embedder if engine.in_process else None)
    reports = engine.map(run, shards, shard_progress, workers=LLM)
    require_staged(staging, [Path(shard.part).name for shard in shards])
    folder = lake.commit(staging, "scores", hookpoint, name, provenance=provenance)
    return read_parts(sorted(folder.glob("part-*.parquet"))), reports


def write_steered_generations(cfg: PipelineConfig, hookpoint: str, name: str, latents: list[int]) -> pa.Table:
    """The clean and steered continuations of the intervention scorer for `latents` (sae/scoring/steering.py),
    committed to `steered_generations` after every batch of generations, so that an interrupted run resumes
    where it stopped: rows made with the same settings (model, SAE, prompt, strength, tokens, typical activation)
    are reused, whatever else changed."""
    import polars as pl

    from ..models import load_model, load_tokenizer
    from ..saes.logits import residual_directions
    from ..saes.stage import load_stored_sae, reads_from
    from .steering import SCHEMA, steered_rows, steering_site

    lake, key, score = lake_for(cfg), (hookpoint, name), cfg.score_for(name)
    stats = pl.read_parquet(fresh_files(cfg, "latent_stats", key)).filter(pl.col("latent").is_in(latents))
    typical = dict(zip(stats["latent"].to_list(), stats["max_act"].to_list()))
    stored = {row["settings_key"]: row for f in lake.files("steered_generations", hookpoint, name)
              for row in pq.read_table(f, schema=SCHEMA).to_pylist()}
    sae = load_stored_sae(cfg, hookpoint, name)
    site = steering_site(hookpoint, sae.cfg.transcode, cfg.sae(name).neurons is not None)
    base = {"saes": lineage_of(cfg).fingerprint("saes", key), "site": site,
            "model": {"name": cfg.model.name, "revision": cfg.model.revision}}
    model, tokenizer = load_model(cfg.model, lake.root), load_tokenizer(cfg.model, lake.root)
    # What each latent writes per unit of activation, in the space of the site (a transcoder's: its MLP output).
    space = hookpoint if sae.cfg.transcode else reads_from(cfg, hookpoint, name, sae)
    directions = residual_directions(model, sae.to(next(model.parameters()).device), space)

    done: list[dict] = []  # the rows of the purposes finished

    def commit(rows: list[dict]) -> pa.Table:
        table = pa.Table.from_pylist(done + rows, schema=SCHEMA)
        lake.write_partition(table, "steered_generations", hookpoint, name,
                             provenance=lineage_of(cfg).provenance("scores", key))
        return table

    for purpose, prompts in (("score", score.intervention_prompts), ("explain", score.output_prompts)):
        if prompts:
            done += steered_rows(model, tokenizer, directions, typical, site, prompts, score.intervention_strengths,
                                 score.intervention_tokens, base, stored, save=commit, purpose=purpose)
    return commit([])


def output_explanations(cfg: PipelineConfig, hookpoint: str, name: str, client, generations: pa.Table,
                        latents: list[int], progress: bool = True) -> pa.Table:
    """The output-side explanation of each of `latents` (sae/scoring/output_explanations.py), written by the
    scorer LLM; the response cache makes a rerun free."""
    from ..explanations.evidence import promoted_texts
    from .output_explanations import output_explanation_rows, output_prompts

    key = (hookpoint, name)
    promoted = promoted_texts(pq.read_table(fresh_files(cfg, "latent_logits", key)))
    prompts = output_prompts(generations, promoted, latents, cfg.explain_for(name).max_tokens)
    return output_explanation_rows(client, prompts, progress)


# Columns of the LLM's real rows in score_summary: its primary metric minus the token baseline's, paired by latent.
VS_TOKENS = {"n_vs_tokens": pa.int64(), "minus_tokens": pa.float64(), "minus_tokens_lo": pa.float64(),
             "minus_tokens_hi": pa.float64(), "beats_tokens": pa.bool_()}


def llm_minus_tokens(con, n_boot: int, seed: int) -> dict[tuple[str, str, str], dict]:
    """Per (layer, sae, scorer): the mean of the LLM's primary metric minus the token baseline's over the latents
    both were scored on, with a bootstrap 95% interval; the LLM beats the baseline where the interval lies above
    0. Pairing by latent removes what the latents share (how hard each one is), so the interval is tighter than
    the two separate ones."""
    from .metrics import PRIMARY_METRIC, bootstrap_mean_ci

    out = {}
    for g in run_query(con, "score_llm_minus_tokens").to_arrow_table().to_pylist():
        values = [math.nan if v is None else v for v in g[PRIMARY_METRIC[g["scorer"]]]]
        mean, lo, hi = bootstrap_mean_ci(values, n_boot=n_boot, seed=seed)
        defined = not math.isnan(mean)
        out[(g["layer"], g["sae"], g["scorer"])] = {
            "n_vs_tokens": sum(not math.isnan(v) for v in values), "minus_tokens": mean if defined else None,
            "minus_tokens_lo": lo if defined else None, "minus_tokens_hi": hi if defined else None,
            "beats_tokens": bool(lo > 0) if defined else None}
    return out


def score_summary(cfg: PipelineConfig) -> tuple[pa.Table, pa.Table]:
    """Per layer, SAE variant, explainer, scorer and source: means of the per-latent scores with bootstrap
    intervals, whether the variant is planted, and whether its scorer is calibrated (see `scorer_calibration`);
    the LLM's real rows also hold its difference from the token baseline (VS_TOKENS). Returns the summary and
    the calibration."""
    from .metrics import SUMMARY_METRICS, bootstrap_mean_ci
    from .scorers import defined

    calibration = scorer_calibration(cfg)
    calibrated = {(r["scorer"], r["scorer_model"]): r["calibrated"] for r in calibration.to_pylist()}
    with connect_fresh(cfg, "scores") as con:
        groups = run_query(con, "score_values").to_arrow_table().to_pylist()
        versus = llm_minus_tokens(con, cfg.score.bootstrap, cfg.seed)
    rows = []
    for g in groups:
        row = {k: g[k] for k in ("layer", "sae", "explainer", "scorer", "scorer_model", "source", "n_latents",
                                 "n_examples", "n_failures")}
        row["planted"] = cfg.sae(g["sae"]).planted is not None
        for metric in SUMMARY_METRICS:
            values = [math.nan if v is None else v for v in g[metric]]
            interval = bootstrap_mean_ci(values, n_boot=cfg.score.bootstrap, seed=cfg.seed)
            # NULL, not NaN, where no latent has the metric.
            row.update(zip((metric, f"{metric}_lo", f"{metric}_hi"), (defined(v) for v in interval)))
        row["bin_accuracy"] = g["bin_accuracy"]
        paired = versus.get((g["layer"], g["sae"], g["scorer"])) if (g["explainer"], g["source"]) == (LLM, "real") \
            else None
        row.update(paired or dict.fromkeys(VS_TOKENS))
        row["calibrated"] = calibrated.get((g["scorer"], g["scorer_model"]))
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    if rows:
        for name, kind in VS_TOKENS.items():  # typed even where every row is null
            table = table.set_column(table.schema.get_field_index(name), name, table.column(name).cast(kind))
        lake_for(cfg).write_partition(table, "score_summary", provenance=lineage_of(cfg).provenance("score_summary"))
    return table, calibration


def scorer_calibration(cfg: PipelineConfig) -> pa.Table:
    """Each scorer's calibration on the planted latents (sae/scoring/calibration.py), stored as
    `scorer_calibration` beside the summary, which it is made with."""
    from .calibration import calibrate

    planted = [spec.name for spec in cfg.saes if spec.planted is not None]
    with connect_fresh(cfg, "scores") as con:
        groups = run_query(con, "calibration_values", planted=planted).to_arrow_table().to_pylist()
    table = calibrate(groups, cfg.score.bootstrap, cfg.seed)
    lake_for(cfg).write_partition(table, "scorer_calibration", provenance=lineage_of(cfg).provenance("score_summary"))
    return table


def stored_calibration(cfg: PipelineConfig) -> pa.Table | None:
    """The lake's calibration if it is what the config makes (fresh), else None."""
    from ..lineage import StaleDataError

    try:
        files = fresh_files(cfg, "score_summary", table="scorer_calibration")
    except StaleDataError:
        return None
    return pq.read_table(files[0]) if files else None


def mean_scores(table: pa.Table) -> list[dict]:
    """Mean balanced accuracy and AUC per explainer, scorer and source of one partition, for its run's metadata."""
    import duckdb

    with duckdb.connect() as con:
        con.register("partition_scores", table)
        relation = run_query(con, "score_means")
        return [dict(zip(relation.columns, row)) for row in relation.fetchall()]


def summary_rows(table: pa.Table) -> list[dict]:
    """The summary for display: each mean with its interval, real and control of a scorer side by side, and
    whether the scorer is calibrated."""
    from ..config import DECODER_SCORERS
    from .calibration import verdict
    from .metrics import PRIMARY_METRIC, versus_baseline

    def cell(row: dict, metric: str) -> str:
        if row[metric] is None or math.isnan(row[metric]):
            return "–"
        return f"{row[metric]:.3f} [{row[f'{metric}_lo']:.3f}, {row[f'{metric}_hi']:.3f}]"

    return [{"layer": r["layer"], "sae": r["sae"], "explainer": r["explainer"], "scorer": r["scorer"],
             "source": r["source"],
             "latents": r["n_latents"], "metric": PRIMARY_METRIC[r["scorer"]],
             "score": cell(r, PRIMARY_METRIC[r["scorer"]]), "balanced_accuracy": cell(r, "balanced_accuracy"),
             "auc": cell(r, "auc"),
             "llm_minus_tokens": versus_baseline(r),
             "failures": f"{r['n_failures']}/{r['n_examples'] + r['n_failures']}",
             "scorer_calibration": verdict(r["calibrated"], r["scorer"] not in DECODER_SCORERS)}
            for r in table.to_pylist()]


def score_plots(cfg: PipelineConfig, summary: pa.Table) -> dict[str, str]:
    """Score histograms (real vs control) and accuracy by quantile bin, as markdown images; the PNGs are
    also written under lake/plots/."""
    from collections import defaultdict

    from ..plots import accuracy_by_quantile, markdown_image, score_histograms
    from .metrics import PRIMARY_METRIC

    lake = lake_for(cfg)
    with connect_fresh(cfg, "scores") as con:
        points = run_query(con, "score_points").to_arrow_table().to_pylist()
    panels = defaultdict(lambda: defaultdict(list))
    for p in points:
        metric = PRIMARY_METRIC[p["scorer"]]
        label = {"auc": "AUC"}.get(metric, metric.replace("_", " "))
        by = "" if p["explainer"] == LLM else f", {p['explainer']}"  # the LLM's panels keep their plain names
        panels[f"{p['scorer']}{by} ({label})"][p["source"]].append(math.nan if p[metric] is None else p[metric])
    plots = {"score_histograms": markdown_image(
        score_histograms(panels, metric="score", path=lake.root / "plots" / "score_histograms.png"), "scores")}
    by_scorer = defaultdict(dict)
    for row in summary.to_pylist():
        if row["source"] == "real" and row["bin_accuracy"]:
            by = "" if row["explainer"] == LLM else f" ({row['explainer']})"
            by_scorer[row["scorer"]][f"{row['layer']}/{row['sae']}{by}"] = [
                math.nan if v is None else v for v in row["bin_accuracy"]]
    for scorer, per_variant in sorted(by_scorer.items()):
        png = accuracy_by_quantile(per_variant, path=lake.root / "plots" / f"accuracy_by_quantile_{scorer}.png")
        plots[f"accuracy_by_quantile_{scorer}"] = markdown_image(png, f"{scorer} accuracy by quantile")
    return plots


SUMMARY_CHECKS = (CheckSpec("scorers_calibrated", WARN,
                            "every scorer scores the planted latents' true explanations above wrong ones (95% "
                            "intervals apart); the numbers of a scorer that does not are not meaningful"),)


def check_summary(cfg: PipelineConfig, key=None) -> list[CheckOutcome]:
    """The summary's data check (every scorer calibrated), recorded in the lake's `checks` table."""
    from .calibration import calibration_line

    calibration = stored_calibration(cfg)
    rows = [] if calibration is None else calibration.to_pylist()
    checkable = [r for r in rows if r["applicable"]]
    failing = [r for r in checkable if not r["calibrated"]]
    if not rows:
        outcome = CheckOutcome("scorers_calibrated", False, WARN, "no scores to calibrate: run `saelake run`")
    else:
        # Failing ones first; a scorer planted latents cannot check is always named, as not applicable.
        lines = [calibration_line(r) for r in failing or checkable] + [
            calibration_line(r) for r in rows if not r["applicable"]]
        verdict = f"{len(failing)} of {len(checkable)} scorers are not shown to work" if failing else \
            f"all {len(checkable)} scorers are calibrated"
        outcome = CheckOutcome("scorers_calibrated", not failing, WARN, f"{verdict}: " + "; ".join(lines),
                               {r["scorer"] + "/" + r["scorer_model"]: r["calibrated"] for r in rows})
    return record_checks(cfg, "score_summary", None, [outcome])


CHECKS = (CheckSpec("controls_near_chance", WARN,
                     "each scorer's control scores (another latent's explanation) sit near 0.5; a scorer off "
                     "chance on controls is broken"),)


def check_scores(cfg: PipelineConfig, key: tuple[str, str]) -> list[CheckOutcome]:
    """The partition's data checks, recorded in the lake's `checks` table."""
    from .checks import controls_near_chance

    outcomes = [controls_near_chance(lake_for(cfg).files("scores", *key), seed=cfg.seed)]
    return record_checks(cfg, "scores", key, outcomes)
