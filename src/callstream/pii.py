"""Redaction of personal data in transcripts and function calls (docs/privacy.md).

`Redactor.redact(text)` returns the text with each card number, SSN, email, phone number and
IBAN replaced by `[card]`, `[ssn]`, `[email]`, `[phone]`, `[iban]`, and the kinds it found.
Numbers are found written ("4111 1111 …", "(415) 555-2671") and spoken the way a recognizer
writes them ("four one one one, …", "oh", "double five"): `pii_numbers` reads both as digits and
keeps where each digit came from, so the original span is the one replaced. Every match is
checked before it is redacted (Luhn and the networks' prefixes for cards, the issued ranges for
SSNs, libphonenumber for phones, mod-97 and the country's length for IBANs), so order numbers,
times, prices and dates stay as they are.

Deterministic: the same text always gives the same spans, so a partial and the final that
repeats its text are redacted alike. Sans-I/O; `redact_event` applies it to one event's data.
"""

from __future__ import annotations

import bisect
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from callstream.pii_numbers import (
    IBAN_LENGTHS,
    NUMBER_WORDS,
    SHORTEST,
    Run,
    Segment,
    card_shaped,
    card_valid,
    iban_valid,
    luhn_valid,
    number_runs,
    ssn_valid,
)

__all__ = ["KINDS", "Redactor", "Span", "parse_kinds", "redact_event"]

KINDS: Final = ("card", "email", "iban", "phone", "ssn")


_EMAIL: Final = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
_ATOM = r"[a-z0-9]+"
_JOIN = r"(?:\s+(?:dot|underscore|dash|hyphen)\s+|[._-])"
_DOT = r"(?:\s+dot\s+|\.)"
_TLD = r"(?:com|net|org|edu|gov|io|co|us|uk|de|fr|ca|info|biz|me|ai|app|dev)"
# Most of a call holds no digit, no number word and no "@" or "at": such text costs two scans.
_DIGIT: Final = re.compile(r"[0-9]")
_PUNCTUATION_TO_SPACE: Final = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
_NUMBER_WORDS: Final = frozenset(word.encode() for word in NUMBER_WORDS)
_WORD: Final = re.compile(r"[^\W\d_]+")
_SPOKEN_EMAIL_TEXT = (
    rf"(?<![\w.])(?P<local>{_ATOM}(?:{_JOIN}{_ATOM})*)(?:\s+at\s+|\s*@\s*)[a-z0-9-]+(?:{_DOT}[a-z0-9-]+)*{_DOT}{_TLD}(?![\w-])"
)
_SPOKEN_EMAIL: Final = re.compile(_SPOKEN_EMAIL_TEXT, re.IGNORECASE)
_SPOKEN_EMAIL_LOWER: Final = re.compile(_SPOKEN_EMAIL_TEXT)
# "order it at amazon dot com" names a website, not a mailbox: a lone common word before "at"
# is no local part.
_NOT_LOCAL: Final = frozenset(
    ["it", "us", "me", "you", "him", "her", "them", "that", "this", "one", "online", "here", "there", "now", "work", "works", "shop", "buy", "order", "look", "find", "visit", "go", "be", "is", "are", "was", "were", "available", "sold", "listed", "live", "home", "website", "site", "page", "up", "out", "in", "on", "and", "or", "but", "email", "mail", "write", "reach", "contact", "call"]
)
_IBAN: Final = re.compile(r"(?<![^\W_])[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]){10,31}", re.IGNORECASE)
_COUNTRY_BEFORE: Final = re.compile(r"(?<![^\W_])([a-z])\s?([a-z])\s*$", re.IGNORECASE)
# "my social security number is", "the SSN is": the word, then no digit until the number.
_SSN_CONTEXT: Final = re.compile(r"(?:social|\bssn|\bs\s?s\s?n|security number)\b[^0-9]{0,25}$", re.IGNORECASE)
_SSN_SHAPE: Final = [3, 2, 4]
_MIN_NATIONAL_DIGITS: Final = 8
_PARSES_PER_TEXT: Final = 64  # far more phone numbers than one utterance or one function call holds
_CARD_FIRST: Final = frozenset("23456")  # the first digit of every card network's prefix
_LONGEST: Final = 19  # digits in the longest card number (a phone number has at most 15)
_SHORTEST_BBAN: Final = min(IBAN_LENGTHS.values()) - 2  # digits after the country code, at least
_CODE: Final = re.compile(r"[^\W\d_][0-9]|[0-9][^\W\d_]")


