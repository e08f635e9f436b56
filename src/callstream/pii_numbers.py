"""Numbers as a recognizer writes them, and the checks that tell a card, an SSN or an IBAN.

A speech recognizer writes "4111 1111 …", "four one one one, one one one one …", "oh" for zero,
"double five" for 55. `number_runs` finds every stretch of digits and number words joined only
by spaces and light punctuation, and reads it as digits while remembering which characters
of the original text each digit came from, so a match on the digits redacts the original span.

A run is cut into segments where the speaker or the writer paused: punctuation (", - . / ( )"),
or a space between two written digit groups. Digits spoken one after the other form one
segment. A match must start and end on segment edges, so a number is never found inside a
longer one that failed its check (a 16-digit number failing Luhn holds no "phone number").
Sans-I/O: text in, runs out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Run", "Segment", "card_shaped", "card_valid", "iban_valid", "luhn_valid", "number_runs", "ssn_valid"]

_UNITS: Final = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_TEENS: Final = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
    "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
}  # fmt: skip
_TENS: Final = {
    "twenty": "2", "thirty": "3", "forty": "4", "fifty": "5", "sixty": "6", "seventy": "7", "eighty": "8",
    "ninety": "9",
}  # fmt: skip
_REPEATS: Final = {"double": 2, "triple": 3}
SHORTEST: Final = 7  # digits in the shortest number worth redacting (a phone number without "+" has 8)
_POWERS: Final = {"hundred": "00", "thousand": "000"}
NUMBER_WORDS: Final = frozenset(_UNITS) | frozenset(_TEENS) | frozenset(_TENS) | frozenset(_REPEATS) | frozenset(
    _POWERS
)

_WORD_ALT = "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
# A unit: ASCII digits or a number word, never touching a letter ("A1B2", "3pm", "1st" are no units).
# The digits are possessive, so "123rd" does not shrink to a "12" that no letter touches.
_UNIT = rf"(?<![^\W_])(?:[0-9]++|(?:{_WORD_ALT}))(?![^\W\d_])"
_SEP = r"[ \t,\-./()]"
# The same on text already lower-cased (ASCII, so no offset moves): a third of the time.
RUN: Final = re.compile(rf"{_UNIT}(?:{_SEP}*{_UNIT})*", re.IGNORECASE)
RUN_LOWER: Final = re.compile(rf"{_UNIT}(?:{_SEP}*{_UNIT})*")
_PIECE: Final = re.compile(r"(?P<digits>[0-9]+)|(?P<word>[^\W\d_]+)")
_PAUSE: Final = re.compile(r"[,\-./()]")
_HAS_LETTER: Final = re.compile(r"[^\W\d_]")
_DIGITS: Final = re.compile(r"[0-9]+")


@dataclass(slots=True)
class Segment:
    """Digits read between two pauses; `ends[i]` is where, in the text, digit i's unit ends."""

    start: int
    digits: list[str] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.ends[-1]


@dataclass(slots=True)
class Run:
    """Digits and number words joined only by separators: one or more numbers, as segments."""

    start: int
    end: int
    segments: list[Segment]
    plus: bool  # a "+" or "plus" right before it: an international phone number


def _read_word(word: str, pending: list[str], repeat: int) -> tuple[str, int]:
    """The digits one number word stands for, given the run's digits so far (`pending`) and a
    "double"/"triple" before it (`repeat`); returns (digits, repeat for the next word)."""
    if word in _UNITS:
        return _UNITS[word] * max(repeat, 1), 0
    if word in _TEENS:
        return _TEENS[word], 0
    if word in _TENS:
        return _TENS[word] + "0", 0
    return (_POWERS[word] if pending else ""), 0


def _tens_and_unit(prev_word: str | None, word: str) -> bool:
    """"twenty three" is 23, not 203: a unit right after a tens word replaces its zero."""
    return prev_word in _TENS and word in _UNITS and word not in ("zero", "oh")


def _pieces(text: str, start: int, end: int) -> list[Segment]:
    segments: list[Segment] = []
    current: Segment | None = None
    prev_kind = prev_word = None
    repeat, pause, said_from, gap_from = 0, False, -1, start
    for piece in _PIECE.finditer(text, start, end):
        kind = piece.lastgroup
        pause = pause or _PAUSE.search(text, gap_from, piece.start()) is not None
        gap_from = piece.end()
        if kind == "digits":
            digits = piece.group()
            boundary = True  # a written group is a segment of its own, whatever came before
            prev_word = None
        else:
            word = piece.group().lower()
            if current is not None and _tens_and_unit(prev_word, word) and not pause:
                current.digits[-1] = _UNITS[word]
                current.ends[-1] = piece.end()
                prev_word = None
                continue
            if word in _REPEATS:  # "double five": the span starts at "double"
                repeat, said_from = _REPEATS[word], piece.start()
                continue
            digits, repeat = _read_word(word, current.digits if current else [], repeat)
            boundary = pause or prev_kind == "digits"
            prev_word = word
        if not digits:
            continue
        if current is None or boundary:
            current = Segment(said_from if said_from >= 0 else piece.start())
            segments.append(current)
        prev_kind, pause, said_from = kind, False, -1
        for d in digits:
            current.digits.append(d)
            current.ends.append(piece.end())
    return segments


def number_runs(text: str, lower: str | None = None) -> list[Run]:
    """Every run of digits and number words in `text`, as segments of digits. `lower`:
    `text.lower()` when `text` is ASCII (the caller has it already)."""
    runs = []
    for match in RUN_LOWER.finditer(lower) if lower is not None else RUN.finditer(text):
        if match.end() - match.start() < SHORTEST:
            continue  # "two", "214": too few characters to hold enough digits
        if _HAS_LETTER.search(match.group()) is None:  # written digits only: each group a segment
            segments = [Segment(d.start(), list(d.group()), [d.end()] * len(d.group())) for d in _DIGITS.finditer(match.group())]
            for segment in segments:
                segment.start += match.start()
                segment.ends = [end + match.start() for end in segment.ends]
        else:
            segments = _pieces(text, match.start(), match.end())
        if not segments:
            continue
        before = text[max(0, match.start() - 6) : match.start()].rstrip().lower()
        plus = before.endswith(("+", "plus"))
        runs.append(Run(match.start(), match.end(), segments, plus))
    return runs


_DOUBLED: Final = {str(d): (d * 2 - 9 if d > 4 else d * 2) for d in range(10)}


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries in its last digit."""
    total = sum(map(int, digits[-1::-2])) + sum(map(_DOUBLED.__getitem__, digits[-2::-2]))
    return total % 10 == 0


# Issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay):
# a number starting otherwise is no card, whatever its checksum.
_CARD_PREFIX: Final = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6011|64[4-9]|65|35|3[068]|62")


def card_shaped(digits: str) -> bool:
    """13 to 19 digits with a card network's prefix, whatever the checksum."""
    return 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None


def card_valid(digits: str) -> bool:
    """A card number: `card_shaped` with a valid Luhn checksum."""
    return card_shaped(digits) and luhn_valid(digits)


def ssn_valid(digits: str) -> bool:
    """Nine digits the Social Security Administration could have issued: area 001-899 but 666,
    group 01-99, serial 0001-9999."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# IBAN length by country (ISO 13616 registry): a country not listed has no IBAN.
IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_valid(compact: str) -> bool:
    """An IBAN without spaces: its country's length and the ISO 7064 mod-97 check (remainder 1)."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit() or not compact.isalnum():
        return False
    if not compact.isascii():
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1
