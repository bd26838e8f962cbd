"""The lake on disk: hive-partitioned Parquet tables and atomic partition commits (views: sae/lake/access.py).

Layout (`layer` and `sae` are hive partition columns):
  contexts/part-00000.parquet
  activations/layer=<hookpoint>/part-NNNNN.parquet
  saes/layer=<hookpoint>/sae=<name>/            (cfg.json + sae.safetensors, sparsify layout)
  sae_metrics/layer=<hookpoint>/sae=<name>/part-00000.parquet
  sae_quality/layer=<hookpoint>/sae=<name>/part-00000.parquet   (metrics + spliced-in cross-entropy)
  sae_quality_summary/part-00000.parquet         (every variant side by side)
  latents/layer=<hookpoint>/sae=<name>/part-NNNNN.parquet
  latent_stats/layer=<hookpoint>/sae=<name>/part-00000.parquet
  latent_logits/layer=<hookpoint>/sae=<name>/part-00000.parquet     (each latent's promoted / suppressed tokens)
  examples/layer=<hookpoint>/sae=<name>/part-00000.parquet          (+ example_coverage/, one row per latent)
  explanations/layer=<hookpoint>/sae=<name>/part-00000.parquet
  scores/layer=<hookpoint>/sae=<name>/part-00000.parquet         (per latent, scorer and source)
  steered_generations/layer=<hookpoint>/sae=<name>/part-00000.parquet  (intervention: clean / steered continuations)
  output_explanations/layer=<hookpoint>/sae=<name>/part-00000.parquet  (intervention: output-side explanations)
  score_summary/part-00000.parquet               (per variant and scorer: means with bootstrap intervals)
  scorer_calibration/part-00000.parquet          (per scorer: true vs wrong explanation on planted latents)
  explanation_embeddings/layer=<hookpoint>/sae=<name>/part-00000.parquet
  similarity/part-00000.parquet                  (matched latent pairs of every pair of partitions)
  similarity_summary/part-00000.parquet          (per pair of partitions: mean best cosine, matchings, ...)
  plots/*.png                                    (score histograms, accuracy by quantile, similarity)
  llm_cache/part-*.parquet                       (every LLM answer, keyed by model, prompt and sampling)
  checks/asset=<asset>/part-<partition>.parquet  (every data check's outcome, per partition)
  views.sql                                      (views over every table, paths relative to the lake)
A partition is built under .staging/ and renamed into place when complete, so a failed or killed run
never leaves a half-written partition visible. Each committed partition holds `_provenance.json`: the
fingerprint of the settings and inputs that made it (sae/lineage.py), checked by every reader.
A lake at an S3 URL (`s3://bucket/prefix`) is an `S3Lake` (sae/lake/s3.py): the same layout in a local working
copy, its tables Delta tables on S3, each commit one Delta commit.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..lineage import Provenance

TABLES = ("contexts", "activations", "sae_metrics", "sae_quality", "sae_quality_summary", "latents", "latent_stats",
          "latent_logits", "examples", "example_coverage", "explanations", "scores", "steered_generations",
          "output_explanations", "score_summary", "scorer_calibration", "explanation_embeddings", "similarity",
          "similarity_summary", "llm_cache", "checks")
UNPARTITIONED = ("contexts", "sae_quality_summary", "score_summary", "scorer_calibration", "similarity",
                 "similarity_summary", "llm_cache")
PROVENANCE_FILE = "_provenance.json"  # in every committed partition: what made it (see sae/lineage.py)
STAGING_MARKER = "_staging_fingerprint"  # in a staging folder: the settings its files were made with
TEMP_SUFFIX = ".tmp"  # a file being written, renamed to its name when complete
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3}
# Rows per Parquet row group of the per-latent tables sorted by latent (examples, latent_stats): a reader of one
# latent (the latent browser) reads the one group whose latent range holds it, not the whole partition.
LATENT_ROW_GROUP = 8192


class Lake:
    """A lake folder; `Lake("s3://bucket/prefix")` is an `S3Lake`, which overrides what reads or commits."""

    def __new__(cls, root: str | Path):
        from .s3 import is_object_store_url

        if cls is Lake and is_object_store_url(root):
            from .s3 import S3Lake

            return super().__new__(S3Lake)
        return super().__new__(cls)

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def __str__(self) -> str:
        return str(self.root)

    def partition(self, table: str, layer: str | None = None, sae: str | None = None) -> Path:
        """The committed partition's folder (a table's, or a layer's, with the partitions under it)."""
        return self.location(table, layer, sae)

    def location(self, table: str, layer: str | None = None, sae: str | None = None) -> Path:
        """Where the partition lies under the root, whether or not it exists; reads nothing."""
        path = self.root / table
        if layer is not None:
            path = path / f"layer={layer}"
        if sae is not None:
            path = path / f"sae={sae}"
        return path

    def staging(self, table: str, layer: str | None = None, sae: str | None = None) -> Path:
        """A private folder where a partition is built; kept across failures so a rerun can resume."""
        final = self.location(table, layer, sae)
        return self.root / ".staging" / final.relative_to(self.root)

    def open_staging(self, table: str, layer: str | None = None, sae: str | None = None,
                     resume: str | None = None) -> Path:
        """The staging folder of a partition, emptied unless it holds work made with the fingerprint `resume`:
        a rerun with the same settings resumes from the files already there, one with other settings (or with
        `resume=None`) starts over."""
        staging = self.staging(table, layer, sae)
        marker = staging / STAGING_MARKER
        if resume is None or not (marker.exists() and marker.read_text() == resume):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            if resume is not None:
                marker.write_text(resume)
        return staging

    def commit(self, staging: Path, table: str, layer: str | None = None, sae: str | None = None,
               provenance: Provenance | None = None) -> Path:
        """Make the complete `staging` folder the partition, with the provenance of what made it (two renames;
        never a mix of old and new). Every writer of the lake ends here."""
        final = self.location(table, layer, sae)
        seal(staging, provenance)
        replace_folder(staging, final, self.root / ".trash" / uuid.uuid4().hex)
        return final

    def write_partition(self, table: pa.Table, name: str, layer: str | None = None, sae: str | None = None,
                        provenance: Provenance | None = None, **options) -> Path:
        """Write a one-file partition atomically."""
        staging = self.open_staging(name, layer, sae)
        write_parquet(table, staging / "part-00000.parquet", **options)
        return self.commit(staging, name, layer, sae, provenance) / "part-00000.parquet"

    def stored_provenance(self, table: str, layer: str | None = None, sae: str | None = None) -> Provenance | None:
        """What made the committed partition, or None where there is none (or it predates provenance)."""
        path = self.partition(table, layer, sae) / PROVENANCE_FILE
        return parse_provenance(path.read_text()) if path.exists() else None

    def files(self, table: str, layer: str | None = None, sae: str | None = None) -> list[Path]:
        return sorted(self.partition(table, layer, sae).glob("**/*.parquet"))

    def write_views(self) -> Path:
        """Rewrite `views.sql`, the views over the lake for any DuckDB client (see sae/lake/access.py)."""
        from .access import write_views_script

        return write_views_script(self.root)


