"""The `contexts` asset: the corpus tokenized into fixed-length contexts."""


import dagster as dg

from sae.config import PipelineConfig
from sae.corpus import stage as corpus_stage
from sae.lake import lake_for

from .lineage import lake_asset
from .metadata import folder_bytes, markdown_table, publish_views
from .resources import PipelineConfigResource


def build_corpus_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "contexts", group_name="corpus", kinds={"parquet"})
    def contexts(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """The corpus tokenized by the subject model's tokenizer into `ctx_len`-token contexts (one table).

        Documents are joined with the EOS token between them; `doc_id` is the document of a context's first token.
        """
        cfg = pipeline_config.config
        table = corpus_stage.build_contexts(cfg)
        lake = lake_for(cfg)
        publish_views(lake)
        return dg.MaterializeResult(metadata={
            "contexts": table.num_rows,
            "tokens": table.num_rows * cfg.ctx_len,
            "documents": len(set(table.column("doc_id").to_pylist())),
            "bytes": folder_bytes(lake.partition("contexts")),
            "path": dg.MetadataValue.path(str(lake.partition("contexts"))),
            "preview": markdown_table(corpus_stage.preview_contexts(cfg)),
        })

    return [contexts]
