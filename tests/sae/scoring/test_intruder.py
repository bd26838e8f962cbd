"""The intruder scorer: an oracle finds every real intruder, and on the control (no intruder at all) any judge,
the oracle or one biased to a position, scores chance, 1 / (k + 1); replies are constrained to one number."""

import re

import numpy as np
import pyarrow as pa
import pytest

from sae.config import NO_EXPLAINER, ScoreConfig
from sae.explanations.explainer import SCHEMA as EXPLANATIONS
from sae.llm.base import Completion, LLMClient
from sae.prompts import intruder_format, parse_intruder
from sae.scoring.scorers import score_partition

WORDS = ["volcano", "river", "budget", "music", "train", "school", "paper", "green", "city", "winter", "the"]
N_LATENTS = 4


def decode(ids):
    return [f" {WORDS[i]}" for i in ids]


def examples(n_windows: int) -> pa.Table:
    """Latent i fires on WORDS[i] alone: its activating windows all mark that word."""
    rng = np.random.default_rng(0)
    rows = []
    for latent in range(N_LATENTS):
        for i in range(n_windows):
            ids = list(rng.integers(N_LATENTS, len(WORDS), 8))
            ids[3] = latent
            acts = [0.0] * 8
            acts[3] = 1.0 + i
            rows.append({"latent": latent, "split": "test", "kind": "quantile", "bin": i % 2, "ctx_id": i,
                         "start": 0, "peak_act": acts[3], "tokens": ids, "acts": acts})
    return pa.Table.from_pylist(rows)


class Oracle(LLMClient):
    """Names the excerpt whose marked word the others do not share (the first excerpt when all share it), or,
    when `position` is set, always that excerpt. Stands in for a judge of known skill."""

    backend, model = "scripted", "oracle"

    def __init__(self, position: int | None = None):
        self.position = position

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            assert request.sampling.output_format is not None  # constrained to one excerpt number
            marks = re.findall(r"<<(.*?)>>", request.messages[-1][1])
            odd = next((i for i, m in enumerate(marks) if marks.count(m) == 1), 0)
            answer = odd + 1 if self.position is None else self.position
            out.append(Completion(f'{{"intruder": {answer}}}', 40, 4, 0.0))
        return out


def explanations() -> pa.Table:
    return pa.Table.from_pylist([{"latent": latent, "explainer": "llm", "explanation": f"the word {WORDS[latent]}",
                                  "parsed": True} for latent in range(N_LATENTS)], schema=EXPLANATIONS)


@pytest.mark.parametrize("judge", [Oracle(), Oracle(position=2)], ids=["oracle", "always-second"])
def test_intruder_control_scores_chance_whatever_the_judge(judge):
    k, questions = 3, 300
    cfg = ScoreConfig(scorers=("intruder",), intruder_k=k, intruder_questions=questions)
    table = score_partition(examples(10), explanations(), cfg, decode, seed=0, n_bins=2, fuzz_threshold=0.0,
                            client=judge)
    rows = {(r["latent"], r["source"]): r for r in table.to_pylist()}
    assert set(rows) == {(latent, source) for latent in range(N_LATENTS) for source in ("real", "control")}
    chance = 1 / (k + 1)
    for row in rows.values():
        assert row["explainer"] == NO_EXPLAINER and row["explanation_latent"] is None
        assert row["chance"] == pytest.approx(chance) and row["n_examples"] == questions
        assert row["n_requests"] == questions and row["prompt_tokens"] == 40 * questions
    control = np.mean([rows[(latent, "control")]["accuracy"] for latent in range(N_LATENTS)])
    # 1200 questions: the standard error of the mean accuracy is about 0.0125.
    assert abs(control - chance) < 0.045, control
    real = [rows[(latent, "real")]["accuracy"] for latent in range(N_LATENTS)]
    if judge.position is None:
        assert real == [1.0] * N_LATENTS  # the oracle finds every intruder
    else:
        assert abs(np.mean(real) - chance) < 0.045


def test_intruder_skips_a_latent_without_enough_windows_and_reads_replies_leniently():
    cfg = ScoreConfig(scorers=("intruder",), intruder_k=4, intruder_questions=2)
    table = score_partition(examples(4), explanations(), cfg, decode, seed=0, n_bins=2, fuzz_threshold=0.0,
                            client=Oracle())
    assert table.num_rows == 0  # 4 windows: the control needs k + 1 = 5 of the latent's own
    assert parse_intruder('{"intruder": 3}', 5) == 2 and parse_intruder("Excerpt 4 is odd", 5) == 3
    assert parse_intruder('{"intruder": 6}', 5) is None and parse_intruder("none", 5) is None
    fmt = intruder_format(10)
    assert fmt.matches('{"intruder": 10}') and fmt.matches('{"intruder": 1}') and not fmt.matches('{"intruder": 0}')
