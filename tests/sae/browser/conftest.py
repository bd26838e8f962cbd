"""A small real lake for the browser's tests, built once per session by the pipeline's own stage functions:
planted latents (no SAE trained, no forward pass) at two layers, explained by the token baseline and their
ground truth, scored by the embedding scorer and calibrated. Two tables are written here in their stored
format because no stage makes them for planted variants: the explanation embeddings of the ground truth
(through the real embedder) and the `similarity` pairs of the two layers."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sae.comparison.variants import PAIRS_SCHEMA, SUMMARY_SCHEMA
from sae.embedding import Embedder
from sae.lake import Lake
from sae.lake.access import write_views_script

from ...conftest import build_planted_lake

LAYERS = ("layers.1", "layers.3")
SAE = "planted"
EXPLANATION_TABLES = ("explanations", "scores", "score_summary", "scorer_calibration", "explanation_embeddings",
                      "similarity", "similarity_summary")


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def browser_lake(tmp_path_factory, converted_model, embedder):
    """(config, lake root) of the browser's test lake."""
    from sae.explanations.stage import explain_latents
    from sae.examples.stage import build_examples
    from sae.latents.stage import cache_latents, compute_latent_stats
    from sae.saes.stage import build_sae
    from sae.scoring.stage import score_explanations, score_summary, scorer_calibration

    cfg = build_planted_lake(tmp_path_factory.mktemp("browser"), converted_model, [], **{
        "layers": [{"hookpoint": layer} for layer in LAYERS], "saes": [{"name": SAE, "planted": {}}],
        "explain": {"n_examples": 6, "llm": {"backend": "tokens"}},
        "score": {"scorers": ["embedding"], "n_activating": 4, "n_silent": 4, "bootstrap": 100}})
    build_sae(cfg, LAYERS[1], SAE)
    cache_latents(cfg, [(LAYERS[1], SAE)], progress=False)
    compute_latent_stats(cfg, LAYERS[1], SAE)
    build_examples(cfg, LAYERS[1], SAE)
    lake = Lake(cfg.lake)
    vectors, explained = {}, {}
    for layer in LAYERS:
        table = explain_latents(cfg, layer, SAE, None, progress=False)
        score_explanations(cfg, layer, SAE, None, embedder, progress=False)
        truth = [r for r in table.to_pylist() if r["explainer"] == "truth"]
        vectors[layer] = embedder.embed([r["explanation"] for r in truth])
        explained[layer] = {r["latent"]: i for i, r in enumerate(truth)}
        flat = pa.array(vectors[layer].reshape(-1), pa.float32())
        lake.write_partition(pa.table({
            "latent": pa.array([r["latent"] for r in truth], pa.int32()), "embedder": [embedder.name] * len(truth),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors[layer].shape[1])}),
            "explanation_embeddings", layer, SAE)
    score_summary(cfg)
    scorer_calibration(cfg)
    # The same families at both layers: each latent is matched with itself.
    rows_a, rows_b = explained[LAYERS[0]], explained[LAYERS[1]]
    pairs = pa.Table.from_pylist([{"layer_a": LAYERS[0], "sae_a": SAE, "layer_b": LAYERS[1], "sae_b": SAE,
                                   "method": "explanation_optimal", "latent_a": latent, "latent_b": latent,
                                   "similarity": float(vectors[LAYERS[0]][rows_a[latent]]
                                                       @ vectors[LAYERS[1]][rows_b[latent]])}
                                  for latent in sorted(rows_a.keys() & rows_b.keys())], schema=PAIRS_SCHEMA)
    summary = pa.Table.from_pylist([{"layer_a": LAYERS[0], "sae_a": SAE, "layer_b": LAYERS[1], "sae_b": SAE,
                                     "relation": "same sae, other layer", "layer_distance": 2, "n_a": len(rows_a),
                                     "n_b": len(rows_b),
                                     "explanation_mean_best": 1.0, "explanation_frac_above": 1.0,
                                     "explanation_mean_optimal": float(np.mean(pairs["similarity"])),
                                     "agreement": 1.0}], schema=SUMMARY_SCHEMA)
    lake.write_partition(pairs, "similarity")
    lake.write_partition(summary, "similarity_summary")
    write_views_script(lake.root)
    return cfg, lake.root


@pytest.fixture(scope="session")
def bare_lake(browser_lake, tmp_path_factory) -> Path:
    """The same lake before anything was explained: no explanations, scores, embeddings or similarity."""
    root = tmp_path_factory.mktemp("bare") / "lake"
    shutil.copytree(browser_lake[1], root, symlinks=True)
    for table in EXPLANATION_TABLES:
        shutil.rmtree(root / table)
    write_views_script(root)
    return root


def make_app(cfg, root: Path):
    from sae.browser.app import create_app

    return create_app(root, cfg.model, cfg.score.embedder, cfg.score.embedder_device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(browser_lake):
    """The browser under a real uvicorn on 127.0.0.1 (a free port), stopped after the session."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(*browser_lake), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the browser's uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
