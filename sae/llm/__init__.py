"""The LLM that writes and scores explanations, behind one interface with three backends (see base.py)."""

from __future__ import annotations

from pathlib import Path

from ..config import LLM_BACKENDS, LLMConfig
from .base import (
    BackendError,
    ChatRequest,
    ChoiceLogprobs,
    ChoiceText,
    Completion,
    LLMClient,
    OutputFormat,
    SamplingParams,
    ScoredText,
    TokenLogprobs,
    request_key,
)

BACKENDS = LLM_BACKENDS

__all__ = [
    "BACKENDS",
    "BackendError",
    "ChatRequest",
    "ChoiceLogprobs",
    "ChoiceText",
    "Completion",
    "LLMClient",
    "OutputFormat",
    "SamplingParams",
    "ScoredText",
    "TokenLogprobs",
    "make_client",
    "request_key",
]


def make_client(cfg: LLMConfig, lake_root: Path) -> LLMClient:
    """The client of `cfg.backend`; the heavy imports (torch models, httpx, vllm) happen only for that one."""
    if cfg.backend == "local":
        from .local import LocalClient

        return LocalClient(cfg, Path(lake_root))
    if cfg.backend == "openai":
        from .openai import OpenAIClient

        return OpenAIClient(cfg)
    if cfg.backend == "vllm":
        from .vllm import VLLMClient

        return VLLMClient(cfg, Path(lake_root))
    raise BackendError(f"llm.backend {cfg.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
