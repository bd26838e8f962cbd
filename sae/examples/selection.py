"""Example selection in DuckDB: per latent, train windows for the explainer and test windows (activating,
across quantile bins, and non-activating) for scoring that share no token with them. The queries live in
sql/examples_*.sql; Polars shapes the tables in between, Arrow is what comes out."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from ..config import ExamplesConfig
from ..corpus.documents import ContextTokens
from ..lake.sql import run_query

WINDOW_SCHEMA = pa.schema([("latent", pa.int32()), ("split", pa.string()), ("kind", pa.string()),
                           ("bin", pa.int16()), ("ctx_id", pa.int32()), ("start", pa.int16()),
                           ("peak_act", pa.float32())])
RANDOM_ROUNDS = (2, 10, 50)  # candidates per wanted silent window, for the latents still short of them
EVERY_LATENT = (0, 2**31 - 1)  # the [first, end) range of the latents of a whole partition (latent is int32)


def select_examples(latents: list[Path], contexts: Path, sae: str, cfg: ExamplesConfig, seed: int,
                    neighbours: pa.Table | None = None, memory_limit: str | None = None,
                    latent_range: tuple[int, int] = EVERY_LATENT, threads: int | None = None) -> pa.Table:
    """Every kind of example for every latent in `latent_range` ([first, end)) that fires, with token ids and
    per-token activations.

    No test window of a latent shares a token with any of its train windows. `neighbours` (each latent's
    nearest latents, as `nearest_latents` gives them) enables the hard negatives (kind 'neighbour'). Each
    latent's windows depend on its own activations and its nearest latents' alone, so the tables of ranges
    that tile a partition, concatenated, are the table of the whole partition. `threads` caps DuckDB's threads
    (None: one per core)."""
    if not latents:
        raise FileNotFoundError("no latents files: materialize `latents` first")
    first_latent, end_latent = latent_range
    if not 0 <= first_latent < end_latent:
        raise ValueError(f"latent_range must be [first, end) with 0 <= first < end, got {latent_range}")
    tokens = ContextTokens(contexts)
    n_contexts, ctx_len = tokens.shape
    files = [str(f) for f in latents]
    common = {"files": files, "window": cfg.window, "ctx_len": ctx_len, "seed": seed, "sae": sae}
    in_range = pl.col("latent").is_between(first_latent, end_latent, closed="left")
    if neighbours is not None:
        neighbours = pl.from_arrow(neighbours).filter(in_range)
    with duckdb.connect() as con:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        peak_offset = int(cfg.peak_position * (cfg.window - 1))
        # The nearest latents outside the range: their peaks are where the range's hard negatives are looked for.
        nearby = pl.DataFrame({"latent": [] if neighbours is None else neighbours["neighbour"].unique().sort()},
                              schema={"latent": pl.Int32}).filter(~in_range)
        con.register("nearby_latents", nearby)
        run_query(con, "examples_peaks", files=files, first_latent=first_latent, end_latent=end_latent)
        activating = run_query(
            con, "examples_activating", **common, peak_offset=peak_offset,
            first_latent=first_latent, end_latent=end_latent,
            n_top=cfg.n_top, n_quantiles=cfg.n_quantiles, n_train_quantile=cfg.n_train_quantile,
            n_test=cfg.n_test,
        ).pl()
        con.register("activating", activating)
        random = _silent_windows(con, common, activating.select(pl.col("latent").unique()), n_contexts,
                                 cfg.n_train_random, cfg.n_random)
        parts = [activating, random]
        if neighbours is not None and cfg.n_neighbour and cfg.neighbour_latents:
            con.register("neighbours", neighbours)
            train = pl.concat(parts).filter(pl.col("split") == "train").select("latent", "ctx_id", "start")
            con.register("train_windows", train)
            parts.append(run_query(con, "examples_neighbour", files=files, window=cfg.window, ctx_len=ctx_len,
                                   peak_offset=peak_offset, n_neighbour=cfg.n_neighbour,
                                   per_neighbour=2 * cfg.n_neighbour).pl())
        windows = pl.concat(parts).sort("latent", "split", "kind", "bin", "ctx_id", "start").with_row_index("wid")
        con.register("windows", windows)
        hits = run_query(con, "examples_hits", files=files, window=cfg.window).pl()
    acts = np.zeros((windows.height, cfg.window), dtype=np.float32)
    acts[hits["wid"].to_numpy(), hits["i"].to_numpy()] = hits["act"].to_numpy()
    ctx_ids = windows["ctx_id"].to_numpy()
    starts = windows["start"].to_numpy().astype(np.int64)
    window_tokens = tokens[0:n_contexts][ctx_ids[:, None], starts[:, None] + np.arange(cfg.window)]
    return windows.drop("wid").to_arrow().cast(WINDOW_SCHEMA).append_column(
        "tokens", _lists(window_tokens.astype(np.int32))).append_column("acts", _lists(acts))


def _silent_windows(con, common: dict, latents: pl.DataFrame, n_contexts: int, n_train_random: int,
                    n_random: int) -> pl.DataFrame:
    """Up to `n_train_random` + `n_random` silent windows per latent (sql/examples_random_pick.sql), asking for
    more candidates, and picking again, only for the latents still short of either split."""
    n_wanted = n_train_random + n_random
    picked = pl.from_arrow(WINDOW_SCHEMA.empty_table())
    parts, short, first = [], latents, 0
    for per_window in RANDOM_ROUNDS:
        if short.is_empty() or n_wanted == 0:
            break
        n_candidates = per_window * n_wanted
        con.register("wanted", short)
        parts.append(run_query(con, "examples_random", **common, n_contexts=n_contexts, first=first,
                               n_candidates=n_candidates).pl())
        first += n_candidates
        con.register("random_parts", pl.concat(parts))
        again = run_query(con, "examples_random_pick", window=common["window"], n_train_random=n_train_random,
                          n_random=n_random).pl()
        picked = pl.concat([picked.join(short, on="latent", how="anti"), again])
        enough = again.group_by("latent").agg(
            n_train=(pl.col("split") == "train").sum(), n_test=(pl.col("split") == "test").sum()
        ).filter((pl.col("n_train") >= n_train_random) & (pl.col("n_test") >= n_random))
        short = short.join(enough, on="latent", how="anti")
    return picked


def _lists(matrix: np.ndarray) -> pa.ListArray:
    """Rows of a 2-D array as an Arrow list column."""
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return fixed.cast(pa.list_(fixed.type.value_type))


def coverage(examples: pa.Table, cfg: ExamplesConfig) -> pa.Table:
    """One row per latent: how many examples of each split it got, and why it is short if it is."""
    with duckdb.connect() as con:
        con.register("examples", examples)
        return run_query(con, "example_coverage", n_train=cfg.n_train, n_test=cfg.n_test, n_random=cfg.n_random,
                         n_train_random=cfg.n_train_random).to_arrow_table()
