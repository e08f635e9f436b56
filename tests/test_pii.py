"""The redactor (callstream.pii): what it finds written and spoken, what it leaves, how an event's
data is redacted, and its precision and recall per kind on the generated corpus (tests/pii_corpus.py)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.pii import KINDS, Redactor, parse_kinds, redact_event
from callstream.pii_numbers import NUMBER_WORDS
from tests import pii_corpus
from tests.pii_corpus import Sample

ALL = Redactor(KINDS)

# (text, what it must become)
FOUND = [
    ("my card is 4111 1111 1111 1111 thanks", "my card is [card] thanks"),
    ("4111-1111-1111-1111", "[card]"),
    ("it's 378282246310005", "it's [card]"),
    ("four one one one, one one one one, one one one one, one one one one", "[card]"),
    ("card four one one one one one one one one one one one one one one one ok", "card [card] ok"),
    ("five five double five, five five five five, five five five five, four four four four", "[card]"),
    ("my social is 123-45-6789.", "my social is [ssn]."),
    ("one two three, four five, six seven eight nine", "[ssn]"),
    ("my social security number is one two three four five six seven eight nine", "my social security number is [ssn]"),
    ("call me at (415) 555-2671 tomorrow", "call me at [phone] tomorrow"),
    ("+44 20 7946 0958", "[phone]"),
    ("four one five, five five five, two six seven one", "[phone]"),
    ("four one five five five five two six seven one", "[phone]"),
    ("one eight hundred two three four, five six seven eight", "[phone]"),
    ("write to john.smith@example.com today", "write to [email] today"),
    ("it's john dot smith at gmail dot com", "it's [email]"),
    ("maria underscore lopez at mail dot co dot uk, thanks", "[email], thanks"),
    ("my IBAN is DE89 3704 0044 0532 0130 00 please", "my IBAN is [iban] please"),
    ("GB82WEST12345698765432", "[iban]"),
    ("D E eight nine three seven oh four oh oh four four oh five three two oh one three oh oh oh", "[iban]"),
]
KEPT = [
    "order number 48213977",
    "at ten thirty",
    "it costs $1,299.99",
    "on 12/25/2024 or 2024-06-01",
    "I have 3 kids and about 150 people came",
    "extension 4021, room 214",
    "4111 1111 1111 1112",  # fails Luhn
    "1234 5678 9012 3456",  # no card network starts with 1
    "DE89 3704 0044 0532 0130 01",  # fails mod-97
    "666-12-3456 and 123-00-4567 and 123-45-0000",  # never issued
    "tracking number 482913771",  # nine bare digits: no SSN without a word that says so
    "123-456-7890",  # no such area code
    "order it at amazon dot com",
    "the ref is A1B2C3D4E5F6G7H8 and 3pm works",
    "one moment please, I'll be at home",
]


@pytest.mark.parametrize(("text", "expected"), FOUND)
def test_personal_data_written_and_spoken_becomes_its_kind(text: str, expected: str) -> None:
    redacted, kinds = ALL.redact(text)
    assert redacted == expected
    assert kinds == set(re.findall(r"\[(\w+)\]", expected))


@pytest.mark.parametrize("text", KEPT)
def test_near_misses_are_left_as_they_are(text: str) -> None:
    assert ALL.redact(text) == (text, set())


def test_only_the_enabled_kinds_are_redacted() -> None:
    text = "card 4111111111111111, mail a@b.com, phone 415-555-2671"
    assert Redactor(["email"]).redact(text) == ("card 4111111111111111, mail [email], phone 415-555-2671", {"email"})
    assert Redactor(["card", "phone"]).redact(text)[1] == {"card", "phone"}


def test_kinds_are_parsed_and_an_unknown_one_is_refused() -> None:
    assert parse_kinds(" SSN,card ,card") == ("card", "ssn")
    assert parse_kinds("all") == KINDS
    assert parse_kinds("") == ()
    with pytest.raises(ValueError, match="unknown kind passport"):
        parse_kinds("card,passport")


def test_phone_numbers_are_read_in_the_configured_region() -> None:
    assert Redactor(["phone"], region="GB").redact("ring 020 7946 0958")[0] == "ring [phone]"
    assert Redactor(["phone"], region="US").redact("ring 020 7946 0958")[0] == "ring 020 7946 0958"


def test_a_transcript_gets_redacted_text_and_the_kinds_found() -> None:
    data: dict[str, Any] = {"speaker": "user", "text": "a@b.com or 4111 1111 1111 1111", "redacted": ["forged"]}
    redact_event(ALL, "transcript.final", data)
    assert data == {"speaker": "user", "text": "[email] or [card]", "redacted": ["card", "email"]}
    clean: dict[str, Any] = {"speaker": "user", "text": "hello", "redacted": ["forged"]}
    redact_event(ALL, "transcript.partial", clean)
    assert clean == {"speaker": "user", "text": "hello"}  # the field is the server's


def test_function_arguments_and_results_are_redacted_at_any_depth() -> None:
    call: dict[str, Any] = {
        "name": "charge",
        "args": {"card": "4111111111111111", "who": ["x", {"mail": "a@b.com"}], "amount": 1200, "n": 4111111111111111},
    }
    redact_event(ALL, "function.call", call)
    assert call["args"] == {"card": "[card]", "who": ["x", {"mail": "[email]"}], "amount": 1200, "n": "[card]"}
    assert call["redacted"] == ["card", "email"]
    result: dict[str, Any] = {"name": "lookup", "result": "found 415-555-2671"}
    redact_event(ALL, "function.result", result)
    assert result == {"name": "lookup", "result": "found [phone]", "redacted": ["phone"]}


def test_other_events_are_not_touched() -> None:
    data = {"state": "speaking", "note": "4111111111111111"}
    redact_event(ALL, "agent.state", data)
    assert data == {"state": "speaking", "note": "4111111111111111"}


@pytest.mark.parametrize(
    "text",
    [
        "1 " * 32_000,  # one run of 32,000 segments
        "four " * 12_000,  # one segment of 12,000 spoken digits
        "a@b.com " * 8_000,  # 8,000 spans to keep apart
        "4111 1111 1111 1111 " * 3_000,
        "x at y dot com " * 4_000,
    ],
    ids=["digit-groups", "spoken-digits", "emails", "cards", "spoken-emails"],
)
def test_a_hostile_64_kib_text_is_redacted_in_well_under_a_second(text: str) -> None:
    started = time.process_time()
    ALL.redact(text)
    # A bound against super-linear work, not a speed figure: at 64 KiB it is tens of milliseconds,
    # and a quadratic path would take minutes. 1 s was crossed by a busy CI worker.
    assert time.process_time() - started < 5.0


# ---- properties ----------------------------------------------------------------------------------

PLAIN_WORDS = st.sampled_from(["hello", "the", "card", "please", "yes", "number", "is", "my", "and", "thanks"])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_is_redacted_the_same_way_twice_and_a_second_pass_changes_nothing(text: str) -> None:
    once, kinds = ALL.redact(text)
    assert ALL.redact(text) == (once, kinds)
    assert ALL.redact(once)[0] == once


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Nd"], blacklist_characters="@")))
def test_text_without_digits_at_signs_or_number_words_comes_back_unchanged(text: str) -> None:
    words = set(re.findall(r"[^\W\d_]+", text.lower()))
    if words & NUMBER_WORDS or "at" in words:
        return  # a number word may start a number, "at" an email
    assert ALL.redact(text) == (text, set())


@settings(max_examples=300, deadline=None)
@given(st.lists(PLAIN_WORDS, max_size=6), st.lists(PLAIN_WORDS, max_size=6), st.integers(0, 2**32), st.booleans())
def test_a_card_number_anywhere_in_a_sentence_leaves_no_digit_of_it(
    before: list[str], after: list[str], seed: int, say_it: bool
) -> None:
    rng = random.Random(seed)
    number, sizes = pii_corpus.card(rng)
    text, _ = pii_corpus.say(rng, number, sizes, ("spoken", "paused") if say_it else ("spaced", "dashed", "plain"))
    redacted, kinds = ALL.redact(" ".join([*before, text, *after]))
    assert kinds == {"card"}
    assert redacted == " ".join([*before, "[card]", *after])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_a_partial_and_the_final_with_its_text_redact_the_same_spans(seed: int) -> None:
    sample = pii_corpus.mixed(random.Random(seed))
    partial: dict[str, Any] = {"speaker": "user", "text": sample.text, "is_final": False}
    final: dict[str, Any] = {"speaker": "user", "text": sample.text, "is_final": True}
    redact_event(ALL, "transcript.partial", partial)
    redact_event(ALL, "transcript.final", final)
    assert (partial["text"], partial.get("redacted")) == (final["text"], final.get("redacted"))


# ---- precision and recall on the generated corpus -----------------------------------------------

RECALL_TARGETS = {"card": 0.99, "ssn": 0.99, "phone": 0.95, "email": 0.95}
PRECISION_TARGET = 0.95


def score(samples: list[Sample]) -> tuple[dict[str, Counter[str]], list[str]]:
    """Per kind: tp (a truth span wholly covered by a found span of its kind), fn, and fp (a found
    span overlapping no truth span of its kind). Also the misses, to print."""
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    misses: list[str] = []
    for sample in samples:
        found = ALL.spans(sample.text)
        for start, end, kind in sample.truth:
            hit = any(s.kind == kind and s.start <= start and s.end >= end for s in found)
            counts[kind]["tp" if hit else "fn"] += 1
            if not hit:
                misses.append(f"missed {sample.form}: {sample.text!r}")
        for s in found:
            if not any(kind == s.kind and s.start < end and s.end > start for start, end, kind in sample.truth):
                counts[s.kind]["fp"] += 1
                misses.append(f"wrongly {s.kind} in {sample.form}: {sample.text!r}")
    return counts, misses


def test_precision_and_recall_on_the_generated_corpus_meet_the_targets(capsys: pytest.CaptureFixture[str]) -> None:
    samples = pii_corpus.corpus()
    counts, misses = score(samples)
    lines = [f"redaction on {len(samples)} generated utterances (seed 2026):", "kind    precision  recall   tp   fp   fn"]
    total = Counter[str]()
    for kind, c in counts.items():
        total.update(c)
        precision = c["tp"] / max(1, c["tp"] + c["fp"])
        recall = c["tp"] / max(1, c["tp"] + c["fn"])
        lines.append(f"{kind:<7} {precision:9.3f} {recall:7.3f} {c['tp']:4d} {c['fp']:4d} {c['fn']:4d}")
    overall = total["tp"] / max(1, total["tp"] + total["fp"])
    lines.append(f"overall precision {overall:.3f}")
    with capsys.disabled():
        print("\n" + "\n".join(lines + misses[:20]))
    for kind, c in counts.items():
        assert c["tp"] / max(1, c["tp"] + c["fp"]) >= PRECISION_TARGET, kind
        assert c["tp"] + c["fn"] > 100, f"the corpus holds too few {kind}"
        if kind in RECALL_TARGETS:
            assert c["tp"] / (c["tp"] + c["fn"]) >= RECALL_TARGETS[kind], kind
    assert overall >= PRECISION_TARGET


def test_the_corpus_is_the_same_for_the_same_seed() -> None:
    assert [s.text for s in pii_corpus.corpus(7, 20, 20, 20)] == [s.text for s in pii_corpus.corpus(7, 20, 20, 20)]
