"""Benchmark of cross-SAE latent matching on random unit vectors of explanation-embedding shape.

    python benchmarks/similarity.py                    # 32k x 32k latents, 384 dims
    python benchmarks/similarity.py --n 8192 --k 3     # a quicker look

Times, on the CPU, `best_matches` with k = 1 and with k candidates, then `optimal_matching` over the union of
both sides' k candidates, and prints each step's wall time and peak resident memory (sampled by a thread while
the step runs) and the process's peak RSS (getrusage). Random vectors in 384 dims are nearly orthogonal with many
near-ties, a harder matching problem than real explanations.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sae.comparison.matching import best_matches, candidate_edges, optimal_matching, summarize

PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_ever() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class PeakSampler:
    """The largest resident set seen while the block runs, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def start(self) -> None:
        self.peak = current_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())
        return self.peak


def step(name: str, fn: Callable[[], object]) -> object:
    before = current_rss()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    peak = sampler.stop()
    print(f"{name:<38} {elapsed:8.2f} s   peak RSS {peak / 2**20:6.0f} MiB "
          f"(+{(peak - before) / 2**20:.0f} over the step's start)", flush=True)
    return result


def random_units(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32768, help="latents per side")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--k", type=int, default=5, help="candidates per latent for the matching")
    parser.add_argument("--block", type=int, default=4096, help="rows and columns per similarity block")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    a, b = random_units(args.n, args.dim, rng), random_units(args.n, args.dim, rng)
    print(f"{args.n} x {args.n} latents, {args.dim} dims, block {args.block}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; inputs {2 * a.nbytes / 2**20:.0f} MiB; RSS at start {current_rss() / 2**20:.0f} MiB")

    _, best = step("best_matches k=1", lambda: best_matches(a, b, k=1, block=args.block))
    step(f"best_matches k={args.k}", lambda: best_matches(a, b, k=args.k, block=args.block))
    edges = step(f"candidate_edges k={args.k} (both sides)",
                 lambda: candidate_edges(a, b, k=args.k, block=args.block))
    rows, _, sims = step(f"optimal_matching on {len(edges[0])} edges",
                         lambda: optimal_matching(args.n, args.n, edges=edges))

    print(f"matched {len(rows)} of {args.n}; mean cosine matched {sims.mean():.4f}, "
          f"best-match summary {summarize(best, 0.2)}")
    print(f"process peak RSS (ru_maxrss) {peak_rss_ever() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
