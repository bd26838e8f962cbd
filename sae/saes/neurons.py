"""The MLP neurons as a codec: the baseline that SAE variants are compared against."""

from __future__ import annotations

import torch

from .codecs import Sae, SaeConfig


def neuron_codec(width: int, k: int | None) -> Sae:
    """The MLP neurons as an identity 'SAE' over the hidden activations: positive values, or the top k."""
    eye = torch.eye(width)
    architecture = "relu" if k is None else "topk"
    config = SaeConfig(architecture, width, width, k=k, apply_b_dec_to_input=False, source_format="neurons")
    return Sae(config, W_enc=eye, b_enc=torch.zeros(width), W_dec=eye.clone(), b_dec=torch.zeros(width))
