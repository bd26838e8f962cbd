"""The prompts: marking of active tokens, answer parsing, options, and stable version hashes."""

from sae.config import PromptConfig
from sae.prompts import Window, explainer_messages, explainer_version, marked_text, parse_explanation

WINDOW = Window((" the", " old", " Paris", " Metro", " line", "\n", "1"), (0.0, 0.0, 4.0, 2.0, 0.0, 0.0, 0.3))


def test_adjacent_active_tokens_form_one_span_and_the_threshold_is_relative_to_the_peak():
    text, spans = marked_text(WINDOW, threshold=0.0)
    assert text == "the old<< Paris Metro>> line⏎<<1>>"
    assert spans == [("Paris Metro", 4.0), ("1", 0.30000001192092896)]
    text, spans = marked_text(WINDOW, threshold=0.6)  # 0.6 x 4.0 = 2.4: only Paris stays
    assert text == "the old<< Paris>> Metro line⏎1" and [s for s, _ in spans] == ["Paris"]


def test_marker_characters_inside_the_text_cannot_fake_a_highlight():
    text, _ = marked_text(Window(("a<<b", ">>c"), (0.0, 0.0)), 0.0)
    assert "<<" not in text and ">>" not in text


def test_options_change_the_prompt_and_its_version():
    plain = PromptConfig()
    variants = [PromptConfig(show_activations=True), PromptConfig(chain_of_thought=True),
                PromptConfig(contrastive=True), PromptConfig(highlight_threshold=0.5)]
    versions = {explainer_version(plain)} | {explainer_version(v) for v in variants}
    assert len(versions) == 5 and explainer_version(PromptConfig()) == explainer_version(plain)
    base = explainer_messages([WINDOW], plain)
    assert base[0][0] == "system" and base[-1] == ("user", "Excerpt 1: the old<< Paris Metro>> line⏎<<1>>")
    shown = explainer_messages([WINDOW], PromptConfig(show_activations=True), max_act=8.0)[-1][1]
    assert "Strength: Paris Metro (5), 1 (1)" in shown
    silent = Window((" quiet", " words"), (0.0, 0.0))
    contrastive = explainer_messages([WINDOW], PromptConfig(contrastive=True), silent=[silent])[-1][1]
    assert contrastive.endswith("Silent 1: quiet words") and "silent" in explainer_messages(
        [WINDOW], PromptConfig(contrastive=True))[0][1]
    cot = explainer_messages([WINDOW], PromptConfig(chain_of_thought=True))
    assert cot[2][1].startswith("- ") and cot[2][1].splitlines()[-1].startswith("Explanation:")


def test_the_answer_is_read_from_the_last_marker_line():
    assert parse_explanation("- notes\nExplanation: city names") == "city names"
    assert parse_explanation('**Explanation:** "the suffix ing"') == "the suffix ing"
    assert parse_explanation("explanation: first\nExplanation: second") == "second"
    assert parse_explanation("It fires on cities.") is None
    assert parse_explanation("Explanation:   ") is None
    assert parse_explanation('Explanation: the words "not", "never"') == 'the words "not", "never"'
    assert parse_explanation("Explanation: 'who'") == "who"
    # An answer that opens and ends with a quoted token is not one quoted answer: its quotes stay balanced.
    assert parse_explanation('Explanation: "he" and "his"') == '"he" and "his"'


def test_the_scorer_example_has_as_many_excerpts_as_the_batch():
    from sae.prompts import scorer_messages, scorer_version

    for n in (1, 5, 11):
        messages = scorer_messages("detection", "city names", [f"text {i}" for i in range(n)])
        assert messages[1][1].count("Excerpt") == n
        assert len(messages[2][1].split(",")) == n and messages[-1][1].count("Excerpt") == n
    assert scorer_version("detection") != scorer_version("fuzzing")
