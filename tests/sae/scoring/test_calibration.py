"""The calibration flags a scorer that cannot tell a planted latent's true explanation from a wrong one, and
not one that can; the flag reaches the summary, the asset check, the CLI line and the export card.

The two judges are test doubles of an LLM client (the only thing mocked: the lake, the planted latents, their
examples, the tokenizer and `score_partition` are real): one answers at random, the other from the planted
definition (1 where a word of the explained family appears in the excerpt)."""

import random
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.runner import print_calibration
from sae.config import ScoreConfig
from sae.explanations.explainer import TRUTH
from sae.explanations.stage import token_decoder, truth_rows
from sae.export.dataset import card_info_from_config, export_dataset
from sae.lake import Lake
from sae.lake.sql import query_over
from sae.lineage import fresh_files, lineage_of
from sae.llm.base import Completion, LLMClient
from sae.scoring.calibration import MIN_CALIBRATION_LATENTS, calibrate
from sae.scoring.scorers import score_partition
from sae.scoring.stage import check_summary, score_summary
from tests.conftest import build_planted_lake

FAMILIES = [{"name": "digits", "words": list("0123456789"), "explanation": "digits"},
            {"name": "articles", "words": ["a", "an"], "explanation": "the articles a and an"},
            {"name": "parentheses", "words": ["(", ")"], "explanation": "parentheses"},
            {"name": "quotes", "words": ['"'], "explanation": "double quotation marks"},
            {"name": "he", "words": ["he", "him", "his"], "explanation": "the pronouns he, him and his"},
            {"name": "numbers", "words": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                          "ten"], "explanation": "number words"}]
SCORE = {"scorers": ["detection"], "n_activating": 6, "n_silent": 6, "batch_size": 4}


def excerpts(request) -> tuple[str, list[str]]:
    """The explanation and the excerpts of a scorer prompt (its last message)."""
    explanation, *lines = request.messages[-1][1].split("\n")
    return explanation.removeprefix("Explanation: "), [line.split(": ", 1)[1] for line in lines]


def answer(bits) -> Completion:
    return Completion("Answer: [" + ", ".join(str(int(b)) for b in bits) + "]", 0, 0, 0.0)


class RandomJudge(LLMClient):
    backend, model = "test", "random-judge"

    def complete(self, requests, progress=False):
        rng = random.Random(0)
        return [answer(rng.random() < 0.5 for _ in excerpts(r)[1]) for r in requests]


class PlantedJudge(LLMClient):
    """Answers 1 where a word of the family whose explanation it is given appears in the excerpt."""

    backend, model = "test", "planted-judge"
    words_of = {family["explanation"]: family["words"] for family in FAMILIES}

    @staticmethod
    def appears(word: str, text: str) -> bool:
        if word.isalpha():
            return re.search(rf"(?<![a-z]){word}(?![a-z])", text.lower()) is not None
        return word in text

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            explanation, texts = excerpts(request)
            out.append(answer(any(self.appears(w, t) for w in self.words_of[explanation]) for t in texts))
        return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory, converted_model):
    cfg = build_planted_lake(tmp_path_factory.mktemp("calibration"), converted_model, FAMILIES,
                             examples={"window": 16, "n_top": 4, "n_train_quantile": 2, "n_test": 6, "n_random": 6,
                                       "n_neighbour": 2, "neighbour_latents": 2},
                             score=SCORE)
    key = ("layers.1", "planted")
    import pyarrow.parquet as pq

    examples = pq.read_table(fresh_files(cfg, "examples", key)[0])
    covered = pq.read_table(fresh_files(cfg, "examples", key, table="example_coverage")[0])
    explanations = truth_rows(cfg, *key, covered)
    Lake(cfg.lake).write_partition(explanations, "explanations", *key,
                                   provenance=lineage_of(cfg).provenance("explanations", key))
    return cfg, examples, explanations


