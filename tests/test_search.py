"""What `q` means (callstream/search.py): words, phrases and prefixes, as FTS5 and PostgreSQL read
them, and the snippet that shows where a final matched. Synchronous: text in, text out."""

from __future__ import annotations

import re

import pytest

from callstream.call_filters import CallFilter, FilterError, parse_filters
from callstream.search import MAX_QUERY_CHARS, QueryError, Term, parse_query


def marked(text: str, marks: tuple[tuple[int, int], ...]) -> list[str]:
    return [text[a:b] for a, b in marks]


def test_words_phrases_and_prefixes_are_terms_all_of_which_must_match() -> None:
    query = parse_query('Refund "late  FEE" appoint* RFC-1234')
    assert query.terms == (
        Term(("refund",)), Term(("late", "fee")), Term(("appoint",), prefix=True), Term(("rfc", "1234")),
    )
    assert query.fts5() == '"refund" AND "late fee" AND "appoint" * AND "rfc 1234"'
    assert query.tsquery() == "'refund' & ('late' <-> 'fee') & 'appoint':* & ('rfc' <-> '1234')"


@pytest.mark.parametrize("q", ['" OR 1=1; --', "NEAR(a b) OR x:y", "a' | 'b", "^start -not {col}: x", "'; DROP TABLE calls"])
def test_operators_of_either_store_are_only_words_to_them(q: str) -> None:
    """Nothing in `q` reaches a store as syntax: each term is a quoted string of letters and digits."""
    query = parse_query(q)
    for term in query.terms:
        assert all(word.isalnum() for word in term.words)
    assert query.fts5().count('"') == 2 * len(query.terms)
    syntax = re.sub(r"'[^\W_]+'", "", query.tsquery())  # every lexeme quoted, nothing else inside quotes
    assert set(syntax) <= set("()&<->:* ")


@pytest.mark.parametrize(
    ("q", "reason"),
    [
        ("", "no word"),
        ("   --- ... !!!", "no word"),
        ("x" * (MAX_QUERY_CHARS + 1), "longer than"),
        (" ".join(["w"] * 17), "more than 16 words"),
        ("a*", "prefix"),
    ],
)
def test_a_q_that_cannot_be_searched_says_why(q: str, reason: str) -> None:
    with pytest.raises(QueryError, match=reason):
        parse_query(q)


def test_the_same_term_twice_is_asked_once() -> None:
    assert parse_query("refund REFUND refund").terms == (Term(("refund",)),)


def test_a_snippet_marks_every_match_and_only_whole_words() -> None:
    query = parse_query('card "late fee" pay*')
    snippet = query.snippet("Your card was declined, a late fee applies; pay by card or discard it: payment due.")
    assert snippet.text.startswith("Your card")
    assert marked(snippet.text, snippet.marks) == ["card", "late fee", "pay", "card", "payment"]


def test_a_snippet_of_a_long_final_is_cut_around_its_first_match() -> None:
    text = "filler words " * 40 + "and then the refund arrived " + "more words " * 40
    snippet = parse_query("refund").snippet(text)
    assert snippet.text.startswith("…")
    assert snippet.text.endswith("…")
    assert len(snippet.text) <= 170
    assert marked(snippet.text, snippet.marks) == ["refund"]


def test_a_snippet_matches_without_case_or_accents() -> None:
    snippet = parse_query("muller").snippet("Mr. MÜLLER called")
    assert marked(snippet.text, snippet.marks) == ["MÜLLER"]


def test_filters_are_checked_and_name_the_parameter() -> None:
    filters = parse_filters(
        {"status": "ended", "started_after": "10", "started_before": "20", "sentiment_below": "-0.25", "q": "refund"}
    )
    assert filters == CallFilter("ended", 10, 20, -0.25, parse_query("refund"))
    assert parse_filters({}) == CallFilter()  # no filter: the plain list


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"status": "dead"}, "status"),
        ({"started_after": "yesterday"}, "started_after"),
        ({"started_before": "1.5"}, "started_before"),
        ({"started_after": "-1"}, "started_after"),
        ({"started_before": str(2**63)}, "started_before"),
        ({"sentiment_below": "nan"}, "sentiment_below"),
        ({"sentiment_below": "2"}, "sentiment_below"),
        ({"sentiment_below": "low"}, "sentiment_below"),
        ({"q": "!!!"}, "q holds no word"),
        ({"q": ""}, "q holds no word"),  # an empty search is a mistake to say, not "every call"
        ({"q": "   "}, "q holds no word"),
    ],
)
def test_a_bad_filter_is_refused_with_its_name(params: dict[str, str], name: str) -> None:
    with pytest.raises(FilterError, match=name):
        parse_filters(params)
