"""The LLM that writes and scores explanations, behind one interface with three backends (see base.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from .response_cache import CachedClient

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
    "shared_client",
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


# The clients this process has loaded for shards, by (settings, lake): see shared_client.
_SHARED: dict[tuple[LLMConfig, str], CachedClient] = {}


def shared_client(cfg: LLMConfig, lake_root: Path) -> CachedClient:
    """The backend of `cfg` behind the lake's response cache, loaded once per process and kept for every later
    shard that asks for it (the cache refreshed with the answers other processes wrote since).

    Why a per-process cache: the Ray engine's workers are long-lived actors (sae/execution/ray.py), so what a
    shard loaded here serves every later shard of that worker, while the shard functions stay plain functions
    that the in-process engine runs too, finding the driver's engine the same way. What it costs: a worker keeps
    each engine it loaded (an explainer and a different scorer model are two) until the engine retires it for
    workers of another kind."""
    from .response_cache import CachedClient

    key = (cfg, str(Path(lake_root).resolve()))
    if key not in _SHARED:
        _SHARED[key] = CachedClient(make_client(cfg, Path(lake_root)), Path(lake_root) / "llm_cache")
    client = _SHARED[key]
    client.refresh()
    return client
