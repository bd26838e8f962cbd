"""Scoring: `scores` per layer x sae (every scorer of config.SCORERS; real and control explanations; the intervention
scorer's continuations in `steered_generations`), and `score_summary` across every variant, the neuron baselines
included."""

import contextlib

import dagster as dg

from sae.config import LLM_SCORERS, PipelineConfig
from sae.execution import engine_for
from sae.explanations import stage as explanations_stage
from sae.lake import lake_for
from sae.scoring import stage as scoring_stage
from sae.scoring.calibration import calibration_lines, calibration_rows

from .lineage import GPU_POOL, check_results, lake_asset, partitions_of
from .metadata import markdown_table, publish_views, shard_logger
from .resources import PipelineConfigResource


def build_scoring_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "scores", group_name="explanations", pool=GPU_POOL, deps=["explanations"],
                checks=scoring_stage.CHECKS, kinds={"parquet"})
    def scores(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Per explained latent and scorer: balanced accuracy, F1, precision, recall, AUC (where there are
        probabilities), accuracy per quantile bin, and failures, on test windows the explainer never saw; the
        intruder's and intervention's accuracy, simulation's correlation, and the LLM tokens behind each row.
        Each latent is scored with its own explanation (source real) and another latent's (control)."""
        cfg = pipeline_config.config
        # On Ray the shards load the LLM and the embedder in their workers: this process needs neither.
        in_process = engine_for(cfg.execution).in_process
        uses_llm = in_process and any(s in LLM_SCORERS for s in cfg.score.scorers)
        embedder = scoring_stage.open_embedder(cfg) if in_process and "embedding" in cfg.score.scorers else None
        outcomes = {}
        with explanations_stage.open_llm(cfg, scoring_stage.scorer_llm(cfg)) if uses_llm else \
                contextlib.nullcontext() as client:
            for partition, key in partitions_of(context):
                progress = shard_logger(context, "scores", key, "scored", cfg.execution.engine)
                table, shards = scoring_stage.score_shards(cfg, *key, client, embedder, shard_progress=progress)
                context.add_asset_metadata({"scores": markdown_table(scoring_stage.mean_scores(table)),
                                            "llm_calls": sum(shard.llm_calls for shard in shards),
                                            "engine": cfg.execution.engine, "shards": len(shards),
                                            "shards_resumed": sum(shard.resumed for shard in shards)},
                                           partition_key=partition)
                outcomes[key] = scoring_stage.check_scores(cfg, key)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult(check_results=check_results(outcomes))

    @lake_asset(cfg, "score_summary", group_name="explanations", deps=["scores"], checks=scoring_stage.SUMMARY_CHECKS,
                kinds={"duckdb"})
    def score_summary(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Every variant and scorer side by side: mean scores of real and control explanations with bootstrap
        confidence intervals, score histograms and accuracy by activation quantile (also PNGs under
        lake/plots/); and `scorer_calibration`, each scorer's true vs wrong explanation on the planted latents,
        with the verdict a reader needs before trusting its numbers."""
        cfg = pipeline_config.config
        table, calibration = scoring_stage.score_summary(cfg)
        plots = scoring_stage.score_plots(cfg, table)
        outcomes = {None: scoring_stage.check_summary(cfg)}
        publish_views(lake_for(cfg))
        return dg.MaterializeResult(metadata={
            "calibration": dg.MetadataValue.md("\n".join(f"- {line}" for line in calibration_lines(calibration))),
            "calibration_table": markdown_table(calibration_rows(calibration)),
            "summary": markdown_table(scoring_stage.summary_rows(table)),
            **{name: dg.MetadataValue.md(markdown) for name, markdown in plots.items()}},
            check_results=check_results(outcomes))

    return [scores, score_summary]
