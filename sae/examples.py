"""Example selection in DuckDB: per latent, train windows for the explainer and disjoint test windows
(activating, across quantile bins, and non-activating) for scoring. The queries live in sql/examples_*.sql."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import ExamplesConfig
from .sql import run_query


def select_examples(latents: list[Path], contexts: Path, sae: str, cfg: ExamplesConfig, seed: int,
                    memory_limit: str | None = None) -> pa.Table:
    """Every kind of example for every latent that fires, with token ids and per-token activations."""
    if not latents:
        raise FileNotFoundError("no latents files: materialize `latents` first")
    meta = pq.read_metadata(contexts)
    n_contexts = meta.num_rows
    ctx_len = len(pq.ParquetFile(contexts).read_row_group(0, columns=["tokens"]).column(0)[0])
    files = [str(f) for f in latents]
    common = {"files": files, "window": cfg.window, "ctx_len": ctx_len, "seed": seed, "sae": sae}
    with duckdb.connect() as con:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        activating = run_query(
            con, "examples_activating", **common, peak_offset=int(cfg.peak_position * (cfg.window - 1)),
            n_top=cfg.n_top, n_quantiles=cfg.n_quantiles, n_train_quantile=cfg.n_train_quantile,
            n_test=cfg.n_test,
        ).to_arrow_table()
        fired = pc.unique(activating.column("latent")).to_pylist()
        random = run_query(
            con, "examples_random", **common, latents=fired, n_contexts=n_contexts, n_random=cfg.n_random,
            n_candidates=10 * cfg.n_random + 20,  # silent windows are rare for latents that fire often
        ).to_arrow_table()
        windows = pa.concat_tables([activating, random.cast(activating.schema)])
        con.register("windows", windows)
        return run_query(con, "examples_windows", files=files, window=cfg.window, contexts=str(contexts)).to_arrow_table()


def coverage(examples: pa.Table, cfg: ExamplesConfig) -> pa.Table:
    """One row per latent: how many examples of each split it got, and why it is short if it is."""
    with duckdb.connect() as con:
        con.register("examples", examples)
        return run_query(con, "example_coverage", n_train=cfg.n_train, n_test=cfg.n_test,
                         n_random=cfg.n_random).to_arrow_table()
