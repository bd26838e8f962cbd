"""The explanations stage as plain functions over a config and a lake: the LLM and the explained latents."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import LLMConfig, PipelineConfig
from ..corpus.stage import contexts_fingerprint
from ..lake import lake_for
from ..llm.response_cache import CachedClient
from ..models import load_tokenizer


def token_decoder(cfg: PipelineConfig):
    """Token ids -> their texts one by one (memoised), as the prompts show them."""
    tokenizer = load_tokenizer(cfg.model, lake_for(cfg).root)
    pieces: dict[int, str] = {}

    def decode(ids) -> list[str]:
        out = []
        for i in ids:
            if i not in pieces:
                pieces[i] = tokenizer.decode([i])
            out.append(pieces[i])
        return out

    return decode


def open_llm(cfg: PipelineConfig, llm: LLMConfig) -> CachedClient:
    """The configured LLM backend behind the lake's response cache."""
    from ..llm import make_client

    lake = lake_for(cfg)
    return CachedClient(make_client(llm, lake.root), lake.root / "llm_cache")


def explain_fingerprint(cfg: PipelineConfig, name: str) -> str:
    """Everything that shapes a partition's explanations: the data behind the examples, the SAE, the LLM,
    the prompt and the sampling. Throughput settings (batch sizes, URLs, keys) are left out."""
    from ..prompts import explainer_version

    explain = cfg.explain
    shaping = {"llm": explain.llm.identity(), "prompt": explainer_version(explain.prompt),
               "n_examples": explain.n_examples, "max_tokens": explain.max_tokens,
               "temperature": explain.temperature, "sae": repr(cfg.sae(name))}
    digest = hashlib.sha256(repr(sorted(shaping.items())).encode()).hexdigest()[:16]
    return f"{contexts_fingerprint(cfg)}/{cfg.fingerprint('examples', 'seed')}/{digest}"


def explain_latents(cfg: PipelineConfig, hookpoint: str, name: str, client, progress: bool = True) -> pa.Table:
    from .explainer import explain_partition

    lake = lake_for(cfg)
    examples, covered = lake.files("examples", hookpoint, name), lake.files("example_coverage", hookpoint, name)
    if not examples or not covered:
        raise FileNotFoundError(f"no examples for {hookpoint}|{name}: materialize `examples` first")
    return explain_partition(lake, hookpoint, name, pq.read_table(examples[0]), pq.read_table(covered[0]),
                             cfg.explain, client, token_decoder(cfg), cfg.seed, explain_fingerprint(cfg, name),
                             progress=progress)


def preview_explanations(cfg: PipelineConfig, hookpoint: str, name: str, table: pa.Table, n: int = 8) -> list[dict]:
    """The first explained latents with their explanation and strongest example, active tokens <<marked>>."""
    from .explainer import top_window_text

    examples = pq.read_table(lake_for(cfg).files("examples", hookpoint, name)[0])
    decode = token_decoder(cfg)
    return [{"layer": hookpoint, "sae": name, "latent": row["latent"],
             "explanation": row["explanation"] if row["parsed"] else f"(unparsed) {row['completion'][:80]}",
             "top_example": top_window_text(examples, row["latent"], decode)}
            for row in table.slice(0, n).to_pylist()]
