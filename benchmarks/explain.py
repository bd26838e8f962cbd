"""Benchmark of the `local` explainer backend: explanations per minute and tokens per second, batched
versus one prompt at a time, for each local runtime (transformers, llama.cpp).

    python benchmarks/explain.py                  # 16 explanation prompts, both runtimes, 3 rounds each
    python benchmarks/explain.py --prompts 32 --rounds 5 --runtimes llamacpp

The prompts are real explainer prompts (sae/prompts.py, default options): 10 windows of 32 tokens from the
offline Wikipedia sample, with a few tokens of each marked as active, so prompt lengths are those of the
pipeline (~650 tokens). Greedy decoding, 40 new tokens at most. Each (runtime, batching) runs in a fresh
process; the first round warms up and is left out of the median. The response cache is not used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_prompts(n: int, round_no: int, lake: Path):
    """`n` explainer requests over windows of the Wikipedia sample, different in every round."""
    import random

    from sae.config import BUILTIN_MODEL, CorpusConfig, ModelConfig, PromptConfig
    from sae.corpus.documents import iter_documents
    from sae.llm.base import ChatRequest, SamplingParams
    from sae.models import load_tokenizer
    from sae.prompts import Window, explainer_messages

    tokenizer = load_tokenizer(ModelConfig(name=BUILTIN_MODEL), lake)
    rng = random.Random(round_no)
    ids = []
    for text in iter_documents(CorpusConfig()):
        ids += tokenizer(text)["input_ids"]
        if len(ids) > 50_000:
            break
    requests = []
    for _ in range(n):
        windows = []
        for _ in range(10):
            start = rng.randrange(len(ids) - 32)
            pieces = tuple(tokenizer.decode([t]) for t in ids[start : start + 32])
            acts = [0.0] * 32
            for pos in rng.sample(range(32), 2):
                acts[pos] = rng.uniform(1, 10)
            windows.append(Window(pieces, tuple(acts)))
        requests.append(ChatRequest(explainer_messages(windows, PromptConfig()), SamplingParams(max_tokens=40)))
    return requests


def worker(runtime: str, batch: int, rounds: int, n: int, lake: Path) -> list[dict]:
    from sae.config import LLMConfig
    from sae.llm import make_client

    client = make_client(LLMConfig(backend="local", runtime=runtime, batch_size=batch), lake)
    results = []
    for round_no in range(rounds):
        requests = build_prompts(n, round_no, lake)
        started = time.perf_counter()
        if batch == 1:
            done = [client.complete([r])[0] for r in requests]
        else:
            done = client.complete(requests)
        wall = time.perf_counter() - started
        prompt_tokens = sum(d.prompt_tokens for d in done)
        generated = sum(d.completion_tokens for d in done)
        results.append({"round": round_no, "wall_s": wall, "explanations_per_min": 60 * n / wall,
                        "prompt_tokens": prompt_tokens, "generated_tokens": generated,
                        "total_tok_s": (prompt_tokens + generated) / wall, "generated_tok_s": generated / wall})
    client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds after the warm-up round")
    parser.add_argument("--batch", type=int, default=16, help="batch size / parallel slots of the batched runs")
    parser.add_argument("--runtimes", nargs="+", default=["transformers", "llamacpp"])
    parser.add_argument("--lake", default=str(REPO / "benchmarks" / ".data"), help="where the model is converted")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    lake = Path(args.lake)
    if args.worker:
        runtime, batch = args.worker[0], int(args.worker[1])
        print("RESULT " + json.dumps(worker(runtime, batch, args.rounds + 1, args.prompts, lake)))
        return
    print(f"{args.prompts} explainer prompts per round, {args.rounds} rounds (+1 warm-up), greedy, <= 40 new tokens")
    print(f"{'runtime':<13} {'batching':<13} {'expl/min':>9} {'total tok/s':>12} {'gen tok/s':>10} "
          f"{'prompt tok':>11}")
    for runtime in args.runtimes:
        for batch in (args.batch, 1):
            out = subprocess.run([sys.executable, __file__, "--worker", runtime, str(batch), "--prompts",
                                  str(args.prompts), "--rounds", str(args.rounds), "--lake", str(lake)],
                                 capture_output=True, text=True, check=False)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                print(f"{runtime:<13} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
                continue
            rounds = json.loads(lines[-1][len("RESULT "):])[1:]  # drop the warm-up
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "round"}
            label = f"batch {batch}" if batch > 1 else "one at a time"
            print(f"{runtime:<13} {label:<13} {med['explanations_per_min']:>9.1f} {med['total_tok_s']:>12.0f} "
                  f"{med['generated_tok_s']:>10.1f} {med['prompt_tokens'] / args.prompts:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
