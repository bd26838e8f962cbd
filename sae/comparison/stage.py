"""The comparison stage as plain functions over a config and a lake: explanations embedded, variants compared."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..config import PipelineConfig
from ..explanations.explainer import main_explainer
from ..lake import lake_for
from ..lineage import fresh_files, lineage_of
from ..saes.stage import load_stored_sae


def embed_explanations(cfg: PipelineConfig, hookpoint: str, name: str, embedder) -> pa.Table:
    """The parsed explanations of the partition's main explainer embedded with the configured
    sentence-transformer."""
    key = (hookpoint, name)
    explained = fresh_files(cfg, "explanations", key)
    table = pq.read_table([str(f) for f in explained], columns=["latent", "explainer", "explanation", "parsed"]).filter(
        pc.field("parsed") & (pc.field("explainer") == main_explainer(cfg.explain)))
    vectors = embedder.embed(table.column("explanation").to_pylist())
    flat = pa.array(vectors.reshape(-1), pa.float32())
    out = pa.table({"latent": table.column("latent"), "embedder": [embedder.name] * table.num_rows,
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    lake_for(cfg).write_partition(out, "explanation_embeddings", hookpoint, name,
                                  provenance=lineage_of(cfg).provenance("explanation_embeddings", key))
    return out


def compare_variants(cfg: PipelineConfig) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    """Every pair of partitions compared (see sae/comparison/variants.py); stored as `similarity` (matched pairs) and
    `similarity_summary`, with a heatmap and a similarity-vs-layer-distance plot (markdown; PNGs in lake/plots)."""
    import numpy as np

    from ..plots import markdown_image, similarity_heatmap, similarity_vs_distance
    from .variants import Side, compare_all, heatmap_matrix

    lake = lake_for(cfg)
    sides = []
    for hookpoint in cfg.hookpoints:
        # Planted latents are the scorers' calibration, not a dictionary to compare.
        for name in [spec.name for spec in cfg.saes if spec.planted is None]:
            table = pq.read_table(fresh_files(cfg, "explanation_embeddings", (hookpoint, name))[0])
            latents = table.column("latent").to_numpy(zero_copy_only=False).copy()  # writable, for torch indexing
            embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)) if len(latents) else \
                np.zeros((0, 1), np.float32)
            decoder = None
            if not cfg.sae(name).neurons:
                decoder = load_stored_sae(cfg, hookpoint, name).W_dec.detach()[torch.as_tensor(latents)].numpy()
            sides.append(Side(hookpoint, name, latents, embeddings, decoder))
    pairs, summary = compare_all(sides, cfg.similarity, cfg.hookpoints)
    # The summary first, the pairs last: a crash in between leaves `similarity` stale, never half new.
    provenance = lineage_of(cfg).provenance("similarity")
    lake.write_partition(summary, "similarity_summary", provenance=provenance)
    lake.write_partition(pairs, "similarity", provenance=provenance)
    if len(sides) < 2:
        return pairs, summary, {"note": "one layer x sae partition only: nothing to compare it with"}
    labels = [s.label for s in sides]
    heatmap = similarity_heatmap(labels, heatmap_matrix(sides, summary), title="mean best explanation cosine",
                                 path=lake.root / "plots" / "similarity_heatmap.png")
    points = [(r["layer_distance"], r["explanation_mean_best"], f"{r['sae_a']} vs {r['sae_b']}")
              for r in summary.to_pylist() if r["layer_distance"] is not None]
    distance = similarity_vs_distance(points, path=lake.root / "plots" / "similarity_vs_layer_distance.png")
    plots = {"heatmap": markdown_image(heatmap, "similarity heatmap"),
             "similarity_vs_layer_distance": markdown_image(distance, "similarity vs layer distance")}
    return pairs, summary, plots