@dataclass(frozen=True, slots=True)
class Span:
    """Characters `start:end` of the text hold personal data of `kind`."""

    start: int
    end: int
    kind: str


def parse_kinds(value: str | Iterable[str]) -> tuple[str, ...]:
    """`"card,ssn"` (or a list) as sorted unique kinds; `all` is every kind, `""` none.
    Raises ValueError naming an unknown kind."""
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = {item.strip().lower() for item in items if item.strip()}
    if "all" in kinds:
        kinds = (kinds - {"all"}) | set(KINDS)
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kind {', '.join(unknown)}; choose from {', '.join(KINDS)} (or all)")
    return tuple(sorted(kinds))


class Redactor:
    """Finds and replaces the enabled kinds of personal data in text."""

    def __init__(self, kinds: Iterable[str], region: str = "US") -> None:
        self.kinds = frozenset(parse_kinds(kinds))
        self.region = region.upper()
        self._numbers = bool(self.kinds & {"card", "iban", "phone", "ssn"})
        self._pn: Any = None
        self._lengths: frozenset[int] = frozenset()
        self._trunk = ""
        self._national: re.Pattern[str] | None = None
        self._parses_left = 0  # libphonenumber parses this text may still take (`spans` sets it)
        self._card_lengths = frozenset(range(13, _LONGEST + 1)) if "card" in self.kinds else frozenset()
        wanted = {9} if "ssn" in self.kinds else set()
        if "phone" in self.kinds:
            import phonenumbers  # only a server that redacts phone numbers loads its metadata

            if self.region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"unknown phone region {region!r}; an ISO 3166 code such as US or GB")
            self._pn = phonenumbers
            metadata = phonenumbers.PhoneMetadata.metadata_for_region(self.region)
            desc = metadata.general_desc if metadata is not None else None
            self._lengths = frozenset(desc.possible_length or ()) if desc is not None else frozenset()
            self._trunk = (metadata.national_prefix or "") if metadata is not None else ""
            pattern = desc.national_number_pattern if desc is not None else None
            self._national = re.compile(pattern) if pattern else None
            lengths = self._lengths or frozenset(range(_MIN_NATIONAL_DIGITS, 16))
            wanted |= {n + extra for n in lengths for extra in (0, len(self._trunk))}
        self._lengths_wanted = frozenset(n for n in wanted if n >= _MIN_NATIONAL_DIGITS or n == 9)

    def redact(self, text: str) -> tuple[str, set[str]]:
        """`text` with every span found replaced by `[kind]`, and the kinds found."""
        spans = self.spans(text)
        if not spans:
            return text, set()
        parts, at = [], 0
        for span in spans:
            parts += [text[at : span.start], f"[{span.kind}]"]
            at = span.end
        parts.append(text[at:])
        return "".join(parts), {s.kind for s in spans}

    def spans(self, text: str) -> list[Span]:
        """Every span of personal data in `text`, in order, none overlapping."""
        if not self.kinds:
            return []
        self._parses_left = _PARSES_PER_TEXT
        has_digit = _DIGIT.search(text) is not None
        lower = text.lower()
        ascii_lower = lower if text.isascii() else None  # same offsets: the regexes need no IGNORECASE
        words = _words(lower, ascii_lower is not None)
        found: list[Span] = []
        if "email" in self.kinds and ("@" in text or (b"at" in words and (b"dot" in words or "." in text))):
            found += self._emails(text, ascii_lower)
        if "iban" in self.kinds and has_digit:
            found += self._written_ibans(text)
        if self._numbers and (has_digit or not _NUMBER_WORDS.isdisjoint(words)):
            for run in number_runs(text, ascii_lower):
                found += self._run_spans(text, run)
        return _without_overlaps(found) if found else found

    # ---- emails and written IBANs ---------------------------------------------------------

    @staticmethod
    def _emails(text: str, lower: str | None) -> list[Span]:
        spans = [Span(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
        spoken = _SPOKEN_EMAIL_LOWER.finditer(lower) if lower is not None else _SPOKEN_EMAIL.finditer(text)
        for m in spoken:
            if m.group("local").lower() not in _NOT_LOCAL:
                spans.append(Span(m.start(), m.end(), "email"))
        return spans

    @staticmethod
    def _written_ibans(text: str) -> list[Span]:
        """"DE89 3704 0044 …": the match may run on into the next words; the country's length says
        where the IBAN ends, which must be the end of a group."""
        spans = []
        at = 0
        while (m := _IBAN.search(text, at)) is not None:
            at = m.start() + 1  # the match may have run on over the start of the next IBAN
            length = IBAN_LENGTHS.get(m.group()[:2].upper())
            if length is None:
                continue
            compact, end = [], m.start()
            for end in range(m.start(), m.end()):
                if text[end].isalnum():
                    compact.append(text[end])
                    if len(compact) == length:
                        break
            after = end + 1
            if len(compact) == length and not text[after : after + 1].isalnum() and iban_valid("".join(compact)):
                spans.append(Span(m.start(), after, "iban"))
        return spans

    # ---- numbers ------------------------------------------------------------------------------

    def _run_spans(self, text: str, run: Run) -> list[Span]:
        """Matches on whole segments of the run, longest first from the left. A run right after a
        code of letters and digits ("DE89 3704 …", "A1B2 …") is the rest of that code."""
        segments = run.segments
        digits = "".join(d for s in segments for d in s.digits)
        if len(digits) < SHORTEST:
            return []
        before = text[max(0, run.start - 40) : run.start].split()
        if (before and _CODE.search(before[-1])) or self._failed_card(digits):
            return []
        offsets = [0]
        for segment in segments:
            offsets.append(offsets[-1] + len(segment.digits))
        spans: list[Span] = []
        i = 0
        if "iban" in self.kinds and len(digits) >= _SHORTEST_BBAN and (iban := self._spoken_iban(text, run)):
            spans.append(iban[0])
            i = iban[1]
        while i < len(segments):
            # Only segments that keep the digits within a card's length: linear in a long run.
            last = min(len(segments), bisect.bisect_right(offsets, offsets[i] + _LONGEST) - 1) - 1
            plus, card_first = run.plus and i == 0, digits[offsets[i]] in _CARD_FIRST
            for j in range(last, i - 1, -1):
                count = offsets[j + 1] - offsets[i]
                if count < SHORTEST:
                    break
                if not (plus or count in self._lengths_wanted or (card_first and count in self._card_lengths)):
                    continue  # no enabled kind has numbers this long (or a card none starting so)
                found = digits[offsets[i] : offsets[j + 1]]
                kind = self._kind(text, found, segments[i : j + 1], plus)
                if kind is not None:
                    spans.append(Span(_opening(text, segments[i].start, segments[j].end), segments[j].end, kind))
                    i = j
                    break
            i += 1
        return spans

    def _failed_card(self, digits: str) -> bool:
        """A whole run shaped like a card that fails Luhn is one long number, not several: no part
        of it is searched ("3478 222463 10006", a mistyped Amex, holds no phone number)."""
        return "card" in self.kinds and card_shaped(digits) and not luhn_valid(digits)

    def _kind(self, text: str, digits: str, segments: list[Segment], plus: bool) -> str | None:
        count = len(digits)
        if not SHORTEST <= count <= _LONGEST:
            return None
        if "card" in self.kinds and card_valid(digits):
            return "card"
        if "ssn" in self.kinds and count == 9 and ssn_valid(digits) and self._ssn_shaped(text, segments):
            return "ssn"
        if "phone" in self.kinds and count <= 15 and self._phone(digits, plus):
            return "phone"
        return None

    @staticmethod
    def _ssn_shaped(text: str, segments: list[Segment]) -> bool:
        """Nine digits are an SSN when grouped 3-2-4, or when the words before say so: a bare
        nine-digit number is as likely a tracking or order number."""
        if [len(s.digits) for s in segments] == _SSN_SHAPE:
            return True
        start = segments[0].start
        return _SSN_CONTEXT.search(text, max(0, start - 60), start) is not None

    def _phone(self, digits: str, plus: bool) -> bool:
        """libphonenumber's `is_valid_number`. Without a "+", at least 8 digits: a few regions'
        metadata accept 7 digits, and "3/10/2009" is a date."""
        if not plus and (len(digits) < _MIN_NATIONAL_DIGITS or not self._possible(digits)):
            return False
        if self._parses_left <= 0:
            return True  # a text made of thousands of candidates: hide them rather than stall the node
        self._parses_left -= 1
        pn = self._pn
        try:
            number = pn.parse(f"+{digits}" if plus else digits, None if plus else self.region)
        except pn.NumberParseException:
            return False
        if not plus and len(digits) > len(str(number.national_number)) + 1:
            return False  # more than a trunk prefix before the number: a longer number, not a phone
        return bool(pn.is_valid_number(number))

    def _possible(self, digits: str) -> bool:
        """A length the region's numbers have, with or without its trunk prefix ("1", "0"), and
        the region's pattern: the cheap test that spares most candidates libphonenumber's parse."""
        n, national = len(digits), digits
        if self._lengths and n not in self._lengths:
            if not (digits.startswith(self._trunk) and n - len(self._trunk) in self._lengths):
                return False
            national = digits[len(self._trunk) :]
        return self._national is None or self._national.fullmatch(national) is not None

    @staticmethod
    def _spoken_iban(text: str, run: Run) -> tuple[Span, int] | None:
        """"D E eight nine three seven …": a country code in letters right before a run of digits.
        Returns the span and the index of the first segment after it."""
        before = _COUNTRY_BEFORE.search(text, max(0, run.start - 8), run.start)
        if before is None:
            return None
        country = (before.group(1) + before.group(2)).upper()
        need = IBAN_LENGTHS.get(country, 0) - 2
        digits: list[str] = []
        for k, segment in enumerate(run.segments):
            for n, digit in enumerate(segment.digits):
                digits.append(digit)
                if len(digits) < need:
                    continue
                unit_ends = n + 1 == len(segment.digits) or segment.ends[n + 1] != segment.ends[n]
                if not unit_ends or not iban_valid(country + "".join(digits)):
                    return None
                return Span(before.start(), segment.ends[n], "iban"), k + (n + 1 == len(segment.digits))
        return None


def _words(lower: str, ascii: bool) -> list[bytes]:
    """The words of lower-cased text, as bytes: for ASCII text one C pass (most of what a call
    says takes no other path, so this is the cost of redaction for it)."""
    if ascii:
        return lower.encode().translate(_PUNCTUATION_TO_SPACE).split()
    return [word.encode() for word in _WORD.findall(lower)]


def _opening(text: str, start: int, end: int) -> int:
    """Where a number's span starts: with the "+" of "+44 …" and the "(" of "(415) 555-…"."""
    if text[start - 1 : start] == "(" and ")" in text[start:end]:
        start -= 1
    if text[start - 1 : start] == "+":
        start -= 1
    return start


def _without_overlaps(spans: list[Span]) -> list[Span]:
    """Spans in text order; of two that overlap, the one found first (emails, IBANs, numbers)
    stays. Each span is checked against its neighbours only: a text full of matches stays cheap."""
    starts: list[int] = []
    kept: list[Span] = []
    for span in spans:
        at = bisect.bisect_left(starts, span.start)
        if (at > 0 and kept[at - 1].end > span.start) or (at < len(kept) and kept[at].start < span.end):
            continue
        starts.insert(at, span.start)
        kept.insert(at, span)
    return kept


# ---- events ----------------------------------------------------------------------------------

_TRANSCRIPTS: Final = frozenset({"transcript.partial", "transcript.final"})
_PAYLOADS: Final = {"function.call": "args", "function.result": "result"}
_SMALLEST_NUMBER: Final = 1_000_000  # a JSON integer below this is no card, SSN, phone or IBAN


def redact_event(redactor: Redactor, event_type: str, data: dict[str, Any]) -> None:
    """Redact one validated event's data in place: a transcript's `text`, or every string (and
    every integer long enough to be a number worth hiding) inside a function call's `args` or a
    result's `result`. `data.redacted` is the server's: the kinds found, or absent when none."""
    if event_type in _TRANSCRIPTS:
        data["text"], found = redactor.redact(data["text"])
    elif (name := _PAYLOADS.get(event_type)) is not None:
        found = set()
        data[name] = _walk(redactor, data[name], found)
    else:
        return
    data.pop("redacted", None)
    if found:
        data["redacted"] = sorted(found)


def _walk(redactor: Redactor, value: Any, found: set[str]) -> Any:
    """`value` with its strings redacted, nested dicts and lists rebuilt (depth is bounded by
    `events.MAX_DEPTH`, checked before)."""
    if isinstance(value, str):
        text, kinds = redactor.redact(value)
        found |= kinds
        return text
    if isinstance(value, dict):
        return {key: _walk(redactor, item, found) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(redactor, item, found) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _SMALLEST_NUMBER:
        text, kinds = redactor.redact(str(value))
        if kinds:
            found |= kinds
            return text
    return value
