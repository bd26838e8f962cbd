"""The lake on disk: hive-partitioned Parquet tables, atomic partition commits, and DuckDB views.

Layout (`layer` and `sae` are hive partition columns):
  contexts/part-00000.parquet
  activations/layer=<hookpoint>/part-NNNNN.parquet
  saes/layer=<hookpoint>/sae=<name>/            (cfg.json + sae.safetensors, sparsify layout)
  sae_metrics/layer=<hookpoint>/sae=<name>/part-00000.parquet
  sae_quality/layer=<hookpoint>/sae=<name>/part-00000.parquet   (metrics + spliced-in cross-entropy)
  latents/layer=<hookpoint>/sae=<name>/part-NNNNN.parquet
  latent_stats/layer=<hookpoint>/sae=<name>/part-00000.parquet
  examples/layer=<hookpoint>/sae=<name>/part-00000.parquet          (+ example_coverage/, one row per latent)
  explanations/layer=<hookpoint>/sae=<name>/part-00000.parquet
  scores/layer=<hookpoint>/sae=<name>/part-00000.parquet         (per latent, scorer and source)
  score_summary/part-00000.parquet               (per variant and scorer: means with bootstrap intervals)
  explanation_embeddings/layer=<hookpoint>/sae=<name>/part-00000.parquet
  similarity/part-00000.parquet                  (matched latent pairs of every pair of partitions)
  similarity_summary/part-00000.parquet          (per pair of partitions: mean best cosine, matchings, ...)
  plots/*.png                                    (score histograms, accuracy by quantile, similarity)
  llm_cache/part-*.parquet                       (every LLM answer, keyed by model, prompt and sampling)
  saelake.duckdb                                 (views over every table)
A partition is built under .staging/ and renamed into place when complete, so a failed or killed run
never leaves a half-written partition visible.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from ..config import PipelineConfig

TABLES = ("contexts", "activations", "sae_metrics", "sae_quality", "latents", "latent_stats", "examples",
          "example_coverage", "explanations", "scores", "score_summary", "explanation_embeddings", "similarity",
          "similarity_summary", "llm_cache")
UNPARTITIONED = ("contexts", "score_summary", "similarity", "similarity_summary", "llm_cache")
DATABASE = "saelake.duckdb"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3}


class Lake:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def partition(self, table: str, layer: str | None = None, sae: str | None = None) -> Path:
        path = self.root / table
        if layer is not None:
            path = path / f"layer={layer}"
        if sae is not None:
            path = path / f"sae={sae}"
        return path

    def staging(self, table: str, layer: str | None = None, sae: str | None = None) -> Path:
        """A private folder where a partition is built; kept across failures so a rerun can resume."""
        final = self.partition(table, layer, sae)
        return self.root / ".staging" / final.relative_to(self.root)

    def commit(self, staging: Path, final: Path) -> None:
        """Replace `final` by the complete `staging` folder (two renames; never a mix of old and new)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        trash = self.root / ".trash" / uuid.uuid4().hex
        if final.exists():
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)

    def write_partition(self, table: pa.Table, name: str, layer: str | None = None, sae: str | None = None,
                        **options) -> Path:
        """Write a one-file partition atomically."""
        staging = self.staging(name, layer, sae)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        write_parquet(table, staging / "part-00000.parquet", **options)
        final = self.partition(name, layer, sae)
        self.commit(staging, final)
        return final / "part-00000.parquet"

    def files(self, table: str, layer: str | None = None, sae: str | None = None) -> list[Path]:
        return sorted(self.partition(table, layer, sae).glob("**/*.parquet"))

    @property
    def database(self) -> Path:
        return self.root / DATABASE

    def refresh_views(self) -> None:
        """(Re)create one DuckDB view per table that has data, over absolute paths into the lake."""
        self.root.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(self.database)) as con:
            for table in TABLES:
                partitioned = table not in UNPARTITIONED
                pattern = self.root / table / ("**/*.parquet" if partitioned else "*.parquet")
                if self.files(table):
                    con.execute(
                        f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{pattern}', "
                        f"hive_partitioning = {str(partitioned).lower()}, union_by_name = true)"
                    )
                else:
                    con.execute(f"DROP VIEW IF EXISTS {table}")

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        if not self.database.exists():
            self.refresh_views()
        return duckdb.connect(str(self.database), read_only=read_only)


def lake_for(cfg: PipelineConfig) -> Lake:
    """The lake a pipeline config writes to."""
    return Lake(cfg.lake)


def write_parquet(table: pa.Table, path: Path, **options) -> None:
    """Write to a temporary name, then rename: a file in the lake is always complete."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, **{**PARQUET_OPTIONS, **options})
    os.replace(tmp, path)
