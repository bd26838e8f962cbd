"""The OpenAI backend against a real OpenAI-compatible server: llama.cpp's (xllamacpp) over the offline
SmolLM2 GGUF on 127.0.0.1, with a real HTTP proxy in front that injects failures."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pyarrow.compute as pc
import pytest

from sae.config import LLMConfig
from sae.llm import BackendError, ChatRequest, SamplingParams, make_client
from sae.llm.openai import OpenAIClient
from sae.models import BUILTIN_GGUF, builtin_gguf_folder

from .llm_server import FaultyProxy, LlamaServer, free_port

SERVER_KEY = "sk-server-test-key"


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("xllamacpp", reason="the test server is llama.cpp's, from the xllamacpp package")
    llama = LlamaServer(builtin_gguf_folder() / BUILTIN_GGUF, api_key=SERVER_KEY).start()
    yield llama
    llama.stop()


def client_for(base_url: str, **overrides) -> OpenAIClient:
    settings = {"backend": "openai", "base_url": base_url, "api_key": SERVER_KEY, "max_retries": 3,
                "backoff_s": 0.05, "timeout_s": 60.0, "max_in_flight": 2, **overrides}
    client = make_client(LLMConfig(**settings), lake_root=None)
    assert isinstance(client, OpenAIClient)
    return client


def story(max_tokens: int, words: int = 3, top_logprobs: int = 0) -> ChatRequest:
    topic = " ".join(["dragon"] * words)
    return ChatRequest((("system", "You are a storyteller."), ("user", f"Write a long story about a {topic}.")),
                       SamplingParams(max_tokens=max_tokens, top_logprobs=top_logprobs))


def test_completion_usage_logprobs_and_order(server, monkeypatch):
    # The key comes from the environment variable the config names.
    monkeypatch.setenv("SAELAKE_TEST_KEY", SERVER_KEY)
    client = client_for(server.base_url, api_key=None, api_key_env="SAELAKE_TEST_KEY")
    requests = [story(6, words=9, top_logprobs=3), story(2, words=1), story(4, words=5)]
    done = client.complete(requests, progress=True)
    assert all(c.text for c in done)
    # Order: longer topics give longer prompts, and every answer ran to its own max_tokens.
    assert done[1].prompt_tokens < done[2].prompt_tokens < done[0].prompt_tokens
    assert [c.completion_tokens for c in done] == [6, 2, 4]
    assert done[1].logprobs is None
    steps = done[0].logprobs
    assert len(steps) == 6
    for step in steps:
        assert 1 <= len(step.top) <= 3
        assert all(value <= 1e-6 for value in step.top.values())
        assert step.token in step.top and step.top[step.token] == max(step.top.values())  # greedy: the argmax
    assert "".join(step.token for step in steps) == done[0].text


def test_retries_503_and_429_with_retry_after(server):
    failures = [(503, {}), (503, {}), (429, {"Retry-After": "1"})]
    with FaultyProxy(server.base_url, failures) as proxy:
        client = client_for(proxy.base_url, max_retries=3, backoff_s=0.01)
        start = time.monotonic()
        (done,) = client.complete([story(3)])
        elapsed = time.monotonic() - start
    assert done.completion_tokens == 3 and done.text
    assert (proxy.failed, proxy.forwarded) == (3, 1)
    assert elapsed >= 1.0  # Retry-After was honoured rather than the 0.04 s backoff
    assert proxy.authorization == [f"Bearer {SERVER_KEY}"] * 4  # the key went along with every attempt


def test_too_many_failures_give_up(server):
    with FaultyProxy(server.base_url, [(502, {})] * 5) as proxy:
        client = client_for(proxy.base_url, max_retries=2, backoff_s=0.01)
        with pytest.raises(BackendError, match=r"after 3 attempts.*HTTP 502"):
            client.complete([story(2)])
    assert (proxy.failed, proxy.forwarded) == (3, 0)


def test_wrong_key_fails_at_once(server):
    with FaultyProxy(server.base_url) as proxy:
        client = client_for(proxy.base_url, api_key="sk-wrong-key", api_key_env="SAELAKE_TEST_KEY")
        with pytest.raises(BackendError, match="HTTP 401") as caught:
            client.complete([story(2)])
    assert proxy.forwarded == 1  # 4xx other than 429: no retry
    assert "SAELAKE_TEST_KEY" in str(caught.value) and "sk-wrong-key" not in str(caught.value)


def test_survives_a_server_restart(server):
    server.stop()
    restarted = threading.Timer(1.0, server.start)
    restarted.start()
    try:
        client = client_for(server.base_url, max_retries=8, backoff_s=0.2)
        (done,) = client.complete([story(2)])
        assert done.completion_tokens == 2
    finally:
        restarted.join()


def test_unreachable_server_fails_without_leaking_the_key(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = client_for(url, api_key="sk-secret-test", max_retries=2, backoff_s=0.01)
    with pytest.raises(BackendError) as caught:
        client.complete([story(2), story(3)])
    message = str(caught.value)
    assert "after 3 attempts" in message and "127.0.0.1" in message and "llm.base_url" in message
    captured = capsys.readouterr()
    assert "ConnectError" in caplog.text  # the retries were logged ...
    for text in (message, repr(caught.value), repr(client), caplog.text, captured.out, captured.err):
        assert "sk-secret-test" not in text  # ... without the key


def test_needs_a_base_url(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError, match="OPENAI_BASE_URL"):
        make_client(LLMConfig(backend="openai"), lake_root=None)


def test_complete_works_inside_a_running_event_loop(server):
    client = client_for(server.base_url)

    async def caller():
        return client.complete([story(2)])

    (done,) = asyncio.run(caller())
    assert done.completion_tokens == 2


def test_explaining_over_the_server_survives_a_503_and_a_rerun_sends_nothing(server, tmp_path):
    """The explanation stage end to end over HTTP: the proxy fails the first request, the client retries;
    a rerun with the same settings reuses the stored explanations and sends no request at all."""
    from sae.config import ExamplesConfig, ExplainConfig
    from sae.examples.selection import coverage
    from sae.explanations.explainer import explain_partition
    from sae.lake import Lake

    from ..explanations.test_explainer import made_by, train_examples
    from ..scoring.test_scorers import decode

    examples = train_examples()
    cfg = ExplainConfig(latents="first", n_latents=3, n_examples=4, max_tokens=12, batch_latents=2)
    lake = Lake(tmp_path / "lake")
    run = {"lake": lake, "hookpoint": "layers.1", "sae": "x", "examples": examples,
           "coverage": coverage(examples, ExamplesConfig(n_top=3, n_train_quantile=3)), "cfg": cfg,
           "decode": decode, "seed": 0, "provenance": made_by("fp")}
    with FaultyProxy(server.base_url, [(503, {})]) as proxy:
        first = explain_partition(client=client_for(proxy.base_url), **run)
        llm = first.filter(pc.equal(first.column("explainer"), "llm"))
        # One request per answer: a first one per latent, and another wherever an answer copied a worked example.
        asked = sum(llm.column("attempts").to_pylist())
        assert (proxy.failed, proxy.forwarded) == (1, asked) and asked >= 3
        assert llm.num_rows == 3 and all(llm.column("completion").to_pylist())
        assert set(llm.column("backend").to_pylist()) == {"openai"}
        again = explain_partition(client=client_for(proxy.base_url), **run)
        assert (proxy.failed, proxy.forwarded) == (1, asked)  # nothing new went over the wire
    assert again.equals(first)


def test_structured_output_over_the_server(server):
    """response_format json_schema to llama.cpp's server: every reply is the JSON the schema admits (the server
    may space it otherwise than the grammar would) and reads as n answers."""
    from sae.prompts import answer_format, parse_answers

    from .test_output_format import scorer_requests

    requests = scorer_requests(6, seed=2)
    done = client_for(server.base_url).complete(requests)
    for request, completion in zip(requests, done):
        n = len(request.sampling.output_format.slots) // 2
        assert request.sampling.output_format == answer_format(n)
        answers = json.loads(completion.text)["answers"]
        assert len(answers) == n and set(answers) <= {0, 1}
        assert parse_answers(completion.text, n) == [a == 1 for a in answers]
