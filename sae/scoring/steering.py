"""Steering the subject model with a latent's decoder direction, and the generations the intervention scorer
judges (the `steered_generations` table, one partition per layer x sae).

A latent is steered where it writes: an SAE at its hookpoint (the residual stream, an MLP's output or input); a
transcoder at its MLP's output (its hookpoint), which it reconstructs; a neuron at its MLP's output too, along its
column of the down projection (the same as adding to the neuron's own activation, as the projection is linear).
What is added, at every position of the prompt and of the continuation, is
    strength * typical_act * direction
with `direction` what the latent writes per unit of activation (sae/saes/logits.py residual_directions: decoder
rows, mapped through the down projection for neurons), `typical_act` the latent's max_act from latent_stats, and
`strength` each of score.intervention_strengths. The clean continuation (nothing added) is the same for every
latent of a partition: it is generated once per prompt. Decoding is greedy.

The output-side explainer (sae/scoring/output_explanations.py) reads continuations of other prompts (purpose
`explain`) than the scorer judges (purpose `score`), so that no explanation is judged on what it was written from.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

import pyarrow as pa
import torch
from torch import Tensor, nn

from ..latents.hookpoints import block_index, resolve_hookpoint

SCHEMA = pa.schema([
    ("latent", pa.int32()),  # null: the clean continuation, shared by every latent
    ("strength", pa.float32()),  # 0 for the clean continuation
    ("purpose", pa.string()),  # score: judged by the intervention scorer; explain: shown to the output explainer only
    ("prompt_index", pa.int32()),  # in score.intervention_prompts (purpose score) or output_prompts (explain)
    ("prompt", pa.string()),
    ("typical_act", pa.float32()),  # the latent's max_act (null for the clean continuation)
    ("site", pa.string()),  # the hookpoint where the direction was added
    ("completion", pa.string()),  # the generated continuation, decoded
    ("completion_ids", pa.list_(pa.int32())),
    ("settings_key", pa.string()),  # what made the row (model, SAE, prompt, strength, tokens): reused when equal
])


def steering_site(hookpoint: str, transcode: bool, neurons: bool) -> str:
    """Where a variant configured at `hookpoint` writes: a transcoder and the neurons at the MLP's output."""
    if neurons:
        return f"layers.{block_index(hookpoint)}.mlp"
    return hookpoint  # an SAE writes where it reads; a transcoder's hookpoint is the MLP output it reconstructs


@contextmanager
def steering(model: nn.Module, site: str, vectors: Tensor):
    """While open, every forward pass of `model` adds vectors[b] ([batch, d_model]) at `site` to every position
    of batch row b."""
    module, is_input = resolve_hookpoint(model, site)

    def add(value: Tensor) -> Tensor:
        return value + vectors[: value.shape[0], None, :].to(device=value.device, dtype=value.dtype)

    if is_input:
        handle = module.register_forward_pre_hook(lambda m, args: (add(args[0]), *args[1:]))
    else:
        def after(m, args, out):
            return (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out)

        handle = module.register_forward_hook(after)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, prompts: list[str], site: str, vectors: Tensor,
             max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of `prompts`, row b steered by vectors[b] (zeros: clean), as new token ids (cut at
    the end-of-sequence token)."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # so that every row's continuation starts at the same position
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with steering(model, site, vectors.to(device)):
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return [row[: row.index(eos)] if eos in row else row for row in new]


def settings_key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def steered_rows(model: nn.Module, tokenizer, directions: Tensor, typical: dict[int, float], site: str,
                 prompts: tuple[str, ...], strengths: tuple[float, ...], max_new_tokens: int, base_key: dict,
                 stored: dict[str, dict], save=None, batch_size: int = 32, purpose: str = "score") -> list[dict]:
    """Every row of one `purpose` for the latents of `typical` (latent -> its typical activation): the clean
    continuation of each prompt, and each latent's at each strength; rows in `stored` (by settings_key) are
    reused, the rest generated `batch_size` at a time, each batch handed with every row so far to `save`."""
    wanted = [(None, 0.0, i) for i in range(len(prompts))]
    wanted += [(latent, strength, i) for latent in sorted(typical) for strength in strengths
               for i in range(len(prompts))]
    rows, missing = [], []
    for latent, strength, i in wanted:
        key = settings_key(**base_key, latent=latent, strength=strength, prompt=prompts[i], purpose=purpose,
                           max_new_tokens=max_new_tokens, typical_act=typical.get(latent))
        row = {"latent": latent, "strength": strength, "purpose": purpose, "prompt_index": i, "prompt": prompts[i],
               "typical_act": typical.get(latent), "site": site, "settings_key": key}
        if key in stored:
            rows.append(stored[key])
        else:
            missing.append(row)
    for first in range(0, len(missing), batch_size):
        chunk = missing[first : first + batch_size]
        vectors = torch.stack([torch.zeros(directions.shape[1]) if row["latent"] is None else
                               row["strength"] * row["typical_act"] * directions[row["latent"]].float().cpu()
                               for row in chunk])
        ids = generate(model, tokenizer, [row["prompt"] for row in chunk], site, vectors, max_new_tokens)
        for row, new in zip(chunk, ids):
            rows.append(row | {"completion_ids": new, "completion": tokenizer.decode(new, skip_special_tokens=True)})
        if save is not None:
            save(rows)
    return sorted(rows, key=lambda r: (-1 if r["latent"] is None else r["latent"], r["strength"], r["prompt_index"]))
