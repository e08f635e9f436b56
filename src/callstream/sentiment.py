"""Live sentiment of call transcripts, computed offline with VADER.

VADER is a lexicon and a few rules: no model download, no network, cheap
per sentence, and tuned for short conversational text,
which is what a transcript final is. That makes it cheap enough to score every
``transcript.final`` on the ingest path, before the event is fanned out, so
every subscriber sees the same score and nobody recomputes it.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

__all__ = [
    "MAX_SCORED_CHARS",
    "NEGATIVE_THRESHOLD",
    "POSITIVE_THRESHOLD",
    "CallSentiment",
    "CallSentimentSummary",
    "Label",
    "SentimentScore",
    "label_for",
    "score_text",
]

Label = Literal["positive", "neutral", "negative"]

#: The thresholds VADER's authors recommend for the compound score.
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
#: How much of a final is scored: far more than a spoken sentence (`score_text` says why a bound).
MAX_SCORED_CHARS = 1000


class SentimentScore(TypedDict):
    """What ``transcript.final`` carries as ``data.sentiment``."""

    score: float
    label: Label


class CallSentimentSummary(TypedDict):
    """The running sentiment of one call, as ``GET /v1/calls/{id}`` shows it."""

    score: float
    label: Label
    trend: list[float]


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    """Load the VADER lexicon once, on first use.

    Loading reads a ~7,500-line lexicon file (tens of milliseconds), so it is
    deferred until a server actually scores text (it may run with sentiment
    off) and then shared: the analyzer keeps no per-call state.
    """
    from vaderSentiment import vaderSentiment as vader  # noqa: N813 - the module, not the class

    negations = frozenset(vader.NEGATE)
    n_scalar = vader.N_SCALAR

    def negated(word: str) -> bool:
        return word in negations or "n't" in word

    class Analyzer(vader.SentimentIntensityAnalyzer):  # type: ignore[misc]
        """VADER computing what upstream computes, minus two wastes.

        Upstream rebuilds the text character by character to replace emojis (none
        of which is ASCII), and lower-cases every word of the utterance and scans
        its list of ~60 negations for every lexicon word and each of the three
        words before it: together about half of a score's time, on the ingest
        path. Same results: tests/test_sentiment.py checks them against upstream.
        """

        def polarity_scores(self, text: str) -> dict[str, float]:
            if not text.isascii():  # emojis to describe: upstream's own path
                return dict(super().polarity_scores(text))
            # upstream's body after the emoji pass, which leaves ASCII text as it is
            sentitext = vader.SentiText(text.strip())
            sentiments: list[float] = []
            words_and_emoticons = sentitext.words_and_emoticons
            last = len(words_and_emoticons) - 1
            for i, item in enumerate(words_and_emoticons):
                lowered = item.lower()
                if lowered in vader.BOOSTER_DICT or (
                    i < last and lowered == "kind" and words_and_emoticons[i + 1].lower() == "of"
                ):
                    sentiments.append(0)
                    continue
                sentiments = self.sentiment_valence(0, sentitext, item, i, sentiments)
            sentiments = self._but_check(words_and_emoticons, sentiments)
            return dict(self.score_valence(sentiments, text.strip()))

        @staticmethod
        def _negation_check(valence: float, words_and_emoticons: list[str], start_i: int, i: int) -> float:
            def lower(k: int) -> str:
                return str(words_and_emoticons[k]).lower()

            if start_i == 0:
                if negated(lower(i - 1)):
                    valence = valence * n_scalar
            elif start_i == 1:
                w2, w1 = lower(i - 2), lower(i - 1)
                if w2 == "never" and (w1 == "so" or w1 == "this"):
                    valence = valence * 1.25
                elif w2 == "without" and w1 == "doubt":
                    pass
                elif negated(w2):
                    valence = valence * n_scalar
            elif start_i == 2:
                w3, w2, w1 = lower(i - 3), lower(i - 2), lower(i - 1)
                if (w3 == "never" and (w2 == "so" or w2 == "this")) or (w1 == "so" or w1 == "this"):
                    valence = valence * 1.25
                elif w3 == "without" and (w2 == "doubt" or w1 == "doubt"):
                    pass
                elif negated(w3):
                    valence = valence * n_scalar
            return valence

        @staticmethod
        def _special_idioms_check(valence: float, words_and_emoticons: list[str], i: int) -> float:
            # Upstream lower-cases the whole utterance for every word it checks: quadratic, and
            # emojis (a word or more each once described) reach it on every one. Only words
            # i-3 … i+2 matter, and upstream calls it only with i >= 3, so no index wraps.
            end = min(i + 3, len(words_and_emoticons))
            words = {k: str(words_and_emoticons[k]).lower() for k in range(i - 3, end)}
            w3, w2, w1, w0 = words[i - 3], words[i - 2], words[i - 1], words[i]
            threetwoone, threetwo, twoone = f"{w3} {w2} {w1}", f"{w3} {w2}", f"{w2} {w1}"
            for seq in (f"{w1} {w0}", f"{w2} {w1} {w0}", twoone, threetwoone, threetwo):
                if seq in vader.SPECIAL_CASES:
                    valence = vader.SPECIAL_CASES[seq]
                    break
            if i + 1 in words and (zeroone := f"{w0} {words[i + 1]}") in vader.SPECIAL_CASES:
                valence = vader.SPECIAL_CASES[zeroone]
            if i + 2 in words and (zeroonetwo := f"{zeroone} {words[i + 2]}") in vader.SPECIAL_CASES:
                valence = vader.SPECIAL_CASES[zeroonetwo]
            for n_gram in (threetwoone, threetwo, twoone):  # booster bi-grams such as "kind of"
                if n_gram in vader.BOOSTER_DICT:
                    valence = valence + vader.BOOSTER_DICT[n_gram]
            return valence

    analyzer: SentimentIntensityAnalyzer = Analyzer()
    return analyzer


def label_for(score: float) -> Label:
    """Map a compound score to a label with VADER's standard ±0.05 thresholds."""
    if score >= POSITIVE_THRESHOLD:
        return "positive"
    if score <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


