"""Nearest latents by decoder-direction cosine, found block by block (never a dense latents x latents matrix)."""

from __future__ import annotations

import pyarrow as pa
import torch
from torch import Tensor

NEIGHBOURS_SCHEMA = pa.schema([("latent", pa.int32()), ("neighbour", pa.int32()), ("rank", pa.int16()),
                               ("cosine", pa.float32())])


@torch.no_grad()
def nearest_latents(W_dec: Tensor, m: int, block: int = 1024) -> pa.Table:
    """For every latent, its `m` most similar other latents by cosine of decoder rows ([L, d])."""
    directions = torch.nn.functional.normalize(W_dec.float(), dim=1)
    n = directions.shape[0]
    m = min(m, n - 1)
    if m <= 0:
        return NEIGHBOURS_SCHEMA.empty_table()
    latents, neighbours, ranks, cosines = [], [], [], []
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        sims = directions[lo:hi] @ directions.T  # [block, L]: memory bounded by the block
        sims[torch.arange(hi - lo), torch.arange(lo, hi)] = -torch.inf  # not its own neighbour
        values, indices = sims.topk(m, dim=1)
        latents.append(torch.arange(lo, hi).repeat_interleave(m))
        neighbours.append(indices.reshape(-1))
        ranks.append(torch.arange(1, m + 1).repeat(hi - lo))
        cosines.append(values.reshape(-1))
    return pa.table(
        {
            "latent": torch.cat(latents).to(torch.int32).numpy(),
            "neighbour": torch.cat(neighbours).to(torch.int32).numpy(),
            "rank": torch.cat(ranks).to(torch.int16).numpy(),
            "cosine": torch.cat(cosines).numpy(),
        },
        schema=NEIGHBOURS_SCHEMA,
    )
