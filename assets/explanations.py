"""The `explanations` asset: an LLM explains the chosen latents of every layer x sae partition."""

import dagster as dg

from sae.config import PipelineConfig
from sae.explanations import stage as explanations_stage
from sae.lake import lake_for

from .metadata import markdown_table
from .partitions import layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource


def build_explanation_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="explanations", **per_layer_sae(cfg), pool="gpu", deps=["examples"],
              kinds={"parquet"})
    def explanations(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """One short explanation per chosen latent, written by the configured LLM (local, openai or vllm)
        from the latent's train windows. Resumable batch by batch; every answer is also kept in the
        lake's response cache (`llm_cache`), so a rerun of the same prompts costs no model call."""
        cfg = pipeline_config.config
        rows, previews = [], []
        with explanations_stage.open_llm(cfg, cfg.explain.llm) as client:
            for hookpoint, name in layer_sae_keys(context):
                sent_before = client.sent
                table = explanations_stage.explain_latents(cfg, hookpoint, name, client)
                parsed = sum(table.column("parsed").to_pylist())
                rows.append({"layer": hookpoint, "sae": name, "latents": table.num_rows, "parsed": parsed,
                             "llm_calls": client.sent - sent_before,
                             "prompt_tokens": sum(table.column("prompt_tokens").to_pylist()),
                             "completion_tokens": sum(table.column("completion_tokens").to_pylist())})
                previews.extend(explanations_stage.preview_explanations(cfg, hookpoint, name, table))
        lake_for(cfg).refresh_views()
        return dg.MaterializeResult(metadata={
            "explainer": f"{cfg.explain.llm.backend}:{cfg.explain.llm.model}",
            "partitions": markdown_table(rows), "explanations": markdown_table(previews)})

    return [explanations]
