"""Server-side time per page of the latent browser (`saelake serve`), as p50 / p95 over random latents.

    python benchmarks/serve.py --lake lake                          # a lake the pipeline built (the demo's)
    python benchmarks/serve.py --synthetic --work /tmp/serve-bench  # 32,768 latents, 1e8 non-zeros
    python benchmarks/serve.py --synthetic --nonzeros 1e7 --work /tmp/serve-small   # a quick run

The synthetic lake is written once under --work (reused while its size options match) in the layout the
pipeline writes: chunk files of `latents` sorted by latent (the engine's sort), `latent_stats` by the
pipeline's own query, a TopK SAE's weights, `examples` windows and explanations for every latent. Requests
go through the real app in process (Starlette's TestClient), so the time is the server's: routing, queries,
rendering. The first request of each page (tokenizer, decoder and embedder loads) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAYER, SAE = "layers.3", "synthetic"
CTX_LEN, K, D_MODEL, WINDOW, N_WINDOWS = 256, 32, 576, 32, 6


def build_synthetic(root: Path, n_latents: int, nonzeros: int, seed: int = 0) -> None:
    """A lake of one TopK variant with `nonzeros` activations (K per token) over Zipf-like latent frequencies."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import torch

    from sae.explanations.explainer import SCHEMA as EXPLANATIONS_SCHEMA
    from sae.lake import LATENT_ROW_GROUP, Lake, write_parquet
    from sae.lake.access import write_views_script
    from sae.lake.sql import run_query
    from sae.latents.engine import LATENTS_SCHEMA
    from sae.latents.stage import HIST_BINS
    from sae.saes.codecs import Sae, SaeConfig, save_sae

    rng = np.random.default_rng(seed)
    lake = Lake(root)
    n_tokens = nonzeros // K
    n_contexts = n_tokens // CTX_LEN
    weights = 1.0 / np.arange(1, n_latents + 1) ** 0.8
    weights = rng.permutation(weights / weights.sum())
    tokens = rng.integers(0, 49152, size=(n_contexts, CTX_LEN), dtype=np.int32)
    staging = lake.open_staging("contexts")
    write_parquet(pa.table({"ctx_id": pa.array(np.arange(n_contexts, dtype=np.int32)),
                            "doc_id": pa.array(np.arange(n_contexts, dtype=np.int32)),
                            "tokens": pa.array(list(tokens), pa.list_(pa.int32()))}), staging / "part-00000.parquet")
    lake.commit(staging, "contexts")
    staging = lake.open_staging("latents", LAYER, SAE)
    chunk_contexts = 65536 // CTX_LEN  # the pipeline's default chunk_tokens
    for chunk, first in enumerate(range(0, n_contexts, chunk_contexts)):
        ctx = np.arange(first, min(first + chunk_contexts, n_contexts), dtype=np.int32)
        rows = len(ctx) * CTX_LEN * K
        latent = rng.choice(n_latents, size=rows, p=weights).astype(np.int32)
        order = np.argsort(latent, kind="stable")
        table = pa.table({
            "latent": latent[order], "ctx_id": np.repeat(ctx, CTX_LEN * K)[order],
            "pos": np.tile(np.repeat(np.arange(CTX_LEN, dtype=np.int16), K), len(ctx))[order],
            "act": rng.gamma(2.0, 1.0, size=rows).astype(np.float16)[order]}, schema=LATENTS_SCHEMA)
        write_parquet(table, staging / f"part-{chunk:05d}.parquet")
    lake.commit(staging, "latents", LAYER, SAE)
    lake.write_partition(pa.table({"architecture": ["topk"], "num_latents": [n_latents], "k": [K],
                                   "d_in": [D_MODEL], "source": ["trained"], "fvu": [0.2], "l0": [float(K)],
                                   "dead_fraction": [0.0], "n_eval_tokens": [4096]}), "sae_metrics", LAYER, SAE)
    with duckdb.connect() as con:
        stats = run_query(con, "latent_stats", files=[str(f) for f in lake.files("latents", LAYER, SAE)],
                          num_latents=n_latents, n_tokens=n_tokens, hist_bins=HIST_BINS).to_arrow_table()
    lake.write_partition(stats, "latent_stats", LAYER, SAE, row_group_size=LATENT_ROW_GROUP)
    sae = Sae(SaeConfig(architecture="topk", d_in=D_MODEL, num_latents=n_latents, k=K),
              W_enc=torch.randn(D_MODEL, n_latents), b_enc=torch.zeros(n_latents),
              W_dec=torch.randn(n_latents, D_MODEL), b_dec=torch.zeros(D_MODEL))
    staging = lake.open_staging("saes", LAYER, SAE)
    save_sae(sae, staging)
    lake.commit(staging, "saes", LAYER, SAE)
    windows = []
    for latent in range(n_latents):
        for i in range(N_WINDOWS):
            ctx, start = int(rng.integers(n_contexts)), int(rng.integers(CTX_LEN - WINDOW))
            acts = np.where(rng.random(WINDOW) < 0.2, rng.gamma(2.0, 1.0, WINDOW), 0).astype(np.float32)
            windows.append({"latent": latent, "split": "train" if i < N_WINDOWS // 2 else "test",
                            "kind": "top" if i % 3 == 0 else "quantile" if i % 3 == 1 else "random", "bin": i % 3,
                            "ctx_id": ctx, "start": start, "peak_act": float(acts.max()),
                            "tokens": tokens[ctx, start : start + WINDOW].tolist(), "acts": acts.tolist()})
    lake.write_partition(pa.Table.from_pylist(windows), "examples", LAYER, SAE, row_group_size=LATENT_ROW_GROUP)
    now = time.time()
    lake.write_partition(pa.Table.from_pylist([{
        "latent": latent, "explainer": "tokens", "explanation": f"synthetic latent {latent}", "parsed": True,
        "completion": "", "prompt_version": "bench", "created_at": now} for latent in range(n_latents)],
        schema=EXPLANATIONS_SCHEMA), "explanations", LAYER, SAE)
    write_views_script(root)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(root: Path, runs: int, seed: int = 0) -> dict[str, dict]:
    import random

    from starlette.testclient import TestClient

    from sae.browser.app import create_app
    from sae.config import load_config

    cfg = load_config(None)
    client = TestClient(create_app(root, cfg.model, cfg.score.embedder))
    variants = client.app.state.browser.variants()
    variant = next((v for v in variants if v.source not in ("planted",)), variants[0])
    rng = random.Random(seed)
    pages = {
        "overview": lambda: "/",
        "latent list": lambda: f"{variant.url}?sort=frequency&page={rng.randint(1, 20)}",
        "latent list by score": lambda: f"{variant.url}?sort=max_act&explained=yes",
        "latent page": lambda: f"/latent/{variant.layer}/{variant.sae}/{rng.randrange(variant.num_latents)}",
        "search (meaning + keyword)": lambda: f"/search?q=numbers+{rng.randint(0, 9)}",
        "token search": lambda: f"/search?token=the&variant={variant.key}",
        "compare": lambda: "/compare",
    }
    results = {}
    for name, url in pages.items():
        start = time.perf_counter()
        status = client.get(url()).status_code
        first = time.perf_counter() - start
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            response = client.get(url())
            times.append(time.perf_counter() - start)
            assert response.status_code == 200, (name, response.status_code)
        results[name] = {"status": status, "first_ms": 1000 * first, "p50_ms": 1000 * statistics.median(times),
                         "p95_ms": 1000 * percentile(times, 0.95), "runs": runs}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, help="a lake to measure")
    parser.add_argument("--synthetic", action="store_true", help="measure a synthetic lake built under --work")
    parser.add_argument("--work", type=Path, default=Path("serve-bench"), help="where the synthetic lake is kept")
    parser.add_argument("--latents", type=int, default=32768)
    parser.add_argument("--nonzeros", type=float, default=1e8)
    parser.add_argument("--runs", type=int, default=30, help="timed requests per page")
    args = parser.parse_args()
    if not args.lake and not args.synthetic:
        parser.error("give --lake PATH, --synthetic, or both")
    lakes = []
    if args.lake:
        lakes.append(("lake", args.lake.resolve()))
    if args.synthetic:
        root = (args.work / f"lake-{args.latents}-{int(args.nonzeros)}").resolve()
        if not (root / "views.sql").exists():
            start = time.perf_counter()
            build_synthetic(root, args.latents, int(args.nonzeros))
            print(f"built {root} in {time.perf_counter() - start:.0f} s", flush=True)
        lakes.append((f"synthetic ({args.latents:,} latents, {args.nonzeros:.0e} non-zeros)", root))
    for label, root in lakes:
        results = measure(root, args.runs)
        print(f"\n{label}: {root}")
        print(f"{'page':28} {'first':>9} {'p50':>9} {'p95':>9}")
        for name, r in results.items():
            print(f"{name:28} {r['first_ms']:7.0f}ms {r['p50_ms']:7.1f}ms {r['p95_ms']:7.1f}ms")
        print(json.dumps({"lake": str(root), "pages": results}))


if __name__ == "__main__":
    main()
