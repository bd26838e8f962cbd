"""What explaining a million latents costs on 8, 64 and 512 GPUs: a cost model built from rates, not a run.

    python benchmarks/scaling.py                      # rates measured here on CPU, and stated GPU assumptions
    python benchmarks/scaling.py --gpu results.json   # with what `benchmarks/gpu.py --vllm --out` measured on a GPU

The job is the paper's: Llama-3.1-8B with a 32k-latent TopK SAE (k = 32) at each of its 32 layers, 1,048,576
latents, their activations cached over 10M tokens, examples selected for every latent, one explanation per
latent by an 8B explainer on vLLM, scored by detection and fuzzing with controls. The stages run one after
another (each reads the one before), each spread evenly over the GPUs (selection over the nodes' CPU cores):
  caching      10M tokens / (tokens/s of the latents stage per GPU, at full depth with 32 SAEs)
  selection    non-zeros (tokens x k x layers) x core-seconds per non-zero / CPU cores
  explanation  latents / explanations per second per GPU
  scoring      latents x scorer prompts per explanation / prompts per second per GPU
plus, on every GPU and for each GPU stage, the time to load its model (a fixed cost that does not shrink with
more GPUs). Every rate is printed with where it comes from: measured (which command, which machine), computed
from the pipeline's own settings, or assumed (and why that number). No GPU has been lent to this project yet, so every GPU rate is an assumption until a
results.json from benchmarks/gpu.py replaces it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKENS, LAYERS, LATENTS_PER_LAYER, K = 10_000_000, 32, 32_768, 32
GPU_COUNTS = (8, 64, 512)


@dataclass(frozen=True)
class Rate:
    value: float
    unit: str
    source: str  # "measured: ..." or "assumed: ..."


def full_depth_share(shape: dict) -> float:
    """The latents stage's rate at full depth with an SAE at every layer, as a share of its rate with the hook at
    mid-depth and one SAE (what gpu.py measures), by matmul FLOPs per token: a layer's weights and an encode."""
    d, ff = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    layer = 2 * (2 * d * d + 2 * d * kv + 3 * d * ff)
    encode = 2 * d * LATENTS_PER_LAYER
    n = shape["num_hidden_layers"]
    return (n // 2 * layer + encode) / (n * layer + n * encode)


def scorer_prompts_per_explanation() -> Rate:
    """Detection and fuzzing with the default windows, batch size and a control, as the pipeline batches them."""
    from sae.config import ScoreConfig

    score = ScoreConfig()
    per_source = math.ceil((score.n_activating + score.n_silent) / score.batch_size)
    prompts = 2 * per_source * (2 if score.control else 1)
    return Rate(prompts, "prompts", f"computed: the pipeline's batching at the score defaults ({score.n_activating} "
                                    f"activating + {score.n_silent} silent windows, {score.batch_size} a prompt, "
                                    "real + control, detection + fuzzing)")


def rates(gpu_results: dict | None) -> dict[str, Rate]:
    shape = json.loads((REPO / "benchmarks" / "shapes" / "llama-3.1-8b.json").read_text())
    share = full_depth_share(shape)
    measured = (gpu_results or {}).get("shapes", {}).get("llama-3.1-8b")
    if measured:
        caching = Rate(measured["latents_tok_s"] * share, "tok/s per GPU",
                       f"measured: gpu.py latents stage {measured['latents_tok_s']:.0f} tok/s on "
                       f"{gpu_results['device']} at mid-depth, x {share:.2f} for full depth and 32 SAEs (FLOPs)")
    else:
        caching = Rate(60_000 * share, "tok/s per GPU",
                       f"assumed: 60k tok/s at mid-depth on one H100 (the rate gpu.py's token budgets are sized "
                       f"for), x {share:.2f} for full depth and 32 SAEs (FLOPs)")
    vllm = (gpu_results or {}).get("vllm", {}).get("llama-3.1-8b-dummy")
    if vllm:
        explaining = Rate(vllm["pipeline_prompts_s"], "explanations/s per GPU",
                          f"measured: gpu.py --vllm, saelake's vllm backend, 8B, on {gpu_results['device']}")
    else:
        explaining = Rate(10.0, "explanations/s per GPU",
                          "assumed: an 8B explainer on vLLM, ~1,500-token prompts and ~50-token answers, "
                          "~15k prefill tok/s and ~3k decode tok/s per H100")
    scoring = Rate(3 * explaining.value, "prompts/s per GPU",
                   f"{'derived' if vllm else 'assumed'}: 3x the explanation rate (prompts half as long, answers of "
                   "a few tokens)")
    return {
        "caching": caching,
        "selection": Rate(130.0 / 1e8, "core-s per non-zero",
                          "measured: benchmarks/selection.py, 1e8 non-zeros with hard negatives in 65 s on 2 cores"),
        "explanation": explaining,
        "scoring": scoring,
        "prompts": scorer_prompts_per_explanation(),
        "cores": Rate(12, "CPU cores per GPU", "assumed: an 8-GPU node with 96 cores"),
        "load": Rate(60.0, "s per GPU stage", "assumed: loading 16 GB of 8B weights and starting the engine"),
    }


def stage_seconds(r: dict[str, Rate], gpus: int) -> dict[str, float]:
    latents = LAYERS * LATENTS_PER_LAYER
    load = r["load"].value
    return {
        "caching": TOKENS / r["caching"].value / gpus + load,
        "selection": TOKENS * K * LAYERS * r["selection"].value / (r["cores"].value * gpus),
        "explanation": latents / r["explanation"].value / gpus + load,
        "scoring": latents * r["prompts"].value / r["scoring"].value / gpus + load,
    }


def hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", type=Path, help="results.json of `benchmarks/gpu.py --vllm --out`")
    args = parser.parse_args()
    r = rates(json.loads(args.gpu.read_text()) if args.gpu else None)
    print(f"{LAYERS * LATENTS_PER_LAYER:,} latents of Llama-3.1-8B ({LAYERS} layers x {LATENTS_PER_LAYER:,}, k={K}), "
          f"{TOKENS:,} tokens\n\nrates:")
    for name, rate in r.items():
        print(f"  {name:12} {rate.value:>12.4g} {rate.unit:24} {rate.source}")
    print(f"\n{'GPUs':>5} " + " ".join(f"{s:>12}" for s in ("caching", "selection", "explanation", "scoring"))
          + f" {'total':>10} {'GPU-hours':>10}  limited by")
    for gpus in GPU_COUNTS:
        stages = stage_seconds(r, gpus)
        total = sum(stages.values())
        print(f"{gpus:>5} " + " ".join(f"{hours(s):>12}" for s in stages.values())
              + f" {hours(total):>10} {total * gpus / 3600:>10.0f}  {max(stages, key=stages.get)}")


if __name__ == "__main__":
    main()
