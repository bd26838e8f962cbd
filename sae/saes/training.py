"""Training TopK SAEs on the cached activations, streamed from the lake.

TopK SAEs after Gao et al. (2024): encoder initialised as the decoder's transpose, decoder rows kept at
unit norm (with the gradient component along each row removed before the step), b_dec initialised at the
data mean, and an auxiliary top-k loss on the dead latents (those that have not fired for
`dead_after_tokens` tokens) that pulls them back towards the residual error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..config import TrainConfig
from .codecs import Sae, SaeConfig

log = logging.getLogger(__name__)


@dataclass
class ReconstructionMetrics:
    fvu: float  # fraction of variance unexplained on held-out tokens
    l0: float  # mean number of non-zero latents per token
    dead_fraction: float  # latents that fired on none of the evaluated tokens
    n_tokens: int  # tokens evaluated

    def as_dict(self) -> dict[str, float]:
        return {"fvu": self.fvu, "l0": self.l0, "dead_fraction": self.dead_fraction, "n_eval_tokens": self.n_tokens}


def iter_activations(files: list[Path], batch_rows: int, holdout_from_ctx: int | None, heldout: bool,
                     rng: np.random.Generator | None = None) -> Iterator[Tensor]:
    """Float32 activation batches from the activation files.

    With `rng`, the files and the row groups are visited in random order and rows are shuffled inside a
    buffer of a few row groups, so memory stays bounded by the buffer. `heldout` picks the contexts with
    ctx_id >= holdout_from_ctx; otherwise those are skipped.
    """
    groups = [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    buffer: list[np.ndarray] = []
    buffered = 0
    for path, group in groups:
        table = pq.ParquetFile(path).read_row_group(group, columns=["ctx_id", "act"])
        ctx = table.column("ctx_id").to_numpy()
        # Rows of one width: a fixed-size list here, a plain list where the lake is on S3 (Delta has no other).
        acts = table.column("act").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)
        if holdout_from_ctx is not None:
            keep = (ctx >= holdout_from_ctx) if heldout else (ctx < holdout_from_ctx)
            acts = acts[keep]
        if len(acts) == 0:
            continue
        buffer.append(acts)
        buffered += len(acts)
        if buffered >= 4 * batch_rows:
            yield from _drain(buffer, batch_rows, rng, keep_tail=True)
            buffered = sum(len(b) for b in buffer)
    yield from _drain(buffer, batch_rows, rng, keep_tail=False)


def _drain(buffer: list[np.ndarray], batch_rows: int, rng, keep_tail: bool) -> Iterator[Tensor]:
    if not buffer:
        return
    rows = np.concatenate(buffer)
    buffer.clear()
    if rng is not None:
        rows = rows[rng.permutation(len(rows))]
    n_full = len(rows) // batch_rows * batch_rows
    for i in range(0, n_full, batch_rows):
        yield torch.from_numpy(rows[i : i + batch_rows].astype(np.float32))
    tail = rows[n_full:]
    if len(tail):
        if keep_tail:
            buffer.append(tail)
        else:
            yield torch.from_numpy(tail.astype(np.float32))


def holdout_start(n_contexts: int, fraction: float) -> int:
    """First ctx_id of the held-out contexts (the last `fraction` of them, at least one)."""
    return n_contexts - max(1, round(n_contexts * fraction))


class TopKTrainer:
    """One TopK SAE and its optimizer state; `step` trains it on one batch."""

    def __init__(self, d_in: int, cfg: TrainConfig, mean: Tensor, init_seed: int, device: torch.device,
                 hookpoint: str | None = None):
        self.cfg = cfg
        num_latents = d_in * cfg.expansion_factor
        generator = torch.Generator().manual_seed(init_seed)
        W_dec = torch.randn(num_latents, d_in, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.sae = Sae(
            SaeConfig("topk", d_in, num_latents, k=cfg.k, hookpoint=hookpoint),
            W_enc=W_dec.T.clone(), b_enc=torch.zeros(num_latents), W_dec=W_dec, b_dec=mean,
        ).to(device)
        lr = cfg.lr or 2e-4 / math.sqrt(num_latents / 2**14)
        params = [self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec]
        self.optimizer = torch.optim.Adam(params, lr=lr, eps=6.25e-10)
        self.tokens_since_fired = torch.zeros(num_latents, dtype=torch.long, device=device)
        self.k_aux = d_in // 2
        self.fvu = math.nan
        self.dead_fraction = 0.0

    def step(self, x: Tensor) -> None:
        sae = self.sae
        values, indices = sae.encode_topk(x)
        error = x - sae.decode_topk(values, indices)
        fvu = error.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[indices[values > 0]] = 0
        dead = self.tokens_since_fired > self.cfg.dead_after_tokens
        loss = fvu
        if dead.any():
            loss = loss + self.cfg.auxk_alpha * _auxk_loss(sae, x, error.detach(), dead, self.k_aux)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _remove_parallel_grad(sae)
        self.optimizer.step()
        sae.normalize_decoder()
        self.fvu = fvu.item()
        self.dead_fraction = dead.float().mean().item()


def train_topk(files: list[Path], d_in: int, cfgs: list[TrainConfig], init_seeds: list[int], n_contexts: int,
               ctx_len: int, seed: int, device: torch.device, hookpoint: str | None = None,
               progress: bool = True) -> list[Sae]:
    """Train several TopK SAEs on one layer from one pass over its activations per epoch.

    They share the stream, so they must agree on epochs, batch_size and holdout_fraction; each has its own
    initialisation seed, so an SAE trained with others equals the same SAE trained alone.
    """
    if not files:
        raise FileNotFoundError(f"no activation files to train on for {hookpoint}; materialize `activations` first")
    stream = {(c.epochs, c.batch_size, c.holdout_fraction) for c in cfgs}
    if len(stream) != 1:
        raise ValueError(f"SAEs trained together must share epochs, batch_size and holdout_fraction; got {stream}")
    epochs, batch_size, holdout = stream.pop()
    rng = np.random.default_rng(seed)
    held_from = holdout_start(n_contexts, holdout)
    mean = _mean(iter_activations(files, 8192, held_from, heldout=False))
    trainers = [TopKTrainer(d_in, c, mean, s, device, hookpoint) for c, s in zip(cfgs, init_seeds, strict=True)]
    sizes = ", ".join(f"x{c.expansion_factor} k={c.k}" for c in cfgs)
    bar = tqdm(total=epochs * held_from * ctx_len, unit="tok", unit_scale=True, disable=not progress,
               desc=f"training {hookpoint} {sizes}")
    for _ in range(epochs):
        for step, x in enumerate(iter_activations(files, batch_size, held_from, heldout=False, rng=rng), 1):
            x = x.to(device)
            for trainer in trainers:
                trainer.step(x)
            bar.update(x.shape[0])
            if step % 20 == 0:
                bar.set_postfix(fvu=" ".join(f"{t.fvu:.3f}" for t in trainers),
                                dead=" ".join(f"{t.dead_fraction:.3f}" for t in trainers))
    bar.close()
    return [t.sae for t in trainers]


def _auxk_loss(sae: Sae, x: Tensor, error: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """Reconstruct the residual error from the top dead latents only (the dead-latent remedy)."""
    pre = sae.pre_activations(x).masked_fill(~dead, -torch.inf)
    values, indices = pre.topk(min(k_aux, int(dead.sum())), dim=-1)
    error_hat = F.embedding_bag(indices, sae.W_dec, per_sample_weights=F.relu(values), mode="sum")
    return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum().clamp_min(1e-8)


@torch.no_grad()
def _remove_parallel_grad(sae: Sae) -> None:
    if sae.W_dec.grad is not None:
        parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1, keepdim=True)
        sae.W_dec.grad -= parallel * sae.W_dec


def _mean(batches: Iterator[Tensor]) -> Tensor:
    total, count = None, 0
    for x in batches:
        total = x.sum(0) if total is None else total + x.sum(0)
        count += x.shape[0]
    return total / count


@torch.no_grad()
def evaluate(sae: Sae, batches: Iterator[Tensor], device: torch.device) -> ReconstructionMetrics:
    """FVU, L0 and dead fraction of `sae` on the given activations (target = input; not for transcoders)."""
    sq_error = 0.0
    sums = None
    sq_sums = None
    n = 0
    nnz = 0
    fired = torch.zeros(sae.num_latents, dtype=torch.bool, device=device)
    for x in batches:
        x = x.to(device)
        codes = sae.encode(x)
        fired[codes.latents] = True
        nnz += codes.latents.numel()
        x_hat = sae.reconstruct(x)
        sq_error += (x - x_hat).double().pow(2).sum().item()
        sums = x.double().sum(0) if sums is None else sums + x.double().sum(0)
        sq_sums = x.double().pow(2).sum(0) if sq_sums is None else sq_sums + x.double().pow(2).sum(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no tokens to evaluate the SAE on")
    total_variance = (sq_sums - sums.pow(2) / n).sum().item()
    return ReconstructionMetrics(
        fvu=sq_error / total_variance, l0=nnz / n, dead_fraction=1 - fired.float().mean().item(), n_tokens=n
    )
