"""Comparing SAE variants across sizes and layers by their latents' explanations (and decoder directions).

For every pair of (layer, sae) partitions: each explained latent of A gets its most similar explained latent
of B by explanation-embedding cosine, and an optimal one-to-one matching is solved on candidate edges (see
sae/comparison/matching.py, blockwise, so 100k+ latents per side stay in bounded memory). Where both sides are SAEs
on the residual stream (one shared hidden space, whatever the layer), the same is done with decoder
directions, and the two matchings are compared.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from ..config import SimilarityConfig
from ..frames import frame
from .matching import best_matches, matching_agreement, optimal_matching, summarize

PAIRS_SCHEMA = pa.schema([
    ("layer_a", pa.string()), ("sae_a", pa.string()), ("layer_b", pa.string()), ("sae_b", pa.string()),
    ("method", pa.string()),  # explanation_best | explanation_optimal | decoder_best | decoder_optimal
    ("latent_a", pa.int32()), ("latent_b", pa.int32()), ("similarity", pa.float32()),
])
FIGURES = [f"{space}_{figure}" for space in ("explanation", "decoder") for figure in ("mean_best", "frac_above",
                                                                                        "mean_optimal")]
# One row per pair of partitions; the decoder figures are null where the two share no hidden space.
SUMMARY_SCHEMA = pa.schema([("layer_a", pa.string()), ("sae_a", pa.string()), ("layer_b", pa.string()),
                            ("sae_b", pa.string()), ("relation", pa.string()), ("layer_distance", pa.int64()),
                            ("n_a", pa.int64()), ("n_b", pa.int64()),
                            *((name, pa.float64()) for name in FIGURES), ("agreement", pa.float64())])


@dataclass
class Side:
    layer: str
    sae: str
    latents: np.ndarray  # the explained latents, ascending
    embeddings: np.ndarray  # [n, dim] unit explanation embeddings, row i for latents[i]
    decoder: np.ndarray | None  # [n, d_model] decoder rows of the same latents; None for neuron baselines

    @property
    def label(self) -> str:
        return f"{self.layer}/{self.sae}"


def layer_depth(hookpoint: str) -> int | None:
    found = re.match(r"layers\.(\d+)", hookpoint)
    return int(found.group(1)) if found else None


def relation(a: Side, b: Side, layer_order: list[str]) -> str:
    if (a.decoder is None) != (b.decoder is None):
        return "sae vs neurons"
    if a.layer == b.layer:
        return "same layer"
    steps = abs(layer_order.index(a.layer) - layer_order.index(b.layer))
    return "adjacent layers" if steps == 1 else "distant layers"


def compare_pair(a: Side, b: Side, cfg: SimilarityConfig, layer_order: list[str]) -> tuple[pa.Table, dict]:
    """Matched pairs (latent ids) and the pair's summary figures."""
    parts = []

    def pairs(method: str, rows, cols, sims) -> None:
        n = len(rows)
        parts.append(pa.table({
            "layer_a": [a.layer] * n, "sae_a": [a.sae] * n, "layer_b": [b.layer] * n, "sae_b": [b.sae] * n,
            "method": [method] * n, "latent_a": a.latents[rows].astype(np.int32),
            "latent_b": b.latents[cols].astype(np.int32), "similarity": np.asarray(sims, np.float32)},
            schema=PAIRS_SCHEMA))

    depth_a, depth_b = layer_depth(a.layer), layer_depth(b.layer)
    summary = {"layer_a": a.layer, "sae_a": a.sae, "layer_b": b.layer, "sae_b": b.sae,
               "relation": relation(a, b, layer_order),
               "layer_distance": abs(depth_a - depth_b) if None not in (depth_a, depth_b) else None,
               "n_a": len(a.latents), "n_b": len(b.latents)}
    if not len(a.latents) or not len(b.latents):
        return PAIRS_SCHEMA.empty_table(), summary
    explanation = _match(a.embeddings, b.embeddings, cfg, "explanation", pairs)
    summary.update(explanation)
    if a.decoder is not None and b.decoder is not None and a.decoder.shape[1] == b.decoder.shape[1]:
        decoder = _match(a.decoder, b.decoder, cfg, "decoder", pairs)
        summary.update({k: v for k, v in decoder.items() if not k.startswith("_")})
        summary["agreement"] = matching_agreement(explanation["_optimal"], decoder["_optimal"])
    summary = {k: v for k, v in summary.items() if not k.startswith("_")}
    return pa.concat_tables(parts), summary


def _match(x: np.ndarray, y: np.ndarray, cfg: SimilarityConfig, name: str, pairs) -> dict:
    a_to_b, a_sims = best_matches(x, y, k=1, block=cfg.block)
    _, b_sims = best_matches(y, x, k=1, block=cfg.block)
    found = a_to_b[:, 0] >= 0
    pairs(f"{name}_best", np.flatnonzero(found), a_to_b[found, 0], a_sims[found, 0])
    rows, cols, sims = optimal_matching(x, y, k=cfg.candidates, block=cfg.block)
    pairs(f"{name}_optimal", rows, cols, sims)
    forward, backward = summarize(a_sims, cfg.threshold), summarize(b_sims, cfg.threshold)
    return {f"{name}_mean_best": _mean(forward["mean_best"], backward["mean_best"]),
            f"{name}_frac_above": _mean(forward["frac_above"], backward["frac_above"]),
            f"{name}_mean_optimal": float(sims.mean()) if sims.size else math.nan,
            "_optimal": (rows, cols)}


def _mean(*values: float) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def compare_all(sides: list[Side], cfg: SimilarityConfig, layer_order: list[str]) -> tuple[pa.Table, pa.Table]:
    """Every unordered pair of partitions: the matched pairs and one summary row per pair."""
    tables, summaries = [PAIRS_SCHEMA.empty_table()], []
    for a, b in itertools.combinations(sides, 2):
        pairs, summary = compare_pair(a, b, cfg, layer_order)
        tables.append(pairs)
        summaries.append(summary)
    return pa.concat_tables(tables), pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)


def heatmap_matrix(sides: list[Side], summary: pa.Table, key: str = "explanation_mean_best") -> np.ndarray:
    """Symmetric [partitions x partitions] matrix of a summary figure; the diagonal is 1."""
    summary = frame(summary)
    if summary.is_empty():  # a single partition: no pairs, and the summary has no columns
        return np.eye(len(sides))
    value = pl.col(key).cast(pl.Float64) if key in summary.columns else pl.lit(None, pl.Float64)
    cells = summary.select("layer_a", "sae_a", "layer_b", "sae_b", value.fill_null(math.nan).alias("value"))
    for end in ("a", "b"):  # each pair's two partitions, by their position in `sides`
        index = pl.DataFrame({f"layer_{end}": [s.layer for s in sides], f"sae_{end}": [s.sae for s in sides],
                              end: np.arange(len(sides))})
        cells = cells.join(index, on=[f"layer_{end}", f"sae_{end}"])
    matrix = np.eye(len(sides))
    i, j, values = cells["a"].to_numpy(), cells["b"].to_numpy(), cells["value"].to_numpy()
    matrix[i, j] = values
    matrix[j, i] = values
    return matrix
