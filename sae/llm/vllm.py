"""vLLM's offline engine in this process (optional extra, CUDA GPU only): every request of a call in one batch.

vLLM schedules the whole list itself (continuous batching, prefix caching of the shared prompt head), so a
call hands it all its requests at once, each with its own SamplingParams (its own seed). The request
building and the output parsing are plain functions over kwargs and duck-typed outputs, so they are tested
without vLLM.

Models: the built-in `smollm2-135m-instruct` is served from its converted safetensors folder under the lake;
otherwise `model` is a Hub id or a local folder (preferred on GPU), or a .gguf file, which vLLM loads with
the tokenizer converted from the file (slower to start, and GGUF support in vLLM is partial).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import BUILTIN_MODEL, LLMConfig
from ..models import builtin_model_folder
from .base import (BackendError, ChatRequest, ChoiceLogprobs, ChoiceText, Completion, LLMClient, ScoredText,
                   TokenLogprobs, encode_choices)

INSTALL_HINT = "pip install 'saelake[vllm]' (vLLM needs a CUDA GPU; on CPU use llm.backend 'local')"


CHOICE_TOP_K = 20  # log-probs per position that choice_logprobs asks for: vLLM's default max_logprobs


def load_vllm():
    try:
        import vllm
    except ImportError as err:
        raise BackendError(f"the vllm backend needs the vllm package, which is not installed: {INSTALL_HINT}") from err
    return vllm


def engine_kwargs(cfg: LLMConfig, lake_root: Path) -> dict[str, Any]:
    """The arguments of vllm.LLM for this config."""
    if cfg.model == BUILTIN_MODEL:
        model, revision = str(builtin_model_folder(Path(lake_root))), None
    else:
        model, revision = cfg.model, cfg.revision
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": cfg.dtype,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_model_len": cfg.max_model_len,
        "quantization": cfg.quantization,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "seed": 0,  # the engine's default; every request brings its own seed
    }
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def build_sampling_params(request: ChatRequest) -> dict[str, Any]:
    """The keyword arguments of one request's vllm.SamplingParams (a fresh object per request)."""
    sampling = request.sampling
    kwargs: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
    }
    if sampling.top_logprobs > 0:
        kwargs["logprobs"] = sampling.top_logprobs
    if sampling.output_format is not None:
        # The arguments of vllm's StructuredOutputsParams: a regex, which every structured-output backend of
        # vLLM (xgrammar, guidance) reads, and which admits exactly the format's strings.
        kwargs["structured_outputs"] = {"regex": sampling.output_format.regex()}
    return kwargs


def parse_logprobs(token_ids: Sequence[int], steps: Sequence[dict[int, Any]], k: int) -> list[TokenLogprobs]:
    """vLLM's per-step {token id: Logprob} dicts into TokenLogprobs.

    Each dict holds the k most likely tokens plus the sampled one when it ranks lower; `top` keeps the k
    most likely only, as OpenAI's top_logprobs does.
    """
    entries = []
    for token_id, step in zip(token_ids, steps):
        chosen = step.get(token_id)
        ranked = sorted(step.values(), key=lambda lp: lp.logprob, reverse=True)[:k]
        top: dict[str, float] = {}
        for lp in ranked:
            text = lp.decoded_token or ""
            top[text] = max(lp.logprob, top.get(text, float("-inf")))
        entries.append(TokenLogprobs(token=(chosen.decoded_token or "") if chosen is not None else "", top=top))
    return entries


def parse_request_output(output: Any, request: ChatRequest, latency_s: float) -> Completion:
    """A Completion from a vLLM RequestOutput (anything with its shape)."""
    first = output.outputs[0]
    token_ids = list(first.token_ids)
    k = request.sampling.top_logprobs
    logprobs = parse_logprobs(token_ids, first.logprobs, k) if k > 0 and first.logprobs is not None else None
    return Completion(
        text=first.text,
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(token_ids),
        latency_s=latency_s,
        logprobs=logprobs,
    )


