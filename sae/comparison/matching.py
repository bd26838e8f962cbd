"""Comparing two SAEs latent by latent: nearest latents across SAEs and an optimal one-to-one matching.

Latents are compared by the cosine of vectors (explanation embeddings or decoder directions). Every search runs
block by block over rows of `a` and columns of `b`, so memory is bounded by `block` x `block` similarities, never
a dense n x m matrix; the optimal matching is then solved on a sparse graph of candidate edges only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from scipy.sparse import coo_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor


def _unit_rows(vectors, device: str) -> tuple[Tensor, Tensor]:
    """Rows scaled to unit norm (float32) and a mask of the rows that have a direction (non-zero, finite)."""
    x = torch.as_tensor(np.asarray(vectors), device=device).float()
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of row vectors, got shape {tuple(x.shape)}")
    norms = x.norm(dim=1)
    valid = torch.isfinite(norms) & (norms > 0)
    x = torch.where(valid[:, None], x / torch.where(valid, norms, 1.0)[:, None], 0.0)
    return x, valid


@torch.no_grad()
def best_matches(a, b, k: int = 1, block: int = 4096, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For every row of `a` ([n, d]), its `k` most similar rows of `b` ([m, d]) by cosine, most similar first.

    Inputs need not be normalised. Rows that are all zero (e.g. latents without an explanation) or non-finite
    have no direction: such a row of `a` gets index -1 and similarity NaN in every slot, and such a row of `b` is
    never returned. Slots beyond the number of usable rows of `b` are filled the same way.
    Returns (indices [n, k] int64, similarities [n, k] float32).
    """
    if k < 1 or block < 1:
        raise ValueError(f"k and block must be positive, got k={k}, block={block}")
    a_unit, a_valid = _unit_rows(a, device)
    b_unit, b_valid = _unit_rows(b, device)
    if a_unit.shape[1] != b_unit.shape[1]:
        raise ValueError(f"a and b differ in dimension: {a_unit.shape[1]} vs {b_unit.shape[1]}")
    n, m = a_unit.shape[0], b_unit.shape[0]
    indices = torch.full((n, k), -1, dtype=torch.int64)
    sims = torch.full((n, k), -torch.inf, dtype=torch.float32)
    # Column blocks as views, each with its mask of rows without a direction (None when there are none).
    b_blocks = [(lo, b_unit[lo:lo + block].T, None if b_valid[lo:lo + block].all() else ~b_valid[lo:lo + block])
                for lo in range(0, m, block)]
    for lo in range(0, n, block):
        rows = a_unit[lo:lo + block]
        best_vals = torch.full((rows.shape[0], 0), -torch.inf, device=device)
        best_idx = torch.zeros((rows.shape[0], 0), dtype=torch.int64, device=device)
        for col_lo, cols_t, invalid in b_blocks:
            block_sims = rows @ cols_t  # [block, block]: the only similarity matrix held
            if invalid is not None:
                block_sims[:, invalid] = -torch.inf
            vals, idx = block_sims.topk(min(k, block_sims.shape[1]), dim=1)
            # Merge with the best so far: k from the running best plus k from this block.
            best_vals, pick = torch.cat([best_vals, vals], dim=1).topk(min(k, best_vals.shape[1] + vals.shape[1]),
                                                                         dim=1)
            best_idx = torch.cat([best_idx, idx + col_lo], dim=1).gather(1, pick)
        hi = lo + rows.shape[0]
        sims[lo:hi, :best_vals.shape[1]] = best_vals.cpu()
        indices[lo:hi, :best_idx.shape[1]] = best_idx.cpu()
    missing = torch.isinf(sims) | ~a_valid.cpu()[:, None]
    indices[missing] = -1
    sims[missing] = torch.nan
    return indices.numpy(), sims.numpy()


