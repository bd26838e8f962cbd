"""The intervention scorer on a constructed steered_generations table: an oracle that sees what the explanation
names picks every steered continuation (per strength too), a deranged explanation leaves it at chance, and the
pairs' order is drawn per latent, the same for every explainer and source; output-side explanations are written
from the other prompts' continuations only, and judged like the rest."""

import json
import re

import pyarrow as pa

from sae.config import ScoreConfig
from sae.explanations.explainer import SCHEMA as EXPLANATIONS
from sae.llm.base import Completion, LLMClient
from sae.prompts import intervention_format, parse_steered
from sae.scoring.scorers import score_partition
from sae.scoring.steering import SCHEMA as GENERATIONS

TOPICS = ["volcano", "river", "music", "budget"]
PROMPTS = ("I think that", "Yesterday,", "Here is")
OUTPUT_PROMPTS = ("My favourite thing is",)
STRENGTHS = (1.0, 4.0)


def generations() -> pa.Table:
    """Latent i's steered continuations mention TOPICS[i] at strength 4 only; at strength 1 they are the clean text.
    The output explainer's prompts (purpose explain) say `seen` where the scorer's say `again`."""
    rows = []
    for purpose, prompts, word in (("score", PROMPTS, "again"), ("explain", OUTPUT_PROMPTS, "seen")):
        rows += [{"latent": None, "strength": 0.0, "purpose": purpose, "prompt_index": p, "prompt": prompt,
                  "completion": " a plain day", "site": "layers.1"} for p, prompt in enumerate(prompts)]
        rows += [{"latent": latent, "strength": strength, "purpose": purpose, "prompt_index": p, "prompt": prompt,
                  "typical_act": 2.0, "site": "layers.1",
                  "completion": f" the {TOPICS[latent]} {word}" if strength == 4.0 else " a plain day"}
                 for latent in range(len(TOPICS)) for strength in STRENGTHS for p, prompt in enumerate(prompts)]
    return pa.Table.from_pylist(rows, schema=GENERATIONS)


class Oracle(LLMClient):
    """Picks the continuation that holds the explanation's last word; where neither does, the first."""

    backend, model = "scripted", "oracle"

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            explanation, *pairs = request.messages[-1][1].split("\n")
            word = explanation.split()[-1]
            picks = []
            for pair in pairs:
                first, second = [json.loads(t) for t in re.findall(r'as \d: ("(?:[^"\\\\]|\\\\.)*")', pair)]
                picks.append(2 if word in second and word not in first else 1)
            text = '{"steered": [' + ", ".join(map(str, picks)) + "]}"
            assert request.sampling.output_format.matches(text)
            out.append(Completion(text, 200, 10, 0.0))
        return out


def test_intervention_accuracy_per_strength_real_against_control():
    explanations = pa.Table.from_pylist([{"latent": latent, "explainer": "llm", "parsed": True,
                                          "explanation": f"mentions of the {TOPICS[latent]}"}
                                         for latent in range(len(TOPICS))], schema=EXPLANATIONS)
    examples = pa.Table.from_pylist([{"latent": latent, "split": "test", "kind": "quantile", "bin": 0, "ctx_id": 0,
                                      "start": 0, "peak_act": 1.0, "tokens": [0], "acts": [1.0]}
                                     for latent in range(len(TOPICS))])
    cfg = ScoreConfig(scorers=("intervention",), intervention_prompts=PROMPTS, intervention_strengths=STRENGTHS)
    table = score_partition(examples, explanations, cfg, lambda ids: ["x"] * len(ids), seed=0, n_bins=1,
                            fuzz_threshold=0.0, client=Oracle(), generations=generations())
    rows = {(r["latent"], r["source"]): r for r in table.to_pylist()}
    assert len(rows) == 2 * len(TOPICS)
    for latent in range(len(TOPICS)):
        real, control = rows[(latent, "real")], rows[(latent, "control")]
        assert real["n_examples"] == len(PROMPTS) * len(STRENGTHS) and real["chance"] == 0.5
        assert (real["n_requests"], real["prompt_tokens"]) == (1, 200)
        # Strength 4: every steered continuation named; strength 1 changed nothing, and the oracle guesses the
        # first, which is right where the draw put the steered one first.
        assert real["strength_accuracy"][1] == 1.0
        # The control's explanation names another topic: no pick is informed at either strength.
        assert control["explanation_latent"] != latent
        assert control["strength_accuracy"][0] == real["strength_accuracy"][0]  # the same order, the same guess
    mean_control = sum(rows[(latent, "control")]["accuracy"] for latent in range(len(TOPICS))) / len(TOPICS)
    mean_real = sum(rows[(latent, "real")]["accuracy"] for latent in range(len(TOPICS))) / len(TOPICS)
    assert mean_real > mean_control + 0.25 and abs(mean_control - 0.5) < 0.3


