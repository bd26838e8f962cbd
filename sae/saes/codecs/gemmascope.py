"""Gemma Scope layout: `params.npz` with W_enc [d, L], W_dec [L, d], b_enc [L], b_dec [d], threshold [L].

JumpReLU: acts = (pre > threshold) * relu(pre) with pre = x @ W_enc + b_enc (no b_dec subtraction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Sae, SaeConfig
from .files import read_sae_file

NAME = "gemmascope"
FILES = ("params.npz",)
_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def load(folder: Path) -> Sae:
    params = read_sae_file(folder / "params.npz")
    missing = [t for t in _TENSORS if t not in params]
    if missing:
        raise ValueError(f"{folder}/params.npz lacks the Gemma Scope arrays {missing}; found {sorted(params)}")
    tensors = {name: torch.from_numpy(params[name].astype(np.float32)) for name in _TENSORS}
    d_in, num_latents = tensors["W_enc"].shape
    config = SaeConfig("jumprelu", d_in, num_latents, apply_b_dec_to_input=False, source_format=NAME)
    return Sae(config, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"], tensors["threshold"])
