"""Sentiment enrichment on real sentences, with the real VADER lexicon."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vaderSentiment.vaderSentiment import BOOSTER_DICT, NEGATE, SentimentIntensityAnalyzer

from callstream.sentiment import MAX_SCORED_CHARS, CallSentiment, _analyzer, label_for, score_text

UPSTREAM = SentimentIntensityAnalyzer()
# Words that steer VADER's rules (negations, boosters, idioms, "but", "least", "kind of"), a
# sample of its lexicon, plain words, punctuation, caps and emojis: what its branches look at.
_RULE_WORDS = sorted(NEGATE) + sorted(BOOSTER_DICT)[:40] + [
    "never", "so", "this", "without", "doubt", "but", "BUT", "least", "at", "kind", "of", "no", "nor",
    "or", "yeah", "right", "the", "shit", "bomb", "bad", "ass", "kiss", "death", "to", "die", "for",
]
_LEXICON_WORDS = [*sorted(UPSTREAM.lexicon)[::40], "good", "GOOD", "great", "terrible", "hate", "love", ":)", ":("]
_PLAIN = ["I", "want", "a", "table", "call", "me", "tomorrow", "please", "hold", "agent", "refund", "42"]
# the multi-word patterns VADER's rules look for right before a sentiment word
_LEADS = ["never so", "never this", "so", "this", "without doubt", "without the doubt", "not", "isn't", "oughtn't've",
          "no", "never", "at least", "least", "kind of", "not very", "no or", "very"]
_WORD = st.one_of(
    st.sampled_from([*_RULE_WORDS, *_LEXICON_WORDS, *_PLAIN, "!", "?", "!!!", "...", "😀", "😡", "👍"]),
    st.builds("{} {}".format, st.sampled_from(_LEADS), st.sampled_from(_LEXICON_WORDS)),
)
_SEPARATOR = st.sampled_from([" ", " ", " ", ", ", ". ", "! ", "? ", "  "])


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(_WORD, _SEPARATOR), min_size=1, max_size=25))
def test_the_fast_analyzer_scores_exactly_as_upstream_vader(parts: list[tuple[str, str]]) -> None:
    text = "".join(word + sep for word, sep in parts)
    assert _analyzer().polarity_scores(text) == UPSTREAM.polarity_scores(text)


@pytest.mark.parametrize(
    "text",
    [
        "Thank you so much, that was really helpful!",
        "Great, perfect, that works for me. Thanks!",
    ],
)
def test_positive_sentences(text: str) -> None:
    result = score_text(text)
    assert result["label"] == "positive"
    assert 0.5 < result["score"] <= 1.0


@pytest.mark.parametrize(
    "text",
    [
        "This is terrible, I am very angry and want to cancel.",
        "I hate waiting on hold, this is the worst service ever.",
    ],
)
def test_negative_sentences(text: str) -> None:
    result = score_text(text)
    assert result["label"] == "negative"
    assert -1.0 <= result["score"] < -0.5


@pytest.mark.parametrize(
    "text",
    [
        "The package arrives on Tuesday.",
        "The technician will arrive at nine in the morning.",
        "I am calling about my internet bill.",
    ],
)
def test_neutral_sentences(text: str) -> None:
    result = score_text(text)
    assert result["label"] == "neutral"
    assert -0.05 < result["score"] < 0.05


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_neutral_zero(text: str) -> None:
    assert score_text(text) == {"score": 0.0, "label": "neutral"}


def test_score_is_rounded_to_three_decimals() -> None:
    score = score_text("Thank you so much, that was really helpful!")["score"]
    assert score == round(score, 3)
    assert isinstance(score, float)


def test_thresholds_are_vaders_standard() -> None:
    assert label_for(0.05) == "positive"
    assert label_for(0.049) == "neutral"
    assert label_for(-0.049) == "neutral"
    assert label_for(-0.05) == "negative"


def test_call_sentiment_starts_neutral() -> None:
    assert CallSentiment().summary() == {"score": 0.0, "label": "neutral", "trend": []}


def test_call_sentiment_is_the_mean_of_finals() -> None:
    call = CallSentiment()
    call.update(score_text("This is terrible, I am very angry.")["score"])
    summary = call.update(score_text("Thank you so much, that was really helpful!")["score"])
    assert call.count == 2
    assert summary["score"] == pytest.approx(sum(summary["trend"]) / 2, abs=0.001)
    assert len(summary["trend"]) == 2


def test_call_sentiment_turns_negative_over_an_angry_call() -> None:
    call = CallSentiment()
    for text in [
        "Hi, I'm calling about my bill.",
        "I was charged twice and nobody fixed it.",
        "This is ridiculous, I am furious.",
        "Terrible service, I want to cancel.",
    ]:
        summary = call.update(score_text(text)["score"])
    assert summary["label"] == "negative"


def test_trend_is_bounded_by_the_window() -> None:
    call = CallSentiment(window=3)
    for score in [0.1, 0.2, 0.3, 0.4, 0.5]:
        summary = call.update(score)
    assert summary["trend"] == [0.3, 0.4, 0.5]
    assert summary["score"] == 0.3  # the mean covers every final, not just the window


def test_scores_are_clamped() -> None:
    assert CallSentiment().update(7.0)["score"] == 1.0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        CallSentiment(window=0)


@pytest.mark.parametrize("unit", ["é bad but ", "😀 ", "x y z good ", "not so great, but fine! "])
def test_a_megabyte_final_is_scored_on_its_first_characters_in_milliseconds(unit: str) -> None:
    text = unit * (1_000_000 // len(unit))
    started = time.perf_counter()
    result = score_text(text)
    assert time.perf_counter() - started < 0.5  # unbounded, VADER took minutes
    assert result == score_text(text[:MAX_SCORED_CHARS])
