"""The local backend with the real offline SmolLM2-135M-Instruct: transformers over the converted safetensors
folder, and llama.cpp (xllamacpp) over the shipped GGUF."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sae.config import BUILTIN_MODEL, ConfigError, LLMConfig
from sae.llm import BackendError, ChatRequest, SamplingParams, make_client
from sae.llm.local import LocalClient, choose_runtime

QUESTIONS = [
    "Name the largest planet of the solar system and say in two sentences why it is so large.",
    "Hi!",
    "What is the capital of France?",
]


def ask(question: str, max_tokens: int = 8, top_logprobs: int = 3, **sampling) -> ChatRequest:
    messages = (("system", "You answer briefly."), ("user", question))
    return ChatRequest(messages, SamplingParams(max_tokens=max_tokens, top_logprobs=top_logprobs, **sampling))


@pytest.fixture(scope="module")
def transformers_client(model_lake):
    client = make_client(LLMConfig(runtime="transformers", device="cpu", batch_size=3), model_lake)
    yield client
    client.close()


def check_logprobs(completion, k: int):
    assert completion.logprobs is not None and len(completion.logprobs) == completion.completion_tokens
    for step in completion.logprobs:
        assert 1 <= len(step.top) <= k
        assert all(value <= 1e-5 for value in step.top.values())
        assert sum(math.exp(value) for value in step.top.values()) <= 1 + 1e-4
        assert step.token in step.top and step.top[step.token] == max(step.top.values())  # greedy: the argmax


def test_transformers_batched_matches_one_at_a_time(transformers_client):
    client = transformers_client
    assert isinstance(client, LocalClient) and client.runtime == "transformers" and client.model == BUILTIN_MODEL
    requests = [ask(q, max_tokens=n) for q, n in zip(QUESTIONS, (10, 6, 8))]
    batched = client.complete(requests, progress=True)
    single = [client.complete([request])[0] for request in requests]
    for b, s, request in zip(batched, single, requests):
        assert b.text.strip()
        assert 0 < b.completion_tokens <= request.sampling.max_tokens
        check_logprobs(b, 3)
        # Order kept: each answer has its own request's prompt; greedy decoding agrees at least at the start
        # (padding may change the last float bits, which can flip a late near-tie).
        assert b.prompt_tokens == s.prompt_tokens
        assert [t.token for t in b.logprobs[:3]] == [t.token for t in s.logprobs[:3]]
    assert batched[1].prompt_tokens < batched[2].prompt_tokens < batched[0].prompt_tokens


def test_transformers_seeded_sampling_does_not_depend_on_the_batch(transformers_client):
    sampled = ask(QUESTIONS[0], max_tokens=12, top_logprobs=0, temperature=1.0, top_p=0.95, seed=7)
    together = transformers_client.complete([sampled, ask(QUESTIONS[1]), sampled])
    alone = transformers_client.complete([sampled])[0]
    assert together[0].text == together[2].text == alone.text
    assert together[0].logprobs is None


def test_llamacpp_runtime():
    pytest.importorskip("xllamacpp")
    client = make_client(LLMConfig(runtime="llamacpp", device="cpu", batch_size=2), lake_root=Path("unused"))
    try:
        assert client.runtime == "llamacpp" and client.model.startswith(BUILTIN_MODEL + "@llamacpp")
        requests = [ask(q, max_tokens=n) for q, n in zip(QUESTIONS, (10, 6, 8))]
        done = client.complete(requests, progress=True)
        for completion, request in zip(done, requests):
            assert completion.text.strip()
            assert 0 < completion.completion_tokens <= request.sampling.max_tokens
            check_logprobs(completion, 3)
        assert done[1].prompt_tokens < done[2].prompt_tokens < done[0].prompt_tokens
        sampled = ask(QUESTIONS[0], max_tokens=12, top_logprobs=0, temperature=1.0, seed=7)
        assert client.complete([sampled])[0].text == client.complete([sampled])[0].text
        with pytest.raises(BackendError, match="max_model_len"):
            client.complete([ask("word " * 5000)])
    finally:
        client.close()


def test_runtime_choice(tmp_path):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    has_llamacpp = importlib.util.find_spec("xllamacpp") is not None
    # The built-in ships as a GGUF: llama.cpp on CPU (faster on the shared-prefix prompts), transformers on GPU.
    assert choose_runtime(LLMConfig(runtime="auto"), cpu) == ("llamacpp" if has_llamacpp else "transformers")
    assert choose_runtime(LLMConfig(runtime="auto"), gpu) == "transformers"
    for device in (cpu, gpu):
        assert choose_runtime(LLMConfig(runtime="auto", model="some/hub-model"), device) == "transformers"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert choose_runtime(LLMConfig(model=str(gguf)), cpu) == ("llamacpp" if has_llamacpp else "transformers")
    assert choose_runtime(LLMConfig(model=str(gguf)), gpu) == "transformers"
    with pytest.raises(ConfigError, match="llm.runtime 'onnx' is unknown; valid: auto, transformers, llamacpp"):
        choose_runtime(LLMConfig(runtime="onnx"), cpu)
    with pytest.raises(BackendError, match="GGUF"):
        choose_runtime(LLMConfig(runtime="llamacpp", model="some/hub-model"), cpu)


def test_unknown_backend():
    with pytest.raises(BackendError, match="local, openai, vllm"):
        make_client(LLMConfig(backend="ollama"), Path("unused"))
