"""EleutherAI sparsify layout: `cfg.json` + `sae.safetensors` in one folder per hookpoint.

Tensors: encoder.weight [L, d], encoder.bias [L], W_dec [L, d], b_dec [d], optional W_skip [d, d].
Encode: relu((x - b_dec) @ encoder.weight.T + encoder.bias), top k; transcoders skip the b_dec subtraction.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from .base import Sae, SaeConfig
from .files import read_sae_file

NAME = "sparsify"
FILES = ("cfg.json", "sae.safetensors")


def load(folder: Path) -> Sae:
    cfg = read_sae_file(folder / "cfg.json")
    tensors = read_sae_file(folder / "sae.safetensors")
    missing = [t for t in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if t not in tensors]
    if missing:
        raise ValueError(f"{folder}/sae.safetensors lacks the sparsify tensors {missing}; found {sorted(tensors)}")
    num_latents, d_in = tensors["encoder.weight"].shape
    transcode = bool(cfg.get("transcode", False))
    config = SaeConfig(
        architecture="topk",
        d_in=d_in,
        num_latents=num_latents,
        k=int(cfg["k"]),
        apply_b_dec_to_input=not transcode,
        transcode=transcode,
        hookpoint=cfg.get("hookpoint"),
        source_format=NAME,
    )
    return Sae(
        config,
        W_enc=tensors["encoder.weight"].T,
        b_enc=tensors["encoder.bias"],
        W_dec=tensors["W_dec"],
        b_dec=tensors["b_dec"],
        W_skip=tensors.get("W_skip"),
    )


def save(sae: Sae, folder: Path) -> None:
    """Write a TopK SAE so that sparsify (and delphi) load it as their own."""
    if sae.cfg.architecture != "topk":
        raise ValueError("the sparsify layout holds TopK SAEs only; use the SAELens layout for ReLU / JumpReLU")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "expansion_factor": sae.num_latents // sae.cfg.d_in,
        "normalize_decoder": True,
        "num_latents": sae.num_latents,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": sae.W_skip is not None,
        "transcode": sae.cfg.transcode,
        "d_in": sae.cfg.d_in,
        "hookpoint": sae.cfg.hookpoint,
    }
    tensors = {
        "encoder.weight": sae.W_enc.detach().T.contiguous().cpu(),
        "encoder.bias": sae.b_enc.detach().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip.detach().contiguous().cpu()
    save_file(tensors, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
