"""Text sources and their packing into fixed-length contexts, with the offline model's real tokenizer."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae.config import CORPUS_SUFFIXES, ConfigError, CorpusConfig
from sae.corpus import documents
from sae.corpus.documents import CONTEXTS_SCHEMA, ContextTokens, CorpusError, iter_documents, tokenize_contexts

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Sparse autoencoders find interpretable features in language models.",
    "",  # empty documents are skipped and get no doc_id
    "Paris is the capital of France; it lies on the Seine.",
    "   ",
    "A short one.",
    "Data lakes store columnar files such as Parquet, partitioned by layer and SAE. " * 2,
    "Tokens, tokens everywhere, and not a drop to drink.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sae.models import BUILTIN_GGUF, builtin_gguf_folder

    return AutoTokenizer.from_pretrained(builtin_gguf_folder(), gguf_file=BUILTIN_GGUF)


def _reference_stream(tokenizer, docs):
    """The packing rule written out: each non-empty document's tokens, then EOS; with each token's doc index."""
    tokens, doc_of = [], []
    doc_id = 0
    for text in docs:
        if not text or not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        tokens.extend(ids)
        doc_of.extend([doc_id] * len(ids))
        doc_id += 1
    return tokens, doc_of


def test_packing_matches_reference_stream(tokenizer):
    ctx_len = 8
    stream, doc_of = _reference_stream(tokenizer, DOCS)
    n = len(stream) // ctx_len
    assert n >= 5, "the test corpus should span several contexts"

    table = tokenize_contexts(iter(DOCS), tokenizer, n_contexts=n, ctx_len=ctx_len, batch_docs=3)
    assert table.schema == CONTEXTS_SCHEMA
    assert table.num_rows == n
    contexts = table.column("tokens").to_pylist()
    assert all(len(c) == ctx_len for c in contexts)
    assert table.column("ctx_id").to_pylist() == list(range(n))
    assert list(itertools.chain.from_iterable(contexts)) == stream[: n * ctx_len]
    # doc_id is the document of each context's first token.
    assert table.column("doc_id").to_pylist() == [doc_of[i * ctx_len] for i in range(n)]
    # Some contexts start in a document other than the first: the check above is not vacuous.
    assert len(set(table.column("doc_id").to_pylist())) > 1


def test_exactly_n_contexts_when_corpus_is_larger(tokenizer):
    docs = [f"Document number {i} talks about topic {i * 7} at some length." for i in range(40)]
    table = tokenize_contexts(iter(docs), tokenizer, n_contexts=6, ctx_len=16, batch_docs=4)
    assert table.num_rows == 6
    assert all(len(c) == 16 for c in table.column("tokens").to_pylist())
    stream, doc_of = _reference_stream(tokenizer, docs)
    assert len(stream) > 6 * 16
    flat = np.asarray(table.column("tokens").to_pylist()).reshape(-1).tolist()
    assert flat == stream[: 6 * 16]
    assert table.column("doc_id").to_pylist() == [doc_of[i * 16] for i in range(6)]


def test_fewer_contexts_when_corpus_runs_out(tokenizer):
    stream, _ = _reference_stream(tokenizer, DOCS)
    ctx_len = 16
    table = tokenize_contexts(iter(DOCS), tokenizer, n_contexts=10_000, ctx_len=ctx_len)
    assert table.num_rows == len(stream) // ctx_len  # the last partial context is dropped
    assert all(len(c) == ctx_len for c in table.column("tokens").to_pylist())


def test_eos_separates_documents(tokenizer):
    eos = tokenizer.eos_token_id
    docs = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    encoded = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    assert all(eos not in ids for ids in encoded)
    total = sum(len(ids) + 1 for ids in encoded)
    table = tokenize_contexts(iter(docs), tokenizer, n_contexts=1, ctx_len=total)
    (tokens,) = table.column("tokens").to_pylist()
    expected = encoded[0] + [eos] + encoded[1] + [eos] + encoded[2] + [eos]
    assert tokens == expected
    assert tokens.count(eos) == 3
    assert table.column("doc_id").to_pylist() == [0]


def test_empty_corpus_raises(tokenizer):
    with pytest.raises(CorpusError, match="no text"):
        tokenize_contexts(iter(["", "", ""]), tokenizer, n_contexts=2, ctx_len=8)
    with pytest.raises(CorpusError, match="no text"):
        tokenize_contexts(iter([]), tokenizer, n_contexts=2, ctx_len=8)


def test_corpus_shorter_than_one_context_raises(tokenizer):
    with pytest.raises(CorpusError) as info:
        tokenize_contexts(iter(["tiny"]), tokenizer, n_contexts=1, ctx_len=512)
    assert "512" in str(info.value)


# --------------------------------------------------------------------------------------------- files


def test_files_source_reads_txt_jsonl_parquet(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("Plain text document.\nSecond line.", encoding="utf-8")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps(r) for r in [{"body": "json one", "id": 1}, {"body": "json two", "id": 2}]) + "\n\n",
        encoding="utf-8",
    )
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["parquet one", "parquet two", "parquet three"], "n": [1, 2, 3]}), parquet)

    cfg = CorpusConfig(source="files", paths=(str(txt), str(jsonl), str(parquet)), text_column="body")
    docs = list(iter_documents(cfg))
    assert docs == [
        "Plain text document.\nSecond line.",
        "json one",
        "json two",
        "parquet one",
        "parquet two",
        "parquet three",
    ]


def test_jsonl_line_missing_column_names_it(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"content": "wrong key"}) + "\n")
    cfg = CorpusConfig(source="files", paths=(str(path),), text_column="text")
    with pytest.raises(CorpusError) as info:
        list(iter_documents(cfg))
    message = str(info.value)
    assert "'text'" in message
    assert f"{path}:2" in message  # the line number of the offending record


def test_parquet_missing_column_names_it(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["x"]}), path)
    cfg = CorpusConfig(source="files", paths=(str(path),), text_column="text")
    with pytest.raises(CorpusError) as info:
        list(iter_documents(cfg))
    assert "'text'" in str(info.value) and "content" in str(info.value)


def test_missing_or_unsupported_file_raises(tmp_path):
    missing = tmp_path / "gone.txt"
    with pytest.raises(CorpusError) as info:
        list(iter_documents(CorpusConfig(source="files", paths=(str(missing),))))
    assert str(missing) in str(info.value)
    csv = tmp_path / "data.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(CorpusError) as info:
        list(iter_documents(CorpusConfig(source="files", paths=(str(csv),))))
    assert ".csv" in str(info.value)


# --------------------------------------------------------------------------------------------- wikipedia sample


def test_wikipedia_sample_is_clean_text():
    docs = list(itertools.islice(iter_documents(CorpusConfig(source="wikipedia-sample")), 20))
    assert len(docs) == 20
    for doc in docs:
        assert "#REDIRECT" not in doc
        assert "'''" not in doc
        assert len(doc) >= 200
        title, _, body = doc.partition("\n\n")
        assert title and body.strip()


def test_context_tokens_reads_any_slice_across_row_groups(tmp_path):
    stream = np.arange(1000 * 8, dtype=np.int32).reshape(1000, 8)
    table = pa.table({"tokens": pa.array(stream.tolist(), type=pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "contexts.parquet", row_group_size=64)
    contexts = ContextTokens(tmp_path / "contexts.parquet")
    assert contexts.shape == (1000, 8)
    for lo, hi in [(0, 10), (60, 70), (63, 64), (0, 1000), (990, 1000), (128, 128)]:
        np.testing.assert_array_equal(contexts[lo:hi], stream[lo:hi])
    np.testing.assert_array_equal(contexts[500], stream[500])


def test_every_suffix_the_config_admits_has_a_reader_and_an_unknown_source_is_refused():
    assert tuple(documents._READERS) == CORPUS_SUFFIXES
    with pytest.raises(ConfigError, match="corpus.source 'web' is unknown; valid: wikipedia-sample, huggingface"):
        list(iter_documents(CorpusConfig(source="web")))
