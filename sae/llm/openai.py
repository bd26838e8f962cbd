"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM's or llama.cpp's server, ...), asynchronously.

At most `max_in_flight` requests are in flight; 429, 5xx, timeouts and connection errors are retried with
exponential backoff and jitter (honouring Retry-After), other 4xx fail at once. The API key only ever goes
into the Authorization header: it is kept out of reprs, logs and error messages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Sequence

import httpx
from tqdm.auto import tqdm

from ..config import LLMConfig
from .base import BackendError, ChatRequest, Completion, LLMClient, TokenLogprobs

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def build_payload(model: str, request: ChatRequest) -> dict:
    """The JSON body of one chat-completions request, built fresh from the request's own sampling."""
    sampling = request.sampling
    payload = {
        "model": model,
        "messages": request.as_openai_messages(),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
    }
    if sampling.top_logprobs > 0:
        payload["logprobs"] = True
        payload["top_logprobs"] = sampling.top_logprobs
    if sampling.output_format is not None:
        # Structured outputs: the server decodes only replies that fit the schema.
        payload["response_format"] = {"type": "json_schema", "json_schema": {
            "name": sampling.output_format.name, "strict": True,
            "schema": json.loads(sampling.output_format.json_schema)}}
    return payload


def parse_logprobs(choice: dict) -> list[TokenLogprobs] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    entries = []
    for item in content:
        top: dict[str, float] = {}
        for alt in item.get("top_logprobs") or ():
            # Two token ids may decode to the same text; keep the likelier.
            top[alt["token"]] = max(alt["logprob"], top.get(alt["token"], float("-inf")))
        entries.append(TokenLogprobs(token=item["token"], top=top))
    return entries


def parse_chat_response(body: dict, latency_s: float, want_logprobs: bool) -> Completion:
    """A Completion from an OpenAI-style chat-completions response body."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"the chat-completions response has no choices: {str(body)[:300]}") from None
    usage = body.get("usage") or {}
    return Completion(
        text=(choice.get("message") or {}).get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        latency_s=latency_s,
        logprobs=parse_logprobs(choice) if want_logprobs else None,
    )


def safe_url(url: str) -> str:
    """The URL without credentials or query string, fit for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:500]
    except ValueError:
        return response.text[:500]


def run_sync(coro):
    """Run a coroutine to completion from synchronous code, also when the calling thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A running loop (a notebook, an async caller) cannot be blocked on from its own thread: use another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIClient(LLMClient):
    backend = "openai"
    supports_logprobs = True

    def __init__(self, cfg: LLMConfig):
        base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise BackendError(
                "the openai backend needs the server's base URL: set `llm.base_url` in the config or the "
                "environment variable OPENAI_BASE_URL (e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1)"
            )
        if cfg.max_in_flight < 1 or cfg.max_retries < 0 or cfg.timeout_s <= 0 or cfg.backoff_s < 0:
            raise BackendError("llm.max_in_flight and llm.timeout_s must be positive, max_retries and backoff_s >= 0")
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise BackendError(f"llm.base_url {safe_url(base_url)!r} must start with http:// or https://")
        self.cfg = cfg
        self.model = cfg.model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = cfg.api_key or os.environ.get(cfg.api_key_env) or None

    def __repr__(self) -> str:
        return f"OpenAIClient(model={self.model!r}, url={safe_url(self.url)!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def complete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        if not requests:
            return []
        return run_sync(self.acomplete(requests, progress))

    async def acomplete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        """The asynchronous form of complete(), for callers that already run an event loop."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.cfg.max_in_flight, max_keepalive_connections=self.cfg.max_in_flight)
        gate = asyncio.Semaphore(self.cfg.max_in_flight)
        with tqdm(total=len(requests), desc=f"openai {self.model}", unit="req", disable=not progress) as bar:
            # A client per call: an AsyncClient belongs to the event loop it was first used on.
            async with httpx.AsyncClient(headers=headers, limits=limits, timeout=self.cfg.timeout_s) as client:

                async def one(request: ChatRequest) -> Completion:
                    async with gate:
                        completion = await self._post(client, request)
                    bar.update(1)
                    return completion

                tasks = [asyncio.ensure_future(one(request)) for request in requests]
                try:
                    return list(await asyncio.gather(*tasks))
                except BaseException:
                    for task in tasks:  # one request failed for good: stop the others
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise

    async def _post(self, client: httpx.AsyncClient, request: ChatRequest) -> Completion:
        payload = build_payload(self.model, request)
        attempts = self.cfg.max_retries + 1
        start = time.perf_counter()
        where = safe_url(self.url)
        for attempt in range(1, attempts + 1):
            wait = None
            try:
                response = await client.post(self.url, json=payload)
            except httpx.TransportError as err:  # connection refused or reset, timeouts, protocol errors
                failure = f"{type(err).__name__}: {self._scrub(str(err)) or 'no detail'}"
            else:
                if response.status_code == 200:
                    try:
                        body = response.json()
                    except ValueError:
                        raise BackendError(
                            f"POST {where} answered 200 with a body that is not JSON: {response.text[:200]!r}; "
                            "check that llm.base_url points at the API (it usually ends in /v1)"
                        ) from None
                    return parse_chat_response(body, time.perf_counter() - start, request.sampling.top_logprobs > 0)
                message = self._scrub(server_message(response))
                failure = f"HTTP {response.status_code}: {message}"
                if response.status_code not in RETRY_STATUSES:
                    raise BackendError(f"POST {where} failed with {failure}; {self._hint(response.status_code)}")
                wait = retry_after_s(response)
            if attempt == attempts:
                break
            backoff = self.cfg.backoff_s * 2 ** (attempt - 1)
            delay = (wait if wait is not None else backoff) + random.uniform(0, backoff / 2)
            log.warning("POST %s: %s (attempt %d of %d), retrying in %.1f s", where, failure, attempt, attempts, delay)
            await asyncio.sleep(delay)
        raise BackendError(
            f"POST {where} failed after {attempts} attempts; last error: {failure}. Check that the server is up and "
            "reachable at llm.base_url, or allow more time with llm.max_retries, llm.backoff_s and llm.timeout_s"
        )

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            return f"check the API key (llm.api_key, or the environment variable {self.cfg.api_key_env})"
        if status == 404:
            return "check llm.base_url (most servers expect it to end in /v1) and llm.model"
        return "the server rejected the request: check llm.model and the sampling settings"
