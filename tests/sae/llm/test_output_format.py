"""Constrained decoding of scorer answers: the format itself, how each backend is asked for it, and what the
real SmolLM2 answers under it, through llama.cpp (the shipped GGUF) and transformers (the converted model)."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from sae.config import CorpusConfig, LLMConfig
from sae.corpus.documents import iter_documents
from sae.llm import ChatRequest, SamplingParams, make_client
from sae.llm.openai import build_payload
from sae.llm.vllm import build_sampling_params
from sae.prompts import answer_format, format_answers, parse_answers, scorer_messages
from sae.scoring.scorers import TOP_LOGPROBS, yes_probabilities

EXPLANATIONS = ["words for sea birds", "the relative pronouns who, whose, whom and which", "names of months",
                "digits inside dates", "the suffix \"ing\" completing a verb", "mentions of the Trojan War"]


def test_the_format_admits_exactly_the_n_answer_lists():
    fmt = answer_format(3)
    admitted = [format_answers(bits) for bits in itertools.product([False, True], repeat=3)]
    assert all(fmt.matches(text) for text in admitted)
    assert all(re.fullmatch(fmt.regex(), text) for text in admitted)  # vLLM's form of the same strings
    for wrong in ('{"answers": [1, 0]}', '{"answers": [1, 0, 1, 1]}', '{"answers": [1, 2, 0]}',
                  '{"answers":[1, 0, 1]}', 'Answer: [1, 0, 1]', '{"answers": [1, 0, 1]}\n'):
        assert not fmt.matches(wrong) and not re.fullmatch(fmt.regex(), wrong)
    assert fmt.max_length == len(admitted[0])
    assert fmt.gbnf() == 'root ::= ("{\\"answers\\": [") ("0" | "1") (", ") ("0" | "1") (", ") ("0" | "1") ("]}")'
    schema = json.loads(fmt.json_schema)["properties"]["answers"]
    assert (schema["minItems"], schema["maxItems"], schema["items"]["enum"]) == (3, 3, [0, 1])
    assert parse_answers(admitted[5], 3) == [True, False, True]
    # The worked example of the prompt answers in the format too, for any batch size.
    for n in (1, 4, 9):
        assert answer_format(n).matches(scorer_messages("fuzzing", "x", ["a"] * n)[2][1])


def test_each_remote_backend_is_asked_for_the_constraint():
    fmt = answer_format(2)
    request = ChatRequest((("user", "hi"),), SamplingParams(max_tokens=20, output_format=fmt))
    payload = build_payload("m", request)
    assert payload["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answers_2", "strict": True, "schema": json.loads(fmt.json_schema)}}
    assert build_sampling_params(request)["structured_outputs"] == {"regex": fmt.regex()}
    plain = ChatRequest((("user", "hi"),), SamplingParams(max_tokens=20))
    assert "response_format" not in build_payload("m", plain) and "structured_outputs" not in build_sampling_params(plain)


def test_the_cache_key_covers_the_constraint_and_keeps_old_keys():
    from sae.llm import request_key

    messages = (("user", "hi"),)
    plain, two, three = (ChatRequest(messages, SamplingParams(output_format=f))
                         for f in (None, answer_format(2), answer_format(3)))
    assert len({request_key("m", r) for r in (plain, two, three)}) == 3
    assert "output_format" not in plain.sampling.as_dict()  # requests without one keep the keys they had


def scorer_requests(n_prompts: int, seed: int = 0) -> list[ChatRequest]:
    """Real scorer prompts: excerpts cut from the built-in Wikipedia sample, detection and fuzzing (a word
    of each excerpt marked), 1 to 8 excerpts per prompt."""
    words = " ".join(itertools.islice(iter_documents(CorpusConfig()), 20)).split()
    rng = random.Random(seed)
    requests = []
    for i in range(n_prompts):
        n = 1 + i % 8
        excerpts = []
        for _ in range(n):
            start = rng.randrange(len(words) - 16)
            piece = words[start:start + 16]
            if i % 2:
                mark = rng.randrange(16)
                piece[mark] = f"<<{piece[mark]}>>"
            excerpts.append(" ".join(piece))
        kind = "fuzzing" if i % 2 else "detection"
        fmt = answer_format(n)
        sampling = SamplingParams(max_tokens=fmt.max_length + 1, top_logprobs=TOP_LOGPROBS, output_format=fmt)
        requests.append(ChatRequest(scorer_messages(kind, EXPLANATIONS[i % len(EXPLANATIONS)], excerpts), sampling))
    return requests


def check_every_answer_reads(requests, completions, min_with_probabilities: float):
    with_probabilities = 0
    for request, completion in zip(requests, completions):
        fmt = request.sampling.output_format
        n = len(fmt.slots) // 2
        assert fmt.matches(completion.text), completion.text
        assert parse_answers(completion.text, n) is not None
        probs = yes_probabilities(completion.logprobs, n)
        if probs is not None:
            assert len(probs) == n and all(0.0 <= p <= 1.0 for p in probs)
            # The greedy digit is the likelier of the two the format allows.
            answers = parse_answers(completion.text, n)
            assert all((p >= 0.5) == a or abs(p - 0.5) < 1e-6 for p, a in zip(probs, answers))
            with_probabilities += 1
    assert with_probabilities >= min_with_probabilities * len(requests)


def test_llamacpp_answers_always_parse_and_carry_digit_probabilities():
    pytest.importorskip("xllamacpp")
    requests = scorer_requests(24)
    client = make_client(LLMConfig(runtime="llamacpp", device="cpu", batch_size=2), lake_root=Path("unused"))
    try:
        done = client.complete(requests)
    finally:
        client.close()
    check_every_answer_reads(requests, done, min_with_probabilities=0.9)


def test_transformers_answers_always_parse(model_lake):
    requests = scorer_requests(4, seed=1)
    client = make_client(LLMConfig(runtime="transformers", device="cpu", batch_size=4), model_lake)
    try:
        done = client.complete(requests)
    finally:
        client.close()
    check_every_answer_reads(requests, done, min_with_probabilities=0.75)