def score_text(text: str) -> SentimentScore:
    """Score one utterance: VADER's compound score in -1..1, rounded to 3 decimals.

    Empty or whitespace-only text is neutral (0.0) without touching the
    analyzer, since producers do publish empty finals (silence, noise). Only the
    first `MAX_SCORED_CHARS` characters are scored: VADER's cost grows faster than
    the text (its "but" rule is quadratic), and scoring runs on the event loop, so
    one producer's megabyte final must not hold every other call up for minutes.
    """
    text = text[:MAX_SCORED_CHARS]
    if not text.strip():
        return {"score": 0.0, "label": "neutral"}
    compound = float(_analyzer().polarity_scores(text)["compound"])
    score = round(compound, 3)
    return {"score": score, "label": label_for(score)}


class CallSentiment:
    """The running sentiment of one call, updated once per final.

    The call score is the mean of every final's score so far (one neutral
    "okay" should not swing a call that has been angry for ten turns), kept as
    a running sum so an update is O(1). ``trend`` keeps only the last
    ``window`` scores: enough for a sparkline, bounded for a long call.
    """

    __slots__ = ("_count", "_sum", "_trend")

    def __init__(self, window: int = 20) -> None:
        """Start a call with no finals yet; ``window`` bounds ``trend``."""
        if window < 1:
            msg = "window must be at least 1"
            raise ValueError(msg)
        self._count = 0
        self._sum = 0.0
        self._trend: deque[float] = deque(maxlen=window)

    @property
    def count(self) -> int:
        """How many finals have been scored."""
        return self._count

    def update(self, score: float) -> CallSentimentSummary:
        """Add one final's score (clamped to -1..1) and return the new summary."""
        score = max(-1.0, min(1.0, float(score)))
        self._count += 1
        self._sum += score
        self._trend.append(round(score, 3))
        return self.summary()

    def summary(self) -> CallSentimentSummary:
        """The current summary; neutral 0.0 with an empty trend before any final."""
        mean = round(self._sum / self._count, 3) if self._count else 0.0
        return {"score": mean, "label": label_for(mean), "trend": list(self._trend)}
