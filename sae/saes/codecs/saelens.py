"""SAELens layout: `cfg.json` + `sae_weights.safetensors`.

Tensors: W_enc [d, L], b_enc [L], W_dec [L, d], b_dec [d], threshold [L] (JumpReLU; older files hold
log_threshold). The architecture is `architecture` (standard / topk / jumprelu) or, in configs older than
SAELens 6, `activation_fn_str` (relu / topk) with k in `activation_fn_kwargs`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from .base import Sae, SaeConfig
from .files import read_sae_file

NAME = "saelens"
FILES = ("cfg.json", "sae_weights.safetensors")

_ARCHITECTURES = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def load(folder: Path) -> Sae:
    cfg = read_sae_file(folder / "cfg.json")
    tensors = read_sae_file(folder / "sae_weights.safetensors")
    missing = [t for t in ("W_enc", "b_enc", "W_dec", "b_dec") if t not in tensors]
    if missing:
        raise ValueError(f"{folder}/sae_weights.safetensors lacks {missing}; found {sorted(tensors)}")
    kind = cfg.get("architecture") or cfg.get("activation_fn_str") or "standard"
    if kind not in _ARCHITECTURES:
        raise ValueError(f"{folder}/cfg.json: SAELens architecture {kind!r} is not supported; "
                         f"supported: {sorted(_ARCHITECTURES)}")
    architecture = _ARCHITECTURES[kind]
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        raise ValueError(f"{folder}/cfg.json: normalize_activations={normalize!r} is not supported yet; "
                         "fold the scaling into the weights first")
    threshold = tensors.get("threshold")
    if threshold is None and "log_threshold" in tensors:
        threshold = tensors["log_threshold"].exp()
    d_in, num_latents = tensors["W_enc"].shape
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    config = SaeConfig(
        architecture=architecture,
        d_in=d_in,
        num_latents=num_latents,
        k=int(k) if architecture == "topk" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        hookpoint=hook,
        source_format=NAME,
    )
    return Sae(config, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"], threshold)


def save(sae: Sae, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    architecture = {"relu": "standard"}.get(sae.cfg.architecture, sae.cfg.architecture)
    cfg = {
        "architecture": architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.num_latents,
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "metadata": {"hook_name": sae.cfg.hookpoint},
    }
    if sae.cfg.k:
        cfg["k"] = sae.cfg.k
    tensors = {name: getattr(sae, name).detach().contiguous().cpu() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach().contiguous().cpu()
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
