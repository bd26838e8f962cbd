"""The real SmolLM2 for the scorer tests that check a scorer against the model itself: scores through saelake's
transformers runtime, and the same converted model loaded here to compute the reference by hand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from sae.config import LLMConfig, ScoreConfig
from sae.llm import make_client
from sae.scoring.scorers import score_partition


def scores_by_latent_and_source(examples: pa.Table, explanations: pa.Table, cfg: ScoreConfig, decode,
                                model_lake: Path, batch_size: int) -> dict[tuple[int, str], dict]:
    """The scores rows of the partition, by (latent, source), from the transformers runtime on the CPU."""
    client = make_client(LLMConfig(runtime="transformers", device="cpu", batch_size=batch_size), model_lake)
    try:
        table = score_partition(examples, explanations, cfg, decode, seed=0, n_bins=3, fuzz_threshold=0.0,
                                client=client)
    finally:
        client.close()
    return {(r["latent"], r["source"]): r for r in table.to_pylist()}


def reference_model(converted_model: Path):
    """The converted model and its tokenizer, float32, loaded with transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(converted_model)
