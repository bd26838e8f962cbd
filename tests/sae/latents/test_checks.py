"""Checks of a latents partition on real Parquet parts of the latents schema: size per non-zero, and a
truncated part that breaks every query over the partition while `readable_parts` names just that file."""

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from sae.lake import write_parquet
from sae.lake.sql import run_query
from sae.latents.checks import bytes_per_non_zero, readable_parts
from sae.latents.engine import LATENTS_SCHEMA

N_LATENTS, K, CTX_LEN = 512, 8, 64


def sparse_part(first_ctx: int, n_ctx: int, seed: int) -> pa.Table:
    """TopK-like rows: K latents per token, sorted by (latent, ctx_id, pos) as the engine writes them."""
    rng = np.random.default_rng(seed)
    tokens = n_ctx * CTX_LEN
    latent = np.concatenate([rng.choice(N_LATENTS, K, replace=False) for _ in range(tokens)]).astype(np.int32)
    ctx = np.repeat(np.arange(first_ctx, first_ctx + n_ctx, dtype=np.int32), CTX_LEN * K)
    pos = np.tile(np.repeat(np.arange(CTX_LEN, dtype=np.int16), K), n_ctx)
    act = rng.exponential(1.0, latent.size).astype(np.float16)
    order = np.lexsort((pos, ctx, latent))
    return pa.table({"latent": latent[order], "ctx_id": ctx[order], "pos": pos[order], "act": act[order]},
                    schema=LATENTS_SCHEMA)


@pytest.fixture
def partition(tmp_path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "latents" / "layer=layers.3" / "sae=topk-x2"
    folder.mkdir(parents=True)
    files = []
    for i in range(3):
        files.append(folder / f"part-{i:05d}.parquet")
        write_parquet(sparse_part(40 * i, 40, seed=i), files[-1])
    return folder, files


def test_a_sorted_zstd_partition_meets_the_bytes_target(partition):
    folder, files = partition
    n_non_zero = 3 * 40 * CTX_LEN * K
    outcome = bytes_per_non_zero(folder, n_non_zero)
    assert outcome.passed, outcome.description
    assert outcome.metadata["files"] == 3 and outcome.metadata["bytes_per_non_zero"] <= 5.0
    assert outcome.metadata["bytes"] == sum(f.stat().st_size for f in files)


def test_an_unsorted_uncompressed_partition_is_over_the_target(tmp_path):
    table = sparse_part(0, 40, seed=0)
    shuffled = table.take(np.random.default_rng(1).permutation(table.num_rows))
    write_parquet(shuffled, tmp_path / "part-00000.parquet", compression="none", compression_level=None)
    outcome = bytes_per_non_zero(tmp_path, table.num_rows)
    assert not outcome.passed and outcome.severity == "warn"
    assert outcome.metadata["bytes_per_non_zero"] > 5.0 and "over the target" in outcome.description


def test_readable_parts_passes_intact_files(partition):
    _, files = partition
    outcome = readable_parts(files)
    assert outcome.passed and outcome.metadata == {"files": 3, "unreadable": {}}


def test_a_truncated_part_breaks_every_query_and_is_named_alone(partition):
    _, files = partition
    broken = files[1]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # a copy cut short: the footer is gone
    queries = {"latent_stats": {"num_latents": N_LATENTS, "n_tokens": 3 * 40 * CTX_LEN},
               "latent_preview": {"n": 5}, "examples_peaks": {}}
    for name, params in queries.items():
        with duckdb.connect() as con, pytest.raises(duckdb.Error):
            relation = run_query(con, name, files=[str(f) for f in files], **params)
            if relation is not None:  # a SELECT runs when fetched; examples_peaks creates its table at once
                relation.fetchall()
    outcome = readable_parts(files)
    assert not outcome.passed and outcome.severity == "error"
    assert list(outcome.metadata["unreadable"]) == [str(broken)]
    assert str(broken) in outcome.description and str(files[0]) not in outcome.description