def scores_of(cfg, examples, explanations, judge) -> pa.Table:
    return score_partition(examples, explanations, ScoreConfig(**{**SCORE, "scorers": ("detection",)}),
                           token_decoder(cfg), cfg.seed, cfg.examples.n_quantiles, 0.0, client=judge)


def test_random_answers_are_flagged_and_answers_from_the_definition_are_not(lake):
    cfg, examples, explanations = lake
    assert explanations.num_rows == len(FAMILIES) and set(explanations.column("explainer").to_pylist()) == {TRUTH}
    both = pa.concat_tables(scores_of(cfg, examples, explanations, judge) for judge in (RandomJudge(), PlantedJudge()))
    both = both.append_column("layer", pa.array(["layers.1"] * both.num_rows)).append_column(
        "sae", pa.array(["planted"] * both.num_rows))
    groups = query_over("calibration_values", both, "scores", planted=["planted"]).to_dicts()
    rows = {r["scorer_model"]: r for r in calibrate(groups, n_boot=1000, seed=0).to_pylist()}
    perfect, chance = rows["planted-judge"], rows["random-judge"]
    assert perfect["n_latents"] == chance["n_latents"] == len(FAMILIES)
    assert perfect["true"] > 0.95 and perfect["true_lo"] > perfect["wrong_hi"] and perfect["calibrated"] is True
    assert abs(chance["true"] - 0.5) < 0.15 and chance["calibrated"] is False
    # No LLM or baseline explanations were scored here: their figures are NULL, never NaN.
    assert perfect["explainer"] is None and perfect["baseline_hi"] is None


def test_a_judge_right_on_too_few_planted_latents_is_unchecked(lake):
    """Three perfect values give a narrow bootstrap interval by accident; that is not a calibration."""
    cfg, examples, explanations = lake
    scores = scores_of(cfg, examples, explanations, PlantedJudge())
    few = sorted(set(scores.column("latent").to_pylist()))[: MIN_CALIBRATION_LATENTS - 1]
    scores = scores.filter(pc.is_in(scores["latent"], pa.array(few, pa.int32())))
    scores = scores.append_column("layer", pa.array(["layers.1"] * scores.num_rows)).append_column(
        "sae", pa.array(["planted"] * scores.num_rows))
    (row,) = calibrate(query_over("calibration_values", scores, "scores", planted=["planted"]).to_dicts(),
                       n_boot=200, seed=0).to_pylist()
    assert row["n_latents"] == len(few) and row["true_lo"] > row["wrong_hi"]  # it does separate them
    assert row["calibrated"] is None


def test_planted_scores_without_controls_are_unchecked(lake):
    cfg, examples, explanations = lake
    scores = score_partition(examples, explanations, ScoreConfig(**{**SCORE, "scorers": ("detection",),
                                                                  "control": False}),
                             token_decoder(cfg), cfg.seed, cfg.examples.n_quantiles, 0.0, client=PlantedJudge())
    scores = scores.append_column("layer", pa.array(["layers.1"] * scores.num_rows)).append_column(
        "sae", pa.array(["planted"] * scores.num_rows))
    (row,) = calibrate(query_over("calibration_values", scores, "scores", planted=["planted"]).to_dicts(),
                       n_boot=100, seed=0).to_pylist()
    assert row["true"] > 0.95 and row["wrong"] is None and row["calibrated"] is None