def candidate_edges(a, b, k: int = 5, block: int = 4096, device: str = "cpu",
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The union of each row of `a`'s top-k rows of `b` and each row of `b`'s top-k rows of `a`.

    Returns (rows, cols, sims) sorted by row then column, without duplicates.
    """
    n, m = len(a), len(b)
    a_to_b, a_sims = best_matches(a, b, k=k, block=block, device=device)
    b_to_a, b_sims = best_matches(b, a, k=k, block=block, device=device)
    rows = np.concatenate([np.repeat(np.arange(n), k), b_to_a.ravel()])
    cols = np.concatenate([a_to_b.ravel(), np.repeat(np.arange(m), k)])
    sims = np.concatenate([a_sims.ravel(), b_sims.ravel()])
    keep = (rows >= 0) & (cols >= 0)
    keys, first = np.unique(rows[keep] * m + cols[keep], return_index=True)  # often both directions find an edge
    return keys // m, keys % m, sims[keep][first]


def optimal_matching(a, b, k: int = 5, block: int = 4096, device: str = "cpu", unmatched_cost: float | None = None,
                     edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A one-to-one matching of rows of `a` to rows of `b` maximising total cosine over candidate edges.

    The candidates are each side's `k` nearest rows in the other (see `candidate_edges`), or `edges` when given
    as (rows, cols, sims), and then `a` and `b` may be just the numbers of rows. Rows without a direction, and rows
    the candidates leave without a partner, get none.
    Each latent left unmatched costs `unmatched_cost`; the default (None) makes it dearer than any change in
    cosine, so the matching has as many pairs as the candidates allow and, among those, the largest total cosine
    (with every pair a candidate, that is the optimal assignment). Returns (rows, cols, sims) sorted by row.
    """
    n, m = (a, b) if edges is not None and isinstance(a, int) else (len(a), len(b))
    rows, cols, sims = candidate_edges(a, b, k=k, block=block, device=device) if edges is None else edges
    rows, cols = np.asarray(rows, dtype=np.int64).ravel(), np.asarray(cols, dtype=np.int64).ravel()
    sims = np.asarray(sims, dtype=np.float64).ravel()
    # Unique usable edges: a duplicate would be summed by the sparse matrix.
    keep = (rows >= 0) & (cols >= 0) & np.isfinite(sims)
    keys, first = np.unique(rows[keep] * m + cols[keep], return_index=True)
    rows, cols, sims = keys // m, keys % m, sims[keep][first]
    if keys.size == 0:
        return rows, cols, np.zeros(0, dtype=np.float32)
    if unmatched_cost is None:
        # An augmenting path re-pairs fewer than min(n, m) latents, each pair's cosine changing by at most 2.
        unmatched_cost = float(min(n, m) + 2)
    # An always-feasible square graph: left = a and slack copies of b, right = b and slack copies of a. A matching
    # M takes a_i-b_j (cost 2 - cos) and slack b_j-slack a_i (cost 1) for each pair (i, j) in M; every other latent
    # takes the edge to its own slack copy. All costs are positive (scipy drops zero-weight entries); a pair costs
    # 3 - cos against 2 * slack for its two latents unmatched, so each unmatched latent costs `unmatched_cost`.
    slack = unmatched_cost + 1.5
    if slack <= 0:
        raise ValueError(f"unmatched_cost must be above -1.5, got {unmatched_cost}")
    idx_a, idx_b = np.arange(n), np.arange(m)
    costs = np.concatenate([2.0 - np.clip(sims, -1.0, 1.0), np.ones(rows.size), np.full(n + m, slack)])
    left_nodes = np.concatenate([rows, n + cols, idx_a, n + idx_b])
    right_nodes = np.concatenate([cols, m + rows, m + idx_a, idx_b])
    graph = coo_array((costs, (left_nodes, right_nodes)), shape=(n + m, m + n)).tocsr()
    left, right = min_weight_full_bipartite_matching(graph)
    paired = (left < n) & (right < m)
    out_rows, out_cols = left[paired].astype(np.int64), right[paired].astype(np.int64)
    found = np.searchsorted(keys, out_rows * m + out_cols)  # keys are sorted and unique
    return out_rows, out_cols, sims[found].astype(np.float32)


def _partners(match) -> dict[int, int]:
    """A matching as {latent of A: latent of B}, from a dict, (rows, cols[, sims]) or an array of partners."""
    if isinstance(match, Mapping):
        return {int(i): int(j) for i, j in match.items() if j is not None and int(j) >= 0}
    if isinstance(match, tuple):
        rows, cols = np.asarray(match[0]).ravel(), np.asarray(match[1]).ravel()
        return {int(i): int(j) for i, j in zip(rows, cols) if j >= 0}
    partners = np.asarray(match)
    if partners.ndim == 2:  # best_matches indices: the best partner is the first column
        partners = partners[:, 0]
    return {int(i): int(j) for i, j in enumerate(partners) if j >= 0}


def matching_agreement(match1, match2) -> float:
    """The fraction of latents of A, among those with a partner in either matching, whose partner is the same.

    Each matching is a dict {latent of A: latent of B}, a tuple (rows, cols[, sims]) as from `optimal_matching`,
    or an array of partners indexed by latent of A with -1 for none ([n] or best_matches' [n, k] indices).
    NaN when neither matching pairs anything.
    """
    first, second = _partners(match1), _partners(match2)
    latents = first.keys() | second.keys()
    if not latents:
        return math.nan
    return sum(first.get(i) == second.get(i) for i in latents) / len(latents)


def summarize(sims, threshold: float) -> dict[str, float]:
    """Mean and median best similarity, the fraction above `threshold`, and how many latents have a match.

    `sims` holds one best similarity per latent ([n], or best_matches' [n, k] of which the first column is used);
    NaNs (latents without a match) are left out of every figure. The figures are NaN when nothing is left.
    """
    values = np.asarray(sims, dtype=np.float64)
    if values.ndim == 2:
        values = values[:, 0]
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean_best": math.nan, "median_best": math.nan, "frac_above": math.nan, "n": 0}
    return {
        "mean_best": float(values.mean()),
        "median_best": float(np.median(values)),
        "frac_above": float(np.mean(values > threshold)),
        "n": int(values.size),
    }
