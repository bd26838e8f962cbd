"""Comparing partitions: relation labels, matched latent ids, decoder agreement and the heatmap matrix."""

import numpy as np

from sae.comparison.variants import Side, compare_all, heatmap_matrix
from sae.config import SimilarityConfig

CFG = SimilarityConfig(threshold=0.9, candidates=3, block=2)
LAYERS = ["layers.2", "layers.4", "layers.9"]


def _side(layer, sae, latents, vectors, decoder=True):
    vectors = np.asarray(vectors, np.float32)
    return Side(layer, sae, np.asarray(latents), vectors, vectors * 3 if decoder else None)


def test_pairs_carry_latent_ids_and_relations_follow_layers_and_kinds():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 8))
    a = _side("layers.2", "x4", [10, 11, 12, 13, 14], base)
    b = _side("layers.2", "x8", [7, 3, 9, 1, 0], base[[4, 3, 2, 1, 0]] + 0.01 * rng.normal(size=(5, 8)))
    c = _side("layers.4", "x4", [0, 1, 2], base[:3])
    d = _side("layers.9", "neurons", [5, 6], rng.normal(size=(2, 8)), decoder=False)
    sides = [a, b, c, d]
    pairs, summary = compare_all(sides, CFG, LAYERS)
    rows = {(r["sae_a"], r["layer_b"], r["sae_b"]): r for r in summary.to_pylist()}
    assert rows[("x4", "layers.2", "x8")]["relation"] == "same layer"
    assert rows[("x4", "layers.4", "x4")]["relation"] == "adjacent layers"
    assert rows[("x8", "layers.4", "x4")]["layer_distance"] == 2
    assert rows[("x4", "layers.9", "neurons")]["relation"] == "sae vs neurons"
    same = rows[("x4", "layers.2", "x8")]
    assert same["explanation_mean_best"] > 0.99 and same["explanation_frac_above"] == 1.0
    assert same["agreement"] == 1.0  # decoders are the same vectors here, so both matchings agree
    assert "agreement" not in rows[("x4", "layers.9", "neurons")] or rows[("x4", "layers.9", "neurons")][
        "agreement"] is None
    optimal = [p for p in pairs.to_pylist() if p["sae_b"] == "x8" and p["method"] == "explanation_optimal"]
    assert {(p["latent_a"], p["latent_b"]) for p in optimal} == {(10, 0), (11, 1), (12, 9), (13, 3), (14, 7)}
    matrix = heatmap_matrix(sides, summary)
    assert np.allclose(matrix, matrix.T, equal_nan=True) and np.allclose(np.diag(matrix), 1.0)