def test_intervention_replies_are_constrained_and_read():
    fmt = intervention_format(3)
    assert fmt.matches('{"steered": [1, 2, 2]}') and not fmt.matches('{"steered": [1, 0, 2]}')
    assert parse_steered('{"steered": [1, 2, 2]}', 3) == [0, 1, 1]
    assert parse_steered('{"steered": [1, 2]}', 3) is None


def test_no_generations_no_intervention_rows():
    explanations = pa.Table.from_pylist([{"latent": 0, "explainer": "truth", "parsed": True, "explanation": "x"}],
                                        schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("intervention",))
    table = score_partition(pa.Table.from_pylist([{"latent": 0, "split": "test", "kind": "quantile", "bin": 0,
                                                   "ctx_id": 0, "start": 0, "peak_act": 1.0, "tokens": [0],
                                                   "acts": [1.0]}]),
                            explanations, cfg, lambda ids: ["x"], seed=0, n_bins=1, fuzz_threshold=0.0,
                            client=Oracle(), generations=None)
    assert table.num_rows == 0  # a planted variant: nothing to steer


class OutputReader(LLMClient):
    """Explains a latent by the topic word of its last steered continuation in the prompt."""

    backend, model = "scripted", "reader"

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            steered = [line for line in request.messages[-1][1].split("\n") if "switched on" in line]
            assert steered and all("seen" in line or "plain" in line for line in steered)  # never a scored pair
            word = json.loads(steered[-1].split(": ", 1)[1]).split()[1]
            out.append(Completion(f"Explanation: mentions of the {word}", 300, 8, 0.0))
        return out


class Echo(LLMClient):
    """Answers with the last steered continuation it was shown, as SmolLM2 often does."""

    backend, model = "scripted", "echo"

    def complete(self, requests, progress=False):
        last = [line for line in requests[0].messages[-1][1].split("\n") if "switched on" in line][-1]
        return [Completion(f"Explanation: {json.loads(last.split(': ', 1)[1])}", 300, 8, 0.0)]


def test_output_side_explanations_are_written_from_other_prompts_and_judged_like_the_rest():
    from sae.scoring.output_explanations import OUTPUT_EXPLAINER, output_explanation_rows, output_prompts

    promoted = {latent: (TOPICS[latent], "the") for latent in range(len(TOPICS))}
    prompts = output_prompts(generations(), promoted, list(range(len(TOPICS))), max_tokens=24)
    assert [p.latent for p in prompts] == list(range(len(TOPICS)))
    assert f'"{TOPICS[2]}", "the"' in prompts[2].request.messages[-1][1]  # the promoted tokens are shown
    output = output_explanation_rows(OutputReader(), prompts)
    assert output.column("explainer").to_pylist() == [OUTPUT_EXPLAINER] * len(TOPICS)
    assert output.column("explanation").to_pylist() == [f"mentions of the {t}" for t in TOPICS]
    assert output.column("copied_example").to_pylist() == [None] * len(TOPICS)
    # An answer that repeats a continuation it was shown is flagged as a copy of it.
    echo = output_explanation_rows(Echo(), prompts[:1])
    assert echo.column("copied_example").to_pylist() == [f" the {TOPICS[0]} seen"]
    explanations = pa.Table.from_pylist([{"latent": latent, "explainer": "llm", "parsed": True,
                                          "explanation": "something else entirely"}
                                         for latent in range(len(TOPICS))], schema=EXPLANATIONS)
    examples = pa.Table.from_pylist([{"latent": latent, "split": "test", "kind": "quantile", "bin": 0, "ctx_id": 0,
                                      "start": 0, "peak_act": 1.0, "tokens": [0], "acts": [1.0]}
                                     for latent in range(len(TOPICS))])
    cfg = ScoreConfig(scorers=("intervention",), intervention_prompts=PROMPTS, intervention_strengths=STRENGTHS,
                      output_prompts=OUTPUT_PROMPTS)
    table = score_partition(examples, explanations, cfg, lambda ids: ["x"] * len(ids), seed=0, n_bins=1,
                            fuzz_threshold=0.0, client=Oracle(), generations=generations(), output_explanations=output)
    rows = {(r["latent"], r["explainer"], r["source"]): r for r in table.to_pylist()}
    assert len(rows) == 4 * len(TOPICS)  # llm and llm-output, real and control
    for latent in range(len(TOPICS)):
        # Judged on the scorer's prompts alone (3 prompts x 2 strengths), the output-side explanation names the
        # topic and finds every strongly steered continuation.
        real = rows[(latent, OUTPUT_EXPLAINER, "real")]
        assert real["n_examples"] == len(PROMPTS) * len(STRENGTHS) and real["strength_accuracy"][1] == 1.0
        assert rows[(latent, OUTPUT_EXPLAINER, "control")]["explanation_latent"] != latent
