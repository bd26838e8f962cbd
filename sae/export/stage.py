"""The export stage as a plain function over a config and a lake: the lake as a Hugging Face dataset folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import PipelineConfig
from ..lake import PROVENANCE_FILE, lake_for
from ..lineage import fresh_table_files, lineage_of
from ..models import load_tokenizer


def export_lake(cfg: PipelineConfig, out_dir: Path, overwrite: bool = False) -> dict[str, int]:
    """The lake as a Hugging Face dataset folder (see sae/export/dataset.py); returns rows per configuration."""
    from .dataset import card_info_from_config, export_dataset

    lake = lake_for(cfg)
    versions = []
    for path in fresh_table_files(cfg, "explanations"):
        versions += pc.unique(pq.read_table(path, columns=["prompt_version"]).column(0)).to_pylist()
    tokenizer = load_tokenizer(cfg.model, lake.root)
    card = card_info_from_config(cfg, sorted(set(versions)))
    # Only the partitions the config asks for, each checked fresh: never a leftover of other settings.
    return export_dataset(lake.root, Path(out_dir), card, decode=tokenizer.batch_decode, overwrite=overwrite,
                          files=lambda table: fresh_table_files(cfg, table))


EXPORT_FOLDER = "hf_export"


def export_into_lake(cfg: PipelineConfig) -> tuple[Path, dict[str, int]]:
    """The `hf_export` asset: the export kept under the lake, with the provenance of what it was made from."""
    folder = lake_for(cfg).root / EXPORT_FOLDER
    counts = export_lake(cfg, folder, overwrite=True)
    # Written after the swap: a crash in between leaves the export without provenance, so it is redone.
    (folder / PROVENANCE_FILE).write_text(lineage_of(cfg).provenance("hf_export").to_json())
    return folder, counts
