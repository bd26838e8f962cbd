"""Example selection in DuckDB: per latent, train windows for the explainer and disjoint test windows
(activating, across quantile bins, and non-activating) for scoring. The queries live in sql/examples_*.sql."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch import Tensor

from ..config import ExamplesConfig
from ..corpus.documents import ContextTokens
from ..lake.sql import run_query
from .neighbours import nearest_latents

WINDOW_SCHEMA = pa.schema([("latent", pa.int32()), ("split", pa.string()), ("kind", pa.string()),
                           ("bin", pa.int16()), ("ctx_id", pa.int32()), ("start", pa.int16()),
                           ("peak_act", pa.float32())])
RANDOM_ROUNDS = (2, 10, 50)  # candidates per wanted silent window, for the latents still short of them


def select_examples(latents: list[Path], contexts: Path, sae: str, cfg: ExamplesConfig, seed: int,
                    decoder: Tensor | None = None, memory_limit: str | None = None) -> pa.Table:
    """Every kind of example for every latent that fires, with token ids and per-token activations.

    `decoder` ([L, d] decoder directions) enables the hard negatives (kind 'neighbour')."""
    if not latents:
        raise FileNotFoundError("no latents files: materialize `latents` first")
    tokens = ContextTokens(contexts)
    n_contexts, ctx_len = tokens.shape
    files = [str(f) for f in latents]
    common = {"files": files, "window": cfg.window, "ctx_len": ctx_len, "seed": seed, "sae": sae}
    with duckdb.connect() as con:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        peak_offset = int(cfg.peak_position * (cfg.window - 1))
        run_query(con, "examples_peaks", files=files)
        activating = run_query(
            con, "examples_activating", **common, peak_offset=peak_offset,
            n_top=cfg.n_top, n_quantiles=cfg.n_quantiles, n_train_quantile=cfg.n_train_quantile,
            n_test=cfg.n_test,
        ).to_arrow_table()
        random = _silent_windows(con, common, pc.unique(activating.column("latent")).to_pylist(), n_contexts,
                                 cfg.n_train_random, cfg.n_random)
        parts = [activating, random.cast(activating.schema)]
        if decoder is not None and cfg.n_neighbour and cfg.neighbour_latents:
            con.register("neighbours", nearest_latents(decoder, cfg.neighbour_latents))
            parts.append(run_query(con, "examples_neighbour", files=files, window=cfg.window, ctx_len=ctx_len,
                                   peak_offset=peak_offset, n_neighbour=cfg.n_neighbour,
                                   per_neighbour=2 * cfg.n_neighbour)
                         .to_arrow_table().cast(activating.schema))
        windows = pa.concat_tables(parts).sort_by(
            [(c, "ascending") for c in ("latent", "split", "kind", "bin", "ctx_id", "start")])
        windows = windows.append_column("wid", pa.array(np.arange(windows.num_rows, dtype=np.int64)))
        con.register("windows", windows)
        hits = run_query(con, "examples_hits", files=files, window=cfg.window).to_arrow_table()
    acts = np.zeros((windows.num_rows, cfg.window), dtype=np.float32)
    acts[hits.column("wid").to_numpy(), hits.column("i").to_numpy()] = hits.column("act").to_numpy()
    ctx_ids = windows.column("ctx_id").to_numpy()
    starts = windows.column("start").to_numpy().astype(np.int64)
    window_tokens = tokens[0:n_contexts][ctx_ids[:, None], starts[:, None] + np.arange(cfg.window)]
    return windows.drop_columns(["wid"]).append_column(
        "tokens", _lists(window_tokens.astype(np.int32))).append_column("acts", _lists(acts))


def _silent_windows(con, common: dict, latents: list[int], n_contexts: int, n_train_random: int,
                    n_random: int) -> pa.Table:
    """Up to `n_train_random` + `n_random` silent windows per latent, asking for more candidates only where
    too few were silent."""
    n_wanted = n_train_random + n_random
    parts, short, first = [], latents, 0
    for per_window in RANDOM_ROUNDS:
        if not short or n_wanted == 0:
            break
        n_candidates = per_window * n_wanted
        part = run_query(con, "examples_random", **common, latents=short, n_contexts=n_contexts,
                         n_random=n_wanted, first=first, n_candidates=n_candidates).to_arrow_table()
        parts.append(part)
        first += n_candidates
        found = pa.concat_tables(parts).group_by("latent").aggregate([("latent", "count")])
        enough = set(found.filter(pc.field("latent_count") >= n_wanted).column("latent").to_pylist())
        short = [latent for latent in short if latent not in enough]
    if not parts:
        return WINDOW_SCHEMA.empty_table()
    con.register("random_parts", pa.concat_tables(parts))
    return run_query(con, "examples_random_pick", n_train_random=n_train_random, n_random=n_random).to_arrow_table()


def _lists(matrix: np.ndarray) -> pa.ListArray:
    """Rows of a 2-D array as an Arrow list column."""
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return fixed.cast(pa.list_(fixed.type.value_type))


def coverage(examples: pa.Table, cfg: ExamplesConfig) -> pa.Table:
    """One row per latent: how many examples of each split it got, and why it is short if it is."""
    with duckdb.connect() as con:
        con.register("examples", examples)
        return run_query(con, "example_coverage", n_train=cfg.n_train, n_test=cfg.n_test,
                         n_random=cfg.n_random).to_arrow_table()
