"""Full-text search over final transcripts, sans-I/O: what `q` means, as each store asks it, and
the snippet that shows a hit.

`q` is words, all of which a call's final must hold (docs/protocol.md, Listing and searching
calls): `refund card` finds finals with both words, `"late fee"` the two words in a row, `appoint*`
any word that starts so. A word is a run of letters and digits, compared without case (SQLite
also ignores accents); everything else separates words, so `RFC-1234` is the phrase `rfc 1234`.
Nothing in `q` is an operator the stores would read: each word goes to them as a quoted string,
so a hostile `q` can only be a query that finds nothing.

The same parsed query becomes SQLite FTS5's MATCH expression (`fts5`) and PostgreSQL's
`to_tsquery` text (`tsquery`), and marks the words it matched in a snippet (`snippet`), so both
stores answer the same question and show their hits alike.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_QUERY_CHARS", "MAX_TERMS", "Query", "QueryError", "Snippet", "Term", "parse_query", "words_of"]

MAX_QUERY_CHARS: Final = 256
MAX_TERMS: Final = 16  # words in all, phrases' words included: each costs the index a look-up
MIN_PREFIX_CHARS: Final = 2  # `a*` would read every word of the index that starts with a
SNIPPET_CHARS: Final = 160  # about two lines of a transcript around the first match

_WORD = re.compile(r"[^\W_]+")
_CHUNK = re.compile(r'"([^"]*)"?|(\S+)')  # a quoted phrase (closed or not), or a run of non-spaces


class QueryError(ValueError):
    """`q` cannot be searched for; the message says why (REST answers 422)."""


@dataclass(frozen=True, slots=True)
class Term:
    """Words that must follow one another in a final; `prefix`: the last one only starts there."""

    words: tuple[str, ...]
    prefix: bool = False


def fold(word: str) -> str:
    """A word as a snippet's marks compare it: lower case, accents removed."""
    if word.isascii():
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words_of(text: str) -> list[str]:
    """The words of `text` in lower case (accents stay: PostgreSQL's index keeps them)."""
    return [word.lower() for word in _WORD.findall(text)]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed `q`: every term must match (AND)."""

    terms: tuple[Term, ...]

    def fts5(self) -> str:
        """The terms as an FTS5 expression: phrases of quoted words (FTS5 reads nothing else in
        a string), `*` after a prefix term."""
        return " AND ".join(_fts5_term(term) for term in self.terms)

    def tsquery(self) -> str:
        """The terms as `to_tsquery('simple', …)` text: words joined by `<->` (followed by), `:*`
        on a prefix, terms by `&`. Words hold letters and digits only: nothing to escape."""
        return " & ".join(_ts_term(term) for term in self.terms)

    def snippet(self, text: str) -> Snippet:
        """Up to `SNIPPET_CHARS` of `text` around its first match, with every match marked."""
        spans = self._matches(text)
        start, end = _window(text, spans[0] if spans else (0, 0))
        body = text[start:end]
        lead = "…" if start > 0 else ""
        tail = "…" if end < len(text) else ""
        shift = len(lead) - start
        marks = tuple((a + shift, b + shift) for a, b in spans if a >= start and b <= end)
        return Snippet(lead + body + tail, marks)

    def _matches(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every run of `text`'s words that one term matches, in text order."""
        found = [(m.start(), m.end(), fold(m.group())) for m in _WORD.finditer(text)]
        words = [w for _, _, w in found]
        spans: list[tuple[int, int]] = []
        for term in self.terms:
            wanted = [fold(word) for word in term.words]
            n = len(wanted)
            for i in range(len(found) - n + 1):
                if _matches_at(wanted, term.prefix, words[i : i + n]):
                    spans.append((found[i][0], found[i + n - 1][1]))
        return _merged(sorted(spans))


@dataclass(frozen=True, slots=True)
class Snippet:
    """A hit's text and where its matches are in it (code point offsets, end excluded)."""

    text: str
    marks: tuple[tuple[int, int], ...]


def parse_query(q: str) -> Query:
    """`q` as terms; `QueryError` when it is too long, holds no word, or too many."""
    if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f"q is longer than {MAX_QUERY_CHARS} characters")
    terms: list[Term] = []
    for match in _CHUNK.finditer(q):
        phrase, bare = match.group(1), match.group(2)
        chunk = phrase if phrase is not None else bare
        words = tuple(words_of(chunk))
        if not words:
            continue
        prefix = phrase is None and chunk.endswith("*")
        if prefix and len(words[-1]) < MIN_PREFIX_CHARS:
            raise QueryError(f"a prefix (word*) needs at least {MIN_PREFIX_CHARS} letters or digits")
        terms.append(Term(words, prefix))
    if not terms:
        raise QueryError("q holds no word to search for (letters or digits)")
    if sum(len(term.words) for term in terms) > MAX_TERMS:
        raise QueryError(f"q holds more than {MAX_TERMS} words")
    return Query(tuple(dict.fromkeys(terms)))


def _fts5_term(term: Term) -> str:
    phrase = '"' + " ".join(term.words) + '"'
    return phrase + " *" if term.prefix else phrase


def _ts_term(term: Term) -> str:
    lexemes = [f"'{word}'" for word in term.words]
    if term.prefix:
        lexemes[-1] += ":*"
    joined = " <-> ".join(lexemes)
    return f"({joined})" if len(lexemes) > 1 else joined


def _matches_at(wanted: list[str], prefix: bool, words: list[str]) -> bool:
    """Whether `words` are the term's `wanted` words (folded), the last one as a prefix if so."""
    *whole, last = wanted
    if words[: len(whole)] != whole:
        return False
    return words[-1].startswith(last) if prefix else words[-1] == last


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _window(text: str, first: tuple[int, int]) -> tuple[int, int]:
    """`SNIPPET_CHARS` of `text` with the first match about a third of the way in, cut at spaces."""
    if len(text) <= SNIPPET_CHARS:
        return 0, len(text)
    start = max(0, min(first[0] - SNIPPET_CHARS // 3, len(text) - SNIPPET_CHARS))
    if start > 0 and (space := text.find(" ", start, first[0])) != -1:
        start = space + 1
    end = min(len(text), start + SNIPPET_CHARS)
    if end < len(text) and (space := text.rfind(" ", max(first[1], start), end)) > first[1]:
        end = space
    return start, end
