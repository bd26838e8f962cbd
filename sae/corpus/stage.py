"""The corpus stage as plain functions over a config and a lake: the contexts, built and read back."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import PipelineConfig
from ..lake import lake_for
from ..models import load_tokenizer
from .documents import ContextTokens, iter_documents, tokenize_contexts

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("corpus", "n_tokens", "ctx_len")
FINGERPRINT_META = b"saelake.fingerprint"
CONTEXTS_PER_ROW_GROUP = 256  # the unit in which the caching stages read contexts


class StaleDataError(RuntimeError):
    """An upstream table was built from other settings than the current config."""


def contexts_fingerprint(cfg: PipelineConfig) -> str:
    """What the contexts depend on: the corpus, the sizes, and the model's tokenizer (not device or dtype)."""
    return cfg.fingerprint(*CONTEXT_KEYS) + f"/{cfg.model.name}@{cfg.model.revision}"


def build_contexts(cfg: PipelineConfig) -> pa.Table:
    lake = lake_for(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    table = tokenize_contexts(iter_documents(cfg.corpus), tokenizer, cfg.n_contexts, cfg.ctx_len)
    if table.num_rows < cfg.n_contexts:
        log.warning("the corpus ran out: %d contexts instead of %d", table.num_rows, cfg.n_contexts)
    table = table.replace_schema_metadata({FINGERPRINT_META: contexts_fingerprint(cfg).encode()})
    lake.write_partition(table, "contexts", row_group_size=CONTEXTS_PER_ROW_GROUP)
    return table


def load_context_tokens(cfg: PipelineConfig) -> ContextTokens:
    """The contexts as a lazily read int32 array [n_contexts, ctx_len], checked to match the current config."""
    files = lake_for(cfg).files("contexts")
    if not files:
        raise FileNotFoundError(f"no contexts in {cfg.lake}: materialize the `contexts` asset first")
    stored = (pq.read_schema(files[0]).metadata or {}).get(FINGERPRINT_META, b"").decode()
    if stored != contexts_fingerprint(cfg):
        raise StaleDataError(
            "the contexts in the lake were built with another model, corpus, n_tokens or ctx_len than the "
            "current config: materialize `contexts` again"
        )
    return ContextTokens(files[0])


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
