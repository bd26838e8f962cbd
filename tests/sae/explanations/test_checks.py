"""The explanations check on real Parquet of the explanations schema: the share of answers without an
`Explanation:` line, and the count of distinct texts (a small explainer copying its worked example)."""

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from sae.explanations.checks import parse_failure_rate
from sae.explanations.explainer import SCHEMA


def explanations(texts: list[str | None], explainer: str = "llm") -> pa.Table:
    """One explained latent per text; None is an answer that had no `Explanation:` line."""
    n = len(texts)
    return pa.table({
        "latent": list(range(n)), "explainer": [explainer] * n, "explanation": texts,
        "parsed": [t is not None for t in texts],
        "completion": [f"Explanation: {t}" if t else "I am not sure." for t in texts],
        "explainer_model": ["smollm2-135m-instruct"] * n, "backend": ["local"] * n, "prompt_version": ["v1"] * n,
        "sampling": ['{"temperature": 0.0}'] * n, "examples_used": [[{"ctx_id": i, "start": 0}] for i in range(n)],
        "copied_example": [None] * n, "attempts": [1] * n, "prompt_tokens": [300] * n,
        "completion_tokens": [20] * n, "latency_s": [0.5] * n, "cached": [False] * n,
        "created_at": [datetime.now(timezone.utc)] * n,
    }, schema=SCHEMA)


def test_few_failures_and_varied_texts_pass(tmp_path):
    texts = [f"the word number {i}" for i in range(9)] + [None]
    path = tmp_path / "part-00000.parquet"
    pq.write_table(explanations(texts), path)
    outcome = parse_failure_rate([path])
    assert outcome.passed and outcome.severity == "warn"
    meta = outcome.metadata
    assert (meta["latents"], meta["unparsed"], meta["rate"], meta["distinct_texts"]) == (10, 1, 0.1, 9)
    assert "1 of 10" in outcome.description


def test_many_failures_fail_and_copied_texts_are_counted(tmp_path):
    # Six latents got the worked example's text back (differing only in case and space), four no answer.
    copied = ["Mentions of volcanoes.", "mentions of volcanoes. ", "MENTIONS OF VOLCANOES."] * 2
    table = explanations(copied + [None] * 4)
    paths = [tmp_path / "part-00000.parquet", tmp_path / "part-00001.parquet"]
    pq.write_table(table.slice(0, 5), paths[0])
    pq.write_table(table.slice(5), paths[1])
    for source in (paths, table):  # files and the table in memory give one verdict
        outcome = parse_failure_rate(source)
        assert not outcome.passed
        meta = outcome.metadata
        assert (meta["latents"], meta["unparsed"], meta["rate"]) == (10, 4, 0.4)
        assert (meta["distinct_texts"], meta["most_common_count"]) == (1, 6)
        assert meta["most_common_text"] == "mentions of volcanoes."
        assert "4 of 10" in outcome.description and "40%" in outcome.description
    assert parse_failure_rate(table, max_rate=0.5).passed
    # The token baseline's rows (always parsed, one text per latent) are not the LLM's answers: not counted.
    with_baseline = pa.concat_tables([table, explanations([f"the tokens {i}" for i in range(10)], "tokens")])
    assert parse_failure_rate(with_baseline).metadata == outcome.metadata


def test_an_explainer_that_does_not_name_the_planted_words_is_flagged():
    from sae.config import DEFAULT_PLANTED_FAMILIES as FAMILIES
    from sae.explanations.checks import names_a_word, names_planted_words

    assert names_a_word('"which" and "who": pronouns', FAMILIES[0].words)
    assert not names_a_word("whichever witch", FAMILIES[0].words)  # a word inside another is not named
    assert names_a_word('the token "("', FAMILIES[4].words) and not names_a_word("brackets", FAMILIES[4].words)
    assert not names_a_word("titles (of books)", FAMILIES[4].words)  # a bracket of the text, not a named token
    assert names_a_word("ABRAHAM LINCOLN", FAMILIES[6].words)
    # The baseline names every family; the LLM 6 of 8 (it misses the digits and the parentheses).
    truth = [family.explanation for family in FAMILIES]
    naming = [f'"{family.words[0]}" and more' for family in FAMILIES]
    llm = ["years of the last century", "text in brackets"] + naming[2:]
    table = pa.concat_tables([explanations(naming, "tokens"), explanations(llm, "llm"), explanations(truth, "truth")])
    outcome = names_planted_words(table, FAMILIES)
    assert not outcome.passed and outcome.severity == "warn"
    assert outcome.metadata["llm_named"] == 6 and outcome.metadata["tokens_named"] == 8
    assert "truth_named" not in outcome.metadata  # the truth is what is named, not an explainer judged
    assert "llm: 6 of 8" in outcome.description and "llm under 80%" in outcome.description
    passing = pa.concat_tables([explanations(naming, "tokens"), explanations(naming[:7] + llm[1:2], "llm")])
    assert names_planted_words(passing, FAMILIES).passed  # 7 of 8 is over 80 %
    assert names_planted_words(table, None).passed  # not a planted variant
