"""What every LLM backend speaks: chat requests with per-request sampling, and completions with usage.

A backend turns a list of requests into a list of completions in the same order. Batching is the
backend's business (vLLM batches all of them, the OpenAI client keeps a bounded number in flight, the
local runtime groups them by its batch size); callers hand over bounded batches so a crash loses little.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass


class BackendError(RuntimeError):
    """A backend could not be built or failed for good (after its retries); the message says what to do."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0
    # > 0: return this many most likely tokens (with log-probabilities) at every generated position.
    top_logprobs: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: system, user, assistant, ...
    sampling: SamplingParams

    def as_openai_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class TokenLogprobs:
    token: str  # the generated token's text
    top: dict[str, float]  # the most likely tokens at this position (text -> log-probability)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from sending the request (or its batch) to its completion
    # One entry per generated token when the request asked for top_logprobs and the backend gives them.
    logprobs: list[TokenLogprobs] | None = None
    cached: bool = False  # served from the response cache, no model call

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Completion:
        data = json.loads(text)
        if data.get("logprobs") is not None:
            data["logprobs"] = [TokenLogprobs(**entry) for entry in data["logprobs"]]
        return cls(**data)


class LLMClient(abc.ABC):
    backend: str  # local | openai | vllm
    model: str  # the model's name as the backend knows it; part of every cache key
    supports_logprobs: bool = False

    @abc.abstractmethod
    def complete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        """Complete every request; the result is in the order of `requests`."""

    def close(self) -> None:
        """Release the engine, server connection or model weights."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_key(model: str, request: ChatRequest) -> str:
    """The response cache's key: the same model, messages and sampling give the same completion."""
    payload = json.dumps([model, request.messages, request.sampling.as_dict()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