class VLLMClient(LLMClient):
    backend = "vllm"
    supports_logprobs = True

    def __init__(self, cfg: LLMConfig, lake_root: Path, *, engine: Any = None,
                 sampling_params: Callable[..., Any] | None = None,
                 structured_outputs: Callable[..., Any] | None = None):
        """`engine` (anything with vllm.LLM's `chat`), `sampling_params` (a SamplingParams factory) and
        `structured_outputs` (a StructuredOutputsParams factory) replace vLLM's own; without them vllm is
        imported and the engine built from the config."""
        self.model = cfg.model
        if engine is None:
            vllm = load_vllm()
            try:
                engine = vllm.LLM(**engine_kwargs(cfg, lake_root))
            except Exception as err:  # vLLM raises many kinds (no GPU, out of memory, unknown architecture)
                raise BackendError(
                    f"vLLM could not start {cfg.model!r}: {type(err).__name__}: {err}. It needs a CUDA GPU; "
                    "lower llm.gpu_memory_utilization or llm.max_model_len if memory ran out"
                ) from err
            sampling_params = sampling_params or vllm.SamplingParams
        if sampling_params is None:
            sampling_params = load_vllm().SamplingParams
        self._engine = engine
        self._sampling_params = sampling_params
        self._structured_outputs = structured_outputs

    def sampling_params(self, request: ChatRequest) -> Any:
        kwargs = build_sampling_params(request)
        if "structured_outputs" in kwargs:
            if self._structured_outputs is None:
                load_vllm()
                from vllm.sampling_params import StructuredOutputsParams

                self._structured_outputs = StructuredOutputsParams
            kwargs["structured_outputs"] = self._structured_outputs(**kwargs["structured_outputs"])
        return self._sampling_params(**kwargs)

    def complete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        if not requests:
            return []
        conversations = [request.as_openai_messages() for request in requests]
        params = [self.sampling_params(request) for request in requests]
        start = time.perf_counter()
        outputs = self._engine.chat(conversations, sampling_params=params, use_tqdm=progress)
        latency = time.perf_counter() - start
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [parse_request_output(output, request, latency) for output, request in zip(outputs, requests)]

    def prompt_logprobs(self, requests: Sequence[ScoredText], progress: bool = False) -> list[list[float]]:
        """vLLM's prompt_logprobs over token-id prompts: the scored token is always among each position's
        entries, so asking for 0 more gives exactly its log-probability."""
        if not requests:
            return []
        tokenizer = self._engine.get_tokenizer()
        prompts, spans = [], []
        for request in requests:
            context = tokenizer(request.context)["input_ids"]
            text = tokenizer(request.text, add_special_tokens=False)["input_ids"]
            prompts.append({"prompt_token_ids": context + text})
            spans.append(len(context))
        params = self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self._engine.generate(prompts, sampling_params=params, use_tqdm=progress)
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [[steps[position][prompt["prompt_token_ids"][position]].logprob
                 for position in range(start, len(prompt["prompt_token_ids"]))]
                for prompt, start, steps in zip(prompts, spans, (output.prompt_logprobs for output in outputs))]

    def choice_logprobs(self, requests: Sequence[ChoiceText], progress: bool = False) -> list[ChoiceLogprobs]:
        """vLLM's prompt_logprobs over the chat prompt and the pieces as token ids. vLLM gives the `CHOICE_TOP_K`
        likeliest tokens at each position (its max_logprobs), not a chosen few: a choice outside them gets the
        log-probability of the least likely one shown, an upper bound. Where the scorer follows the reply's
        format, the digits fill that list."""
        if not requests:
            return []
        tokenizer = self._engine.get_tokenizer()
        encoded = [encode_choices(tokenizer, request) for request in requests]
        params = self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=CHOICE_TOP_K,
                                       logprobs=CHOICE_TOP_K)
        outputs = self._engine.generate([{"prompt_token_ids": e.ids} for e in encoded], sampling_params=params,
                                        use_tqdm=progress)
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        out = []
        for e, output in zip(encoded, outputs):
            rows = []
            for end in e.ends:
                # prompt_logprobs[p] is the distribution of token p; the one after the last piece predicts the
                # token past the prompt, the first generated.
                step = output.prompt_logprobs[end] if end < len(e.ids) else output.outputs[0].logprobs[0]
                floor = min(lp.logprob for lp in step.values())
                rows.append([step[i].logprob if i in step else floor for i in e.choice_ids])
            out.append(ChoiceLogprobs(rows, len(e.ids)))
        return out

    def close(self) -> None:
        self._engine = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
