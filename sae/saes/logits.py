"""What each latent writes to the output: its decoder direction read through the unembedding (`latent_logits`).

The direction is what the latent adds to the residual stream when it fires: an SAE's decoder row (an SAE on
the MLP's output, or a transcoder, writes into the residual stream through that output); for the neuron
baseline, and any variant that lives in the MLP's hidden space, the decoder row mapped through the MLP's
down projection (for a neuron, its column of the down projection).

The final norm's weight is applied, its division by the root mean square is not: the model computes
logits = W_U (g * x / rms(x)), so a direction d moves the logits along W_U (g * d) / rms(x). The division is one
positive scalar per position, which changes no token's rank; g scales each dimension differently and does
change the ranks (SmolLM2's g runs from -2.1 to 3.3: it even flips signs), so leaving it out would promote other
tokens than the model does. Values are in logits per unit of activation, before that scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import torch
from torch import nn

from ..latents.hookpoints import resolve_hookpoint
from .codecs import Sae

SCHEMA = pa.schema([
    ("latent", pa.int32()),
    ("top_ids", pa.list_(pa.int32())),  # the k most promoted tokens, strongest first
    ("top_tokens", pa.list_(pa.string())),
    ("top_values", pa.list_(pa.float32())),
    ("bottom_ids", pa.list_(pa.int32())),  # the k most suppressed tokens, most negative first
    ("bottom_tokens", pa.list_(pa.string())),
    ("bottom_values", pa.list_(pa.float32())),
])
# Latents whose logits are computed at once: the block is chunk x vocabulary floats (200 MB for SmolLM2).
_CHUNK = 1024


def final_norm_weight(model: nn.Module) -> torch.Tensor | None:
    """The weight of the norm before the unembedding (`model.norm`, `transformer.ln_f`, ...), None if absent."""
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None:
            return getattr(module, "weight", None)
    return None


def residual_directions(model: nn.Module, sae: Sae, space: str) -> torch.Tensor:
    """[num_latents, d_model]: what each latent adds to the residual stream. `space` is the hookpoint whose
    activations the decoder writes (a transcoder's: its MLP output); an MLP's hidden space is mapped through the
    block's down projection."""
    decoder = sae.W_dec.detach().float()
    if not space.endswith(".mlp.hidden"):
        return decoder
    down, _ = resolve_hookpoint(model, space)  # the down projection, whose input the hidden space is
    return decoder @ down.weight.detach().float().T


def latent_logits(model: nn.Module, sae: Sae, space: str, k: int, decode: Callable[[Sequence[int]], list[str]],
                  chunk: int = _CHUNK) -> pa.Table:
    """The k most promoted and most suppressed tokens of every latent (see the module's note on the norm)."""
    unembed = model.get_output_embeddings().weight.detach().float()  # [vocab, d_model]
    gain = final_norm_weight(model)
    if gain is not None:
        unembed = unembed * gain.detach().float()
    directions = residual_directions(model, sae, space)
    k = min(k, unembed.shape[0])
    ids = {"top": [], "bottom": []}
    values = {"top": [], "bottom": []}
    with torch.no_grad():
        for first in range(0, directions.shape[0], chunk):
            logits = directions[first : first + chunk].to(unembed.device) @ unembed.T
            for side, largest in (("top", True), ("bottom", False)):
                found = torch.topk(logits, k, dim=1, largest=largest)
                ids[side] += found.indices.cpu().tolist()
                values[side] += found.values.cpu().tolist()
    columns = {"latent": list(range(directions.shape[0]))}
    for side in ("top", "bottom"):
        columns[f"{side}_ids"] = ids[side]
        columns[f"{side}_tokens"] = [decode(row) for row in ids[side]]
        columns[f"{side}_values"] = values[side]
    return pa.table(columns, schema=SCHEMA)

