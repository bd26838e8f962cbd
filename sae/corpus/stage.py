"""The corpus stage as plain functions over a config and a lake: the contexts, built and read back."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import PipelineConfig
from ..lake import lake_for
from ..lineage import fresh_files, lineage_of
from ..models import load_tokenizer
from .documents import ContextTokens, iter_documents, tokenize_contexts

log = logging.getLogger(__name__)

CONTEXTS_PER_ROW_GROUP = 256  # the unit in which the caching stages read contexts


def build_contexts(cfg: PipelineConfig) -> pa.Table:
    lake = lake_for(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    table = tokenize_contexts(iter_documents(cfg.corpus), tokenizer, cfg.n_contexts, cfg.ctx_len)
    if table.num_rows < cfg.n_contexts:
        log.warning("the corpus ran out: %d contexts instead of %d", table.num_rows, cfg.n_contexts)
    lake.write_partition(table, "contexts", provenance=lineage_of(cfg).provenance("contexts"),
                         row_group_size=CONTEXTS_PER_ROW_GROUP)
    return table


def load_context_tokens(cfg: PipelineConfig) -> ContextTokens:
    """The contexts as a lazily read int32 array [n_contexts, ctx_len], checked to match the current config."""
    return ContextTokens(fresh_files(cfg, "contexts")[0])


def count_contexts(cfg: PipelineConfig) -> int:
    """Contexts in the lake (fewer than the config's n_tokens // ctx_len where the corpus ran out)."""
    return int(pq.read_metadata(fresh_files(cfg, "contexts")[0]).num_rows)


def preview_contexts(cfg: PipelineConfig, n: int = 3, chars: int = 160) -> list[dict]:
    """The first contexts as text (EOS shown as ⏎⏎), for a glance at what the model reads."""
    lake = lake_for(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    tokens = load_context_tokens(cfg)
    rows = []
    for ctx_id in range(min(n, tokens.shape[0])):
        text = tokenizer.decode(tokens[ctx_id]).replace(tokenizer.eos_token, "⏎⏎")
        rows.append({"ctx_id": ctx_id, "text": text[:chars] + ("…" if len(text) > chars else "")})
    return rows