@pytest.mark.parametrize("judge, verdict", [(RandomJudge(), "UNCALIBRATED"), (PlantedJudge(), "calibrated")])
def test_the_verdict_reaches_the_summary_the_check_the_cli_and_the_card(lake, judge, verdict, tmp_path, capsys):
    cfg, examples, explanations = lake
    key = ("layers.1", "planted")
    Lake(cfg.lake).write_partition(scores_of(cfg, examples, explanations, judge), "scores", *key,
                                   provenance=lineage_of(cfg).provenance("scores", key))
    summary, calibration = score_summary(cfg)
    calibrated = verdict == "calibrated"
    assert set(summary.column("calibrated").to_pylist()) == {calibrated}
    assert set(summary.column("planted").to_pylist()) == {True}
    assert calibration.column("calibrated").to_pylist() == [calibrated]

    (outcome,) = check_summary(cfg)
    assert outcome.passed is calibrated and outcome.severity == "warn"
    assert f"detection ({judge.model}): {verdict}" in outcome.description

    print_calibration(cfg)
    line = f"  detection ({judge.model}): {verdict} — "
    assert line in capsys.readouterr().out
    if not calibrated:
        assert "do not read its numbers as meaningful" in outcome.description

    export_dataset(Lake(cfg.lake).root, tmp_path / "export", card_info_from_config(cfg, []))
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"- detection ({judge.model}): {verdict} — " in card and "`planted`: planted: known-answer" in card


class IntruderJudge(LLMClient):
    """Names the excerpt whose marked words belong to a family no other excerpt's do (by the planted definition);
    with `guess`, a random excerpt."""

    backend = "test"
    family_of = {word: family["name"] for family in FAMILIES for word in family["words"]}

    def __init__(self, guess: bool):
        self.model, self.guess, self.rng = ("guessing" if guess else "knowing") + "-judge", guess, random.Random(0)

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            lines = request.messages[-1][1].split("\n")
            families = [{self.family_of.get(m.strip().lower()) for m in re.findall(r"<<(.*?)>>", line)} - {None}
                        for line in lines]
            odd = next((i for i, f in enumerate(families) if all(not f & g for j, g in enumerate(families) if j != i)),
                       0)
            answer = self.rng.randrange(len(lines)) if self.guess else odd
            out.append(Completion(f'{{"intruder": {answer + 1}}}', 0, 0, 0.0))
        return out


def test_the_intruder_is_calibrated_on_its_real_task_against_its_control_and_intervention_is_not_applicable(lake):
    cfg, examples, explanations = lake
    score = ScoreConfig(**{**SCORE, "scorers": ("intruder",), "intruder_k": 2, "intruder_questions": 8})
    tables = [score_partition(examples, explanations, score, token_decoder(cfg), cfg.seed, cfg.examples.n_quantiles,
                              0.0, client=judge) for judge in (IntruderJudge(guess=False), IntruderJudge(guess=True))]
    scores = pa.concat_tables(tables)
    scores = scores.append_column("layer", pa.array(["layers.1"] * scores.num_rows)).append_column(
        "sae", pa.array(["planted"] * scores.num_rows))
    # An intervention row of another variant: planted latents have none, as they have no decoder to steer.
    steered = scores.slice(0, 1).to_pylist()[0] | {"scorer": "intervention", "sae": "topk", "scorer_model": "m"}
    scores = pa.concat_tables([scores, pa.Table.from_pylist([steered], schema=scores.schema)])
    groups = query_over("calibration_values", scores, "scores", planted=["planted"]).to_dicts()
    rows = {r["scorer_model"]: r for r in calibrate(groups, n_boot=1000, seed=0).to_pylist()}
    knowing, guessing = rows["knowing-judge"], rows["guessing-judge"]
    assert knowing["metric"] == "accuracy" and knowing["n_latents"] == len(FAMILIES)
    assert knowing["true"] > 0.75 and knowing["calibrated"] is True and knowing["explainer"] is None
    assert abs(knowing["wrong"] - 1 / 3) < 0.2  # the control question: chance, 1 / (k + 1)
    assert guessing["calibrated"] is False
    intervention = rows["m"]
    assert intervention["applicable"] is False and intervention["calibrated"] is None
    from sae.scoring.calibration import calibration_line

    assert "not applicable" in calibration_line(intervention) and "decoder" in calibration_line(intervention)
    # The intruder reads no explanation: its line speaks of its task, not of true and wrong explanations.
    assert "on the real task" in calibration_line(guessing) and "explanation" not in calibration_line(guessing)
