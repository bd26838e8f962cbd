"""Benchmark of example selection on a synthetic latents table of realistic shape.

    python benchmarks/selection.py                          # 100 M non-zeros, 32k latents
    python benchmarks/selection.py --nnz 10000000           # a quicker look

Writes (once, cached under benchmarks/.data/) a latents table like the pipeline's: TopK codes with
k = 32 per token over 256-token contexts, latents drawn with power-law firing frequencies (a few latents
fire on a large share of tokens, most rarely), each file sorted by latent, ZSTD. Then times
`select_examples` (every kind of example for every latent that fires: top, quantile, random, and hard
negatives from a blockwise nearest-latent search over a random decoder) in a fresh process and prints the
wall time and that process's peak RSS. DuckDB's memory limit is set with --memory-limit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CTX_LEN = 256
K = 32
TOKENS_PER_FILE = 65_536


def generate(folder: Path, nnz: int, n_latents: int, seed: int = 0) -> tuple[list[Path], Path]:
    files = sorted(folder.glob("latents-*.parquet"))
    contexts = folder / "contexts.parquet"
    if files and contexts.exists():
        return files, contexts
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(n_latents) + 20.0) ** 0.9  # power law over latents
    weights /= weights.sum()
    n_tokens = nnz // K
    n_contexts = n_tokens // CTX_LEN
    for part, first in enumerate(range(0, n_contexts * CTX_LEN, TOKENS_PER_FILE)):
        n = min(TOKENS_PER_FILE, n_contexts * CTX_LEN - first)
        latents = rng.choice(n_latents, size=(n, K), p=weights).astype(np.int32)
        token = np.repeat(np.arange(first, first + n), K)
        latent = latents.reshape(-1)
        key = np.unique((latent.astype(np.int64) << 32) | token)  # one entry per (latent, token)
        latent, token = (key >> 32).astype(np.int32), (key & 0xFFFFFFFF).astype(np.int64)
        acts = rng.gamma(2.0, 2.0, len(key)).astype(np.float16) + np.float16(0.01)
        table = pa.table({"latent": latent, "ctx_id": (token // CTX_LEN).astype(np.int32),
                          "pos": (token % CTX_LEN).astype(np.int16), "act": acts})
        pq.write_table(table, folder / f"latents-{part:05d}.parquet", compression="zstd")
        print(f"\rwrote {first + n:,} / {n_contexts * CTX_LEN:,} tokens", end="", file=sys.stderr)
    print(file=sys.stderr)
    tokens = rng.integers(0, 49_152, (n_contexts, CTX_LEN), dtype=np.int32)
    pq.write_table(pa.table({"ctx_id": np.arange(n_contexts, dtype=np.int32),
                             "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), CTX_LEN)
                             .cast(pa.list_(pa.int32()))}), contexts, row_group_size=256)
    return sorted(folder.glob("latents-*.parquet")), contexts


def worker(args) -> dict:
    import torch

    from sae.config import ExamplesConfig
    from sae.examples.neighbours import nearest_latents
    from sae.examples.selection import coverage, select_examples

    folder = Path(args.data)
    files, contexts = sorted(folder.glob("latents-*.parquet")), folder / "contexts.parquet"
    decoder = torch.randn(args.latents, args.decoder_dim, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    neighbours = nearest_latents(decoder, ExamplesConfig().neighbour_latents)
    examples = select_examples(files, contexts, "bench", ExamplesConfig(), seed=0, neighbours=neighbours,
                               memory_limit=args.memory_limit)
    seconds = time.perf_counter() - start
    covered = coverage(examples, ExamplesConfig())
    return {
        "seconds": seconds,
        "windows": examples.num_rows,
        "latents": covered.num_rows,
        "complete": int(sum(covered.column("complete").to_pylist())),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnz", type=int, default=100_000_000)
    parser.add_argument("--latents", type=int, default=32_768)
    parser.add_argument("--memory-limit", default="3GB", help="DuckDB memory_limit")
    parser.add_argument("--decoder-dim", type=int, default=576, help="width of the random decoder used for the "
                        "hard negatives' nearest-latent search")
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    folder = REPO / "benchmarks" / ".data" / f"select-{args.nnz}-{args.latents}"
    files, _ = generate(folder, args.nnz, args.latents)
    nnz = sum(pq.read_metadata(f).num_rows for f in files)
    command = [sys.executable, __file__, "--worker", "--data", str(folder), "--memory-limit", args.memory_limit,
               "--latents", str(args.latents), "--decoder-dim", str(args.decoder_dim)]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    print(f"{nnz:,} non-zeros, {args.latents:,} latents, DuckDB memory_limit {args.memory_limit}")
    print(f"selection: {result['seconds']:.1f} s wall, peak RSS {result['peak_rss_mib']:.0f} MiB, "
          f"{result['windows']:,} windows for {result['latents']:,} latents ({result['complete']:,} complete)")


if __name__ == "__main__":
    main()
