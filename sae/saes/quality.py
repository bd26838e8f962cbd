"""Spliced-in fidelity: how much the model's next-token loss rises when an SAE's reconstruction replaces
the activation at its hookpoint, against the same for the activation's mean (the usual baseline).

All on held-out contexts (the last `holdout_fraction` of them), through the full model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..latents.hookpoints import resolve_hookpoint
from .codecs import Sae


@dataclass
class SplicedLoss:
    ce_clean: float  # mean next-token cross-entropy (nats) of the untouched model
    ce_spliced: float  # with the SAE's reconstruction in place of the activation
    ce_mean_ablated: float  # with the activation's mean over the same tokens in its place
    n_tokens: int
    fvu: float = math.nan  # of the spliced reconstruction against the activation it replaced

    @property
    def ce_increase(self) -> float:
        return self.ce_spliced - self.ce_clean

    @property
    def ce_increase_mean_ablated(self) -> float:
        return self.ce_mean_ablated - self.ce_clean

    @property
    def ce_recovered(self) -> float:
        """1 when splicing costs nothing, 0 when it is as bad as mean ablation."""
        gap = self.ce_mean_ablated - self.ce_clean
        return 1 - self.ce_increase / gap if gap > 0 else math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "ce_clean": self.ce_clean, "ce_spliced": self.ce_spliced, "ce_mean_ablated": self.ce_mean_ablated,
            "ce_increase": self.ce_increase, "ce_increase_mean_ablated": self.ce_increase_mean_ablated,
            "ce_recovered": self.ce_recovered, "n_ce_tokens": self.n_tokens, "fvu_spliced": self.fvu,
        }


@contextmanager
def _replacing(model: nn.Module, hookpoint: str, fn):
    """While inside, the activation at `hookpoint` (a module's output, or its input for input hookpoints such
    as layers.i.mlp.hidden) becomes fn(activation)."""
    module, is_input = resolve_hookpoint(model, hookpoint)

    def replace(value):
        return (fn(value[0]), *value[1:]) if isinstance(value, tuple) else fn(value)

    if is_input:
        handle = module.register_forward_pre_hook(lambda mod, args: replace(args))
    else:
        handle = module.register_forward_hook(lambda mod, args, output: replace(output))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _mean_ce(model: nn.Module, tokens: np.ndarray, batch_size: int) -> tuple[float, int]:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b0 in range(0, len(tokens), batch_size):
        ids = torch.tensor(tokens[b0 : b0 + batch_size], dtype=torch.long, device=device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
        count += ids[:, 1:].numel()
    return total / count, count


@dataclass
class LayerBaseline:
    """What splicing is compared with at one hookpoint: the clean loss and the mean-ablated loss."""

    hookpoint: str
    ce_clean: float
    ce_mean_ablated: float
    n_tokens: int


@torch.no_grad()
def layer_baseline(model: nn.Module, tokens: np.ndarray, hookpoint: str, batch_size: int = 8) -> LayerBaseline:
    """Clean CE (while averaging the activation over the same tokens), then CE with that mean spliced in."""
    sums: list[Tensor] = []
    counted: list[int] = []

    def observe(x: Tensor) -> Tensor:
        sums.append(x.float().sum(dim=(0, 1)))
        counted.append(x.shape[0] * x.shape[1])
        return x

    with _replacing(model, hookpoint, observe):
        ce_clean, n = _mean_ce(model, tokens, batch_size)
    mean = torch.stack(sums).sum(0) / sum(counted)
    with _replacing(model, hookpoint, lambda x: mean.to(x.dtype).expand_as(x)):
        ce_mean, _ = _mean_ce(model, tokens, batch_size)
    return LayerBaseline(hookpoint, ce_clean, ce_mean, n)


@torch.no_grad()
def spliced_loss(model: nn.Module, tokens: np.ndarray, baseline: LayerBaseline, sae: Sae,
                 batch_size: int = 8) -> SplicedLoss:
    """CE with `sae`'s reconstruction in place of the activation at the baseline's hookpoint, and the FVU of
    that reconstruction on the same tokens.

    A transcoder (`sae.cfg.transcode`) at `layers.i.mlp` reads the MLP's input and replaces its output.
    """
    module, is_input = resolve_hookpoint(model, baseline.hookpoint)
    if sae.cfg.transcode and is_input:
        raise ValueError(f"a transcoder replaces an MLP's output; {baseline.hookpoint!r} is an input hookpoint")
    stash: dict[str, Tensor] = {}
    pre = module.register_forward_pre_hook(lambda mod, args: stash.__setitem__("in", args[0]))
    error = variance = 0.0

    def splice(x: Tensor) -> Tensor:
        nonlocal error, variance
        source = stash["in"] if sae.cfg.transcode else x
        flat = x.reshape(-1, x.shape[-1]).float()
        x_hat = sae.reconstruct(source.reshape(-1, source.shape[-1])).reshape(flat.shape)
        error += (flat - x_hat).pow(2).sum().item()
        variance += (flat - flat.mean(0)).pow(2).sum().item()
        return x_hat.reshape(x.shape).to(x.dtype)

    try:
        with _replacing(model, baseline.hookpoint, splice):
            ce_spliced, _ = _mean_ce(model, tokens, batch_size)
    finally:
        pre.remove()
    return SplicedLoss(baseline.ce_clean, ce_spliced, baseline.ce_mean_ablated, baseline.n_tokens,
                       fvu=error / variance)
