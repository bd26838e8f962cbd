"""Text sources and their packing into fixed-length token contexts.

Document boundaries: documents are tokenized one by one (no special tokens), joined with the tokenizer's
EOS token between them, and the stream is cut into `ctx_len`-token contexts. A context can therefore end
one document and begin the next; the EOS token marks where. `doc_id` is the document of a context's first
token. The last partial context is dropped, so every context has exactly `ctx_len` tokens.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import BUILTIN_CORPUS, CORPUS_SOURCES, CORPUS_SUFFIXES, CorpusConfig, check_choice

WIKIPEDIA_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_MIN_DOC_CHARS = 200  # shorter pages are redirects and stubs

CONTEXTS_SCHEMA = pa.schema(
    [("ctx_id", pa.int32()), ("doc_id", pa.int32()), ("tokens", pa.list_(pa.int32()))]
)


class CorpusError(ValueError):
    """The corpus could not be read, or holds no text."""


def iter_documents(cfg: CorpusConfig) -> Iterator[str]:
    source = check_choice(cfg.source, CORPUS_SOURCES, "corpus.source")
    if source == BUILTIN_CORPUS:
        yield from _wikipedia_sample()
    elif source == "files":
        for path in cfg.paths:
            yield from _read_file(Path(path).expanduser(), cfg.text_column)
    else:
        yield from _huggingface(cfg)


def _wikipedia_sample() -> Iterator[str]:
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise CorpusError(f"the {BUILTIN_CORPUS!r} corpus ships inside gensim's test data: pip install gensim")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / WIKIPEDIA_SAMPLE
    with bz2.open(path) as handle:
        for title, markup, _ in extract_pages(handle, filter_namespaces=("0",)):
            text = _clean_wiki(filter_wiki(markup))
            if len(text) >= _MIN_DOC_CHARS:
                yield f"{title}\n\n{text}"


def _clean_wiki(text: str) -> str:
    text = re.sub(r"'{2,}", "", text)  # bold / italic quotes
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#REDIRECT", "Category:", "|", "!", "{|", "|}"))]
    return "\n".join(lines)


def _read_file(path: Path, text_column: str) -> Iterator[str]:
    if not path.exists():
        raise CorpusError(f"corpus file {path} does not exist")
    if path.suffix not in _READERS:
        raise CorpusError(f"corpus file {path}: unsupported suffix {path.suffix!r}; use {', '.join(CORPUS_SUFFIXES)}")
    yield from _READERS[path.suffix](path, text_column)


def _not_text(path: Path, offset: int) -> CorpusError:
    return CorpusError(
        f"corpus file {path} is not UTF-8 text (undecodable byte at offset {offset}): corpus.paths reads UTF-8 "
        f".txt files, .jsonl files (one JSON object per line) and .parquet files (a string column "
        f"corpus.text_column); convert the file or remove it from corpus.paths"
    )


def _read_txt(path: Path, text_column: str) -> Iterator[str]:
    try:
        yield path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_text(path, err.start) from None


def _read_jsonl(path: Path, text_column: str) -> Iterator[str]:
    offset = 0  # of the line's first byte, so an undecodable byte is located in the file
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_text(path, offset + err.start) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}:{number} is not valid JSON ({err.msg} at column {err.colno}); a .jsonl "
                                  "corpus file holds one JSON object per line") from None
            if not isinstance(record, dict) or text_column not in record:
                raise CorpusError(f"{path}:{number} has no field {text_column!r} (corpus.text_column)")
            if not isinstance(record[text_column], str):
                raise CorpusError(f"{path}:{number}: field {text_column!r} is not a string but "
                                  f"{type(record[text_column]).__name__}")
            yield record[text_column]


def _read_parquet(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        if text_column not in schema.names:
            raise CorpusError(f"{path} has no column {text_column!r}; columns: {schema.names}")
        kind = schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise CorpusError(f"{path}: column {text_column!r} (corpus.text_column) holds {kind}, not strings")
        for batch in file.iter_batches(columns=[text_column]):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise CorpusError(f"corpus file {path} is not a readable Parquet file ({err}); it may be truncated or "
                          "corrupt: rewrite it, or remove it from corpus.paths") from None


# One reader per suffix of config.CORPUS_SUFFIXES (the config refuses any other suffix at load).
_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def _huggingface(cfg: CorpusConfig) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise CorpusError("a Hugging Face corpus needs the `datasets` package: pip install 'saelake[hub]'") from err
    dataset = datasets.load_dataset(cfg.dataset, cfg.subset, split=cfg.split, streaming=True)
    for record in dataset:
        if cfg.text_column not in record:
            raise CorpusError(f"dataset {cfg.dataset} has no column {cfg.text_column!r}; columns: {list(record)}")
        yield record[cfg.text_column]


def tokenize_contexts(documents: Iterator[str], tokenizer, n_contexts: int, ctx_len: int,
                      batch_docs: int = 64) -> pa.Table:
    """Pack documents into `n_contexts` contexts of `ctx_len` tokens (fewer if the corpus runs out)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CorpusError("the tokenizer has no EOS token to separate documents")
    need = n_contexts * ctx_len
    tokens: list[np.ndarray] = []
    doc_of_token: list[np.ndarray] = []
    have = 0
    doc_id = 0
    pending: list[str] = []

    def flush():
        nonlocal have, doc_id
        encoded = tokenizer(pending, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            ids = np.asarray([*ids, eos], dtype=np.int32)
            tokens.append(ids)
            doc_of_token.append(np.full(len(ids), doc_id, dtype=np.int32))
            have += len(ids)
            doc_id += 1
        pending.clear()

    for text in documents:
        if text and text.strip():
            pending.append(text)
        if len(pending) >= batch_docs:
            flush()
            if have >= need:
                break
    if pending and have < need:
        flush()
    if have == 0:
        raise CorpusError("the corpus yielded no text: check corpus.source, corpus.paths or corpus.text_column")
    n = min(n_contexts, have // ctx_len)
    if n == 0:
        raise CorpusError(f"the corpus has only {have} tokens, fewer than one context of ctx_len={ctx_len}")
    flat = np.concatenate(tokens)[: n * ctx_len].reshape(n, ctx_len)
    first_doc = np.concatenate(doc_of_token)[: n * ctx_len : ctx_len]
    return pa.table(
        {
            "ctx_id": pa.array(np.arange(n, dtype=np.int32)),
            "doc_id": pa.array(first_doc),
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), ctx_len).cast(pa.list_(pa.int32())),
        },
        schema=CONTEXTS_SCHEMA,
    )


class ContextTokens:
    """Read-only view of the contexts table as an int32 array [n_contexts, ctx_len], read lazily by row
    group, so memory does not grow with the number of contexts. Supports `shape` and `[lo:hi]` / `[i]`."""

    def __init__(self, path):
        import pyarrow.parquet as pq

        self._file = pq.ParquetFile(path)
        meta = self._file.metadata
        self._starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        first = self._file.read_row_group(0, columns=["tokens"]).column(0)
        self.shape = (int(self._starts[-1]), len(first[0]))
        self._cached: tuple[int, np.ndarray] | None = None

    def _group(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            column = self._file.read_row_group(index, columns=["tokens"]).column(0).combine_chunks()
            self._cached = (index, column.flatten().to_numpy().reshape(-1, self.shape[1]))
        return self._cached[1]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self[int(key) : int(key) + 1][0]
        lo, hi, _ = key.indices(self.shape[0])
        parts = []
        while lo < hi:
            group = int(np.searchsorted(self._starts, lo, side="right")) - 1
            end = min(hi, int(self._starts[group + 1]))
            parts.append(self._group(group)[lo - self._starts[group] : end - self._starts[group]])
            lo = end
        return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), dtype=np.int32)