class StagingError(RuntimeError):
    """A staged partition lacks part files its shards should have written: it is not committed."""


def require_staged(staging: Path, expected: Sequence[str]) -> None:
    """StagingError unless every `expected` part file is in `staging`; the staged files are kept for a rerun. A
    sharded stage calls it for each of its partitions before it commits any.

    Why check: a shard that wrote somewhere else (a Ray worker on another machine, writing to its own disk at the
    same path) reports success, and its partition would be committed short of its rows."""
    missing = [name for name in expected if not (staging / name).is_file()]
    if missing:
        raise StagingError(
            f"{len(missing)} of {len(expected)} part files the shards write are not in {staging} (the first: "
            f"{missing[0]}); nothing was committed, and what is staged is kept for the rerun. Shards on other "
            "machines must write into a lake folder every node mounts (NFS, Lustre); an S3 lake stages on the "
            "driver's machine, so its shards must run there")


def seal(staging: Path, provenance: Provenance | None) -> None:
    """Make a staged partition ready to commit: no staging marker, no unfinished file, its provenance in."""
    (staging / STAGING_MARKER).unlink(missing_ok=True)
    for unfinished in staging.glob(f".*{TEMP_SUFFIX}"):  # a writer killed mid-file left it (see write_parquet)
        unfinished.unlink()
    if provenance is not None:
        (staging / PROVENANCE_FILE).write_text(provenance.to_json())


def parse_provenance(text: str | None) -> Provenance | None:
    """A stored `_provenance.json`; None where there is none or it cannot be read (the partition is rebuilt)."""
    from ..lineage import Provenance

    if text is None:
        return None
    try:
        return Provenance.from_json(text)
    except (ValueError, TypeError):
        return None


def read_parts(files: list[Path]) -> pa.Table:
    """A partition's part files as one table, in the order given: `Lake.files` sorts them by name, and a sharded
    stage names its parts in shard order, so the rows come in the order of one whole run."""
    if not files:
        raise FileNotFoundError("no part files to read: the partition is empty")
    return pa.concat_tables(pq.read_table(path) for path in files)


def lake_for(cfg: PipelineConfig) -> Lake:
    """The lake a pipeline config writes to."""
    return Lake(cfg.lake)


def replace_folder(new: Path, target: Path, trash: Path) -> None:
    """Make the complete folder `new` be `target`: the old one is moved to `trash` first (put back if the
    second rename fails) and deleted after, so a reader sees the old folder or the new one, never a mix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, trash)
    try:
        os.replace(new, target)
    except OSError:
        if trash.exists():
            os.replace(trash, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def write_parquet(table: pa.Table, path: Path, **options) -> None:
    """Write to a temporary name, then rename: a file in the lake is always complete."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    pq.write_table(table, tmp, **{**PARQUET_OPTIONS, **options})
    os.replace(tmp, path)
