"""The vLLM backend's request building and output parsing.

vLLM cannot be installed here (it needs a CUDA GPU), so its engine is replaced by a stand-in that records
what it was asked and answers objects shaped like vLLM's RequestOutput / CompletionOutput / Logprob. Where
vllm is importable, the requests are built with the real vllm.SamplingParams.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sae.config import BUILTIN_MODEL, LLMConfig
from sae.llm import BackendError, ChatRequest, SamplingParams, make_client
from sae.llm.vllm import VLLMClient, build_sampling_params, engine_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@dataclass
class Logprob:  # vllm.sequence.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = "length"


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@dataclass
class StandInSamplingParams:
    """Keeps what vllm.SamplingParams would be built with (used when vllm is not installed)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    logprobs: int | None = None


@dataclass
class StandInEngine:
    """Answers every conversation with `n` tokens "t0 t1 ...", giving the top k+1 logprobs when asked."""

    calls: list[dict] = field(default_factory=list)

    def chat(self, conversations, sampling_params=None, use_tqdm=True):
        self.calls.append({"conversations": conversations, "sampling_params": sampling_params, "use_tqdm": use_tqdm})
        outputs = []
        for i, (messages, params) in enumerate(zip(conversations, sampling_params)):
            n = params.max_tokens
            token_ids = [100 + j for j in range(n)]
            logprobs = None
            if params.logprobs:
                # The k most likely, plus the sampled token ranked below them (as vLLM returns it).
                logprobs = [
                    {
                        **{900 + r: Logprob(-0.1 * (r + 1), r + 1, f"alt{r}") for r in range(params.logprobs)},
                        100 + j: Logprob(-5.0, params.logprobs + 3, f"t{j}"),
                    }
                    for j in range(n)
                ]
            prompt_ids = list(range(len(" ".join(m["content"] for m in messages).split())))  # a token per word
            text = " ".join(f"t{j}" for j in range(n))
            outputs.append(RequestOutput(str(i), prompt_ids, [CompletionOutput(0, text, token_ids, logprobs)]))
        return outputs


def factory():
    if HAS_VLLM:
        import vllm

        return vllm.SamplingParams
    return StandInSamplingParams


def request(words: int, max_tokens: int, seed: int, top_logprobs: int = 0, temperature: float = 0.0) -> ChatRequest:
    sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed, top_logprobs=top_logprobs)
    return ChatRequest((("system", "Explain."), ("user", " ".join(["word"] * words))), sampling)


def test_sampling_params_per_request():
    greedy = build_sampling_params(request(3, 16, seed=1))
    assert greedy == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "seed": 1}
    sampled = build_sampling_params(request(3, 32, seed=2, top_logprobs=5, temperature=0.7))
    assert sampled == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 32, "seed": 2, "logprobs": 5}
    params = factory()(**sampled)
    assert (params.temperature, params.max_tokens, params.seed, params.logprobs) == (0.7, 32, 2, 5)


def test_one_batched_call_with_parsed_outputs():
    engine = StandInEngine()
    client = VLLMClient(LLMConfig(backend="vllm"), Path("unused"), engine=engine, sampling_params=factory())
    requests = [request(5, 3, seed=11, top_logprobs=2), request(2, 4, seed=12), request(9, 2, seed=13, temperature=1)]
    done = client.complete(requests, progress=True)

    (call,) = engine.calls  # every request of the call in one engine call
    assert call["use_tqdm"] is True
    assert call["conversations"][0] == [{"role": "system", "content": "Explain."},
                                        {"role": "user", "content": "word word word word word"}]
    params = call["sampling_params"]
    assert len({id(p) for p in params}) == 3  # a fresh SamplingParams per request
    assert [p.seed for p in params] == [11, 12, 13] and [p.max_tokens for p in params] == [3, 4, 2]
    assert [p.temperature for p in params] == [0.0, 0.0, 1.0]

    assert [c.text for c in done] == ["t0 t1 t2", "t0 t1 t2 t3", "t0 t1"]
    assert [c.completion_tokens for c in done] == [3, 4, 2]
    assert [c.prompt_tokens for c in done] == [6, 3, 10]
    assert done[1].logprobs is None and done[2].logprobs is None
    steps = done[0].logprobs
    assert [s.token for s in steps] == ["t0", "t1", "t2"]
    # Only the k most likely stay in `top`: the sampled token ranked below them is left out.
    assert steps[0].top == pytest.approx({"alt0": -0.1, "alt1": -0.2})


