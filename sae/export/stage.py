"""The export stage as a plain function over a config and a lake: the lake as a Hugging Face dataset folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import PipelineConfig
from ..lake import lake_for
from ..models import load_tokenizer


def export_lake(cfg: PipelineConfig, out_dir: Path, overwrite: bool = False) -> dict[str, int]:
    """The lake as a Hugging Face dataset folder (see sae/export/dataset.py); returns rows per configuration."""
    from .dataset import card_info_from_config, export_dataset

    lake = lake_for(cfg)
    versions = []
    for path in lake.files("explanations"):
        versions += pc.unique(pq.read_table(path, columns=["prompt_version"]).column(0)).to_pylist()
    tokenizer = load_tokenizer(cfg.model, lake.root)
    card = card_info_from_config(cfg, sorted(set(versions)))
    return export_dataset(lake.root, Path(out_dir), card, decode=tokenizer.batch_decode, overwrite=overwrite)
