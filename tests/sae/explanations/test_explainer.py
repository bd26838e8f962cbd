"""The explanation stage with the real offline SmolLM2: every column stored, latents chosen as configured,
a crash mid-partition resumed without asking again, and the response cache making reruns free."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from sae.config import ExamplesConfig, ExplainConfig, LLMConfig
from sae.examples.selection import coverage
from sae.explanations.explainer import SCHEMA, choose_latents, explain_partition
from sae.lake import Lake
from sae.lineage import Provenance
from sae.llm import make_client
from sae.llm.response_cache import CachedClient

from ..scoring.test_scorers import WORDS, decode

# One attempt per latent: a crash after n calls is then a crash after n batches.
CFG = ExplainConfig(llm=LLMConfig(backend="local", batch_size=4), latents="first", n_latents=5, n_examples=4,
                    max_tokens=12, batch_latents=2, max_attempts=1)


def train_examples() -> pa.Table:
    """Seven latents with six train windows each over the toy vocabulary; the peak always at position 5."""
    rng = np.random.default_rng(0)
    rows = []
    for latent in range(7):
        for i in range(6):
            ids = rng.integers(1, len(WORDS), 10).tolist()
            acts = [0.0] * 10
            acts[5] = float(6 - i)
            rows.append({"latent": latent, "split": "train", "kind": "top" if i < 3 else "quantile", "bin": i % 2,
                         "ctx_id": 10 * latent + i, "start": 0, "peak_act": acts[5], "tokens": ids, "acts": acts})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def examples():
    return train_examples()


@pytest.fixture(scope="module")
def client(tmp_path_factory, converted_model):
    lake = tmp_path_factory.mktemp("explain-lake")
    (lake / "models").mkdir()
    (lake / "models" / "smollm2-135m-instruct").symlink_to(converted_model, target_is_directory=True)
    with make_client(CFG.llm, lake) as backend:
        yield backend


class CrashAfter:
    """The real backend, made to fail on its n-th call: a crash in the middle of a partition."""

    def __init__(self, inner, calls: int):
        self.inner, self.calls = inner, calls
        self.backend, self.model, self.supports_logprobs = inner.backend, inner.model, inner.supports_logprobs

    def complete(self, requests, progress=False):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("killed")
        return self.inner.complete(requests, progress)

    def close(self):
        pass


def made_by(fingerprint: str) -> Provenance:
    """The provenance of a partition made with settings whose fingerprint is `fingerprint`."""
    return Provenance("explanations", "layers.1|x", fingerprint, "1", {}, {})


def test_a_crash_loses_at_most_one_batch_and_a_rerun_asks_only_for_the_rest(tmp_path, examples, client):
    lake = Lake(tmp_path / "lake")
    covered = coverage(examples, ExamplesConfig(n_top=3, n_train_quantile=3))
    run = {"lake": lake, "hookpoint": "layers.1", "sae": "x", "examples": examples, "coverage": covered,
           "cfg": CFG, "decode": decode, "seed": 0, "provenance": made_by("fp-1")}
    cache_dir = tmp_path / "lake" / "llm_cache"
    with pytest.raises(RuntimeError, match="killed"):
        explain_partition(client=CachedClient(CrashAfter(client, calls=2), cache_dir), **run)
    assert not lake.files("explanations")  # nothing half-written is visible
    staged = sorted(lake.staging("explanations", "layers.1", "x").glob("part-*.parquet"))
    assert len(staged) == 2  # two batches of two latents survived

    resumed = CachedClient(client, tmp_path / "other-cache")  # an empty cache: only the staging helps
    table = explain_partition(client=resumed, **run)
    assert resumed.sent == 1  # only the fifth latent was asked for
    assert table.schema.remove_metadata() == SCHEMA and table.column("latent").to_pylist() == [0, 1, 2, 3, 4]
    row = table.to_pylist()[0]
    assert row["completion"] and row["backend"] == "local" and row["prompt_version"] and row["explainer"] == "llm"
    assert len(row["examples_used"]) == CFG.n_examples and row["prompt_tokens"] > 100
    assert row["completion_tokens"] > 0 and row["latency_s"] > 0 and row["created_at"] is not None
    assert row["parsed"] == (row["explanation"] is not None)

    # Committed: a rerun reuses the rows; other settings (another fingerprint) ask again, from the cache.
    again = CachedClient(client, cache_dir)
    assert explain_partition(client=again, **run).equals(table) and again.sent == 0
    fresh = CachedClient(client, cache_dir)
    rerun = explain_partition(client=fresh, **{**run, "provenance": made_by("fp-2")})
    assert fresh.sent == 1 and sum(rerun.column("cached").to_pylist()) == 4  # the first four came from the cache
    assert rerun.column("completion").to_pylist()[:4] == table.column("completion").to_pylist()[:4]


def test_latent_choice_follows_the_config(examples):
    covered = pa.table({"latent": [0, 1, 2, 3, 4, 5], "n_train": [9, 9, 0, 9, 2, 9],
                        "complete": [True, True, False, True, False, True]})
    assert choose_latents(covered, dataclasses.replace(CFG, latents="all"), 0) == [0, 1, 3, 4, 5]
    assert choose_latents(covered, dataclasses.replace(CFG, latents="first", n_latents=3), 0) == [0, 1, 3]
    sample = choose_latents(covered, dataclasses.replace(CFG, latents="sample", n_latents=3), 0)
    assert len(sample) == 3 and set(sample) <= {0, 1, 3, 5}  # complete latents first
    assert sample == choose_latents(covered, dataclasses.replace(CFG, latents="sample", n_latents=3), 0)
    assert choose_latents(covered, dataclasses.replace(CFG, latents="list", latent_ids=(5, 1)), 0) == [1, 5]
    with pytest.raises(ValueError, match=r"\[2\]"):
        choose_latents(covered, dataclasses.replace(CFG, latents="list", latent_ids=(2,)), 0)
