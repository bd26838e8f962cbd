"""Seconds per latent of each scorer on a partition the pipeline built, and the LLM's requests and tokens behind it.

    python benchmarks/scorers.py --config configs/demo.yaml                      # the demo's first SAE variant
    python benchmarks/scorers.py --config my.yaml --partition layers.3/planted --latents 8 --rounds 3

Each LLM scorer judges the same `--latents` latents of the partition (as score.llm_n_latents does; the embedding
scorer scores every scored latent), whose explanations are already in the lake (run the pipeline first), with
every explainer and source it would score in the pipeline, alone, through the configured scorer LLM with no
response cache (every answer is generated; the model loads before the clock starts). The steered generations of
the intervention scorer are read from the lake, not generated again (the scores step makes them).
The median of `--rounds` rounds is printed per scorer, with one round's requests and tokens per latent.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import pyarrow.parquet as pq

    from sae.config import LLM_SCORERS, load_config
    from sae.explanations.stage import token_decoder
    from sae.lake import lake_for, read_parts
    from sae.lineage import fresh_files
    from sae.llm import make_client
    from sae.llm.base import ChatRequest, SamplingParams
    from sae.scoring.scorers import score_partition
    from sae.scoring.stage import open_embedder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--partition", help="layer/sae (default: the first layer and SAE variant)")
    parser.add_argument("--latents", type=int, default=3, help="latents each scorer judges")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scorers", nargs="*", help="default: the config's score.scorers")
    args = parser.parse_args()

    cfg = load_config(args.config)
    layer, name = args.partition.split("/", 1) if args.partition else (cfg.hookpoints[0], cfg.saes[0].name)
    key, lake = (layer, name), lake_for(cfg)
    examples = read_parts(fresh_files(cfg, "examples", key))
    explanations = pq.read_table(fresh_files(cfg, "explanations", key)[0])
    generations = output = None
    if lake.files("steered_generations", layer, name):
        generations = pq.read_table(fresh_files(cfg, "scores", key, table="steered_generations"))
        output = pq.read_table(fresh_files(cfg, "scores", key, table="output_explanations"))
    scorers = args.scorers or list(cfg.score_for(name).scorers)
    client = make_client(cfg.score.llm or cfg.explain.llm, lake.root) if set(scorers) & set(LLM_SCORERS) else None
    embedder = open_embedder(cfg) if "embedding" in scorers else None
    decode = token_decoder(cfg)
    if client is not None:  # the model loads before the clock starts
        client.complete([ChatRequest((("user", "Say hello."),), SamplingParams(max_tokens=4))])
    print(f"{layer}|{name}: {args.latents} latents per scorer, {args.rounds} round(s), "
          f"scorer model {client.model if client else '-'}")
    print(f"{'scorer':<14}{'s/latent':>10}{'requests/latent':>17}{'prompt tok/latent':>19}{'answer tok/latent':>19}")
    for scorer in scorers:
        # The scored latents as the pipeline picks them (the steered generations exist for its judged ones).
        score = dataclasses.replace(cfg.score_for(name), scorers=(scorer,), llm_n_latents=args.latents)
        times, table = [], None
        for _ in range(args.rounds):
            start = time.perf_counter()
            table = score_partition(examples, explanations, score, decode, cfg.seed, cfg.examples.n_quantiles,
                                    cfg.explain.prompt.highlight_threshold, client=client, embedder=embedder,
                                    generations=generations, output_explanations=output)
            times.append(time.perf_counter() - start)
        latents = max(len(set(table.column("latent").to_pylist())), 1)
        total = {c: sum(v or 0 for v in table.column(c).to_pylist())
                 for c in ("n_requests", "prompt_tokens", "completion_tokens")}
        print(f"{scorer:<14}{statistics.median(times) / latents:>10.2f}{total['n_requests'] / latents:>17.1f}"
              f"{total['prompt_tokens'] / latents:>19.0f}{total['completion_tokens'] / latents:>19.0f}")


if __name__ == "__main__":
    main()
