"""The `explanations` asset: an LLM explains the chosen latents of every layer x sae partition."""

import contextlib

import dagster as dg

from sae.config import TOKENS_BACKEND, PipelineConfig
from sae.execution import engine_for
from sae.explanations import stage as explanations_stage
from sae.lake import lake_for

from .lineage import GPU_POOL, check_results, lake_asset, partitions_of
from .metadata import markdown_table, publish_views, shard_logger, with_latent_links
from .resources import PipelineConfigResource


def build_explanation_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "explanations", group_name="explanations", pool=GPU_POOL, deps=["examples"],
                checks=explanations_stage.CHECKS, kinds={"parquet"})
    def explanations(context: dg.AssetExecutionContext,
                     pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """One short explanation per chosen latent, written by the configured LLM (local, openai or vllm)
        from the latent's train windows and evidence (its commonest activating tokens, what it promotes), and
        one per latent that fired by the LLM-free token baseline. Resumable batch by batch; every answer is also kept in the
        lake's response cache (`llm_cache`), so a rerun of the same prompts costs no model call."""
        cfg = pipeline_config.config
        outcomes = {}
        # On Ray the shards load the LLM in their workers: this process needs none.
        in_process = cfg.explain.llm.backend != TOKENS_BACKEND and engine_for(cfg.execution).in_process
        with explanations_stage.open_llm(cfg, cfg.explain.llm) if in_process else contextlib.nullcontext() as client:
            for partition, key in partitions_of(context):
                progress = shard_logger(context, "explanations", key, "explained", cfg.execution.engine)
                table, shards = explanations_stage.build_explanations(cfg, *key, client, shard_progress=progress)
                context.add_asset_metadata({
                    **explanations_stage.explainer_counts(table),
                    "llm_calls": sum(shard.llm_calls for shard in shards), "engine": cfg.execution.engine,
                    "shards": len(shards), "shards_resumed": sum(shard.resumed for shard in shards),
                    "prompt_tokens": sum(table.column("prompt_tokens").to_pylist()),
                    "completion_tokens": sum(table.column("completion_tokens").to_pylist()),
                    "explanations": markdown_table(with_latent_links(
                        explanations_stage.preview_explanations(cfg, *key, table), cfg.browser_url))},
                    partition_key=partition)
                outcomes[key] = explanations_stage.check_explanations(cfg, key)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult(metadata={"explainer": f"{cfg.explain.llm.backend}:{cfg.explain.llm.model}"},
                                    check_results=check_results(outcomes))

    return [explanations]