def test_builtin_model_is_the_converted_folder(tmp_path, converted_model):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / BUILTIN_MODEL).symlink_to(converted_model, target_is_directory=True)
    kwargs = engine_kwargs(LLMConfig(backend="vllm", max_model_len=2048, dtype="bfloat16"), tmp_path)
    assert Path(kwargs["model"]) == tmp_path / "models" / BUILTIN_MODEL
    assert (kwargs["max_model_len"], kwargs["dtype"], kwargs["enable_prefix_caching"]) == (2048, "bfloat16", True)
    hub = engine_kwargs(LLMConfig(backend="vllm", model="org/model", revision="main", quantization="awq"), tmp_path)
    assert (hub["model"], hub["revision"], hub["quantization"]) == ("org/model", "main", "awq")


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(BackendError, match=r"pip install 'saelake\[vllm\]'.*CUDA GPU"):
        make_client(LLMConfig(backend="vllm"), Path("unused"))


def test_constrained_requests_carry_structured_outputs():
    from sae.prompts import answer_format

    @dataclass
    class StructuredOutputs:  # vllm.sampling_params.StructuredOutputsParams
        regex: str

    @dataclass
    class Params(StandInSamplingParams):
        structured_outputs: StructuredOutputs | None = None

    engine = StandInEngine()
    client = VLLMClient(LLMConfig(backend="vllm"), Path("unused"), engine=engine, sampling_params=Params,
                        structured_outputs=StructuredOutputs)
    fmt = answer_format(3)
    constrained = ChatRequest((("user", "judge"),), SamplingParams(max_tokens=4, output_format=fmt))
    client.complete([constrained, request(2, 4, seed=1)])
    first, second = engine.calls[0]["sampling_params"]
    assert first.structured_outputs == StructuredOutputs(fmt.regex()) and second.structured_outputs is None


class WordTokenizer:
    """An id per word (its length + 100); a BOS id 1 first, as many tokenizers add; a chat template that joins
    the messages' contents."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [100 + len(w) for w in text.split()]}

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        assert add_generation_prompt and not tokenize
        return " ".join(m["content"] for m in messages) + " ASSISTANT"


@dataclass
class PromptParams(StandInSamplingParams):
    prompt_logprobs: int | None = None


@dataclass
class PromptOutput(RequestOutput):
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


class PromptEngine(StandInEngine):
    """Position p holds its own token at log-prob -p and a likelier alternative (id 7); `extra` adds more ids."""

    extra: dict[int, float] = {}

    def get_tokenizer(self):
        return WordTokenizer()

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append({"prompts": prompts, "sampling_params": sampling_params})
        return [PromptOutput(str(i), prompt["prompt_token_ids"],
                             [CompletionOutput(0, "x", [7], [{101: Logprob(-0.5), 102: Logprob(-0.7)}])],
                             [None] + [{token: Logprob(-float(p)), 7: Logprob(-0.01),
                                        **{t: Logprob(v - p) for t, v in self.extra.items()}}
                                       for p, token in enumerate(prompt["prompt_token_ids"]) if p > 0])
                for i, prompt in enumerate(prompts)]


def test_prompt_logprobs_are_read_at_the_texts_tokens():
    from sae.llm import ScoredText

    engine = PromptEngine()
    client = VLLMClient(LLMConfig(backend="vllm"), Path("unused"), engine=engine, sampling_params=PromptParams)
    done = client.prompt_logprobs([ScoredText("Text:", "one three"), ScoredText("a b c", "x")])
    # "Text:" is [BOS, id], so the text's tokens sit at positions 2 and 3; after "a b c" (4 tokens) "x" is at 4.
    assert done == [[-2.0, -3.0], [-4.0]]
    (call,) = engine.calls
    assert call["prompts"][0] == {"prompt_token_ids": [1, 105, 103, 105]}
    params = call["sampling_params"]
    assert (params.prompt_logprobs, params.max_tokens, params.temperature) == (0, 1, 0.0)


def test_choice_logprobs_are_read_after_each_piece():
    """After a piece inside the prompt, from that position's prompt log-probs (a choice outside the top ones at
    the least likely one's value); after the last piece, from the first generated token's log-probs."""
    from sae.llm import ChoiceText

    engine = PromptEngine()
    engine.extra = {101: -1.0}  # "a" is among each position's top tokens, "bb" (102) never
    client = VLLMClient(LLMConfig(backend="vllm"), Path("unused"), engine=engine, sampling_params=PromptParams)
    (done,) = client.choice_logprobs([ChoiceText((("user", "judge this"),), ("one two", "three"), ("a", "bb"))])
    # "judge this ASSISTANT" is 3 tokens, "one two" 2 more: the choice after it is token 5, at log-prob -5 - 1.
    assert done.logprobs == [[-6.0, -6.0], [-0.5, -0.7]] and done.prompt_tokens == 6
    (call,) = engine.calls
    assert call["prompts"] == [{"prompt_token_ids": [105, 104, 109, 103, 103, 105]}]
    params = call["sampling_params"]
    assert (params.prompt_logprobs, params.logprobs, params.max_tokens, params.temperature) == (20, 20, 1, 0.0)
    with pytest.raises(BackendError, match="must be one token"):
        client.choice_logprobs([ChoiceText((("user", "x"),), ("y",), ("two words",))])
