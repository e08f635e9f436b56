"""A seeded corpus of what callers say: card numbers, SSNs, phone numbers, emails and IBANs, written
and spoken the way a recognizer writes them, inside sentences, beside near misses (order numbers,
times, prices, dates, counts, short numbers, numbers failing their checksum) that must stay.

Every sample knows where its personal data is (`Sample.truth`), so tests/test_pii.py can count
precision and recall per kind. The generator has its own Luhn and mod-97, not the server's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import phonenumbers

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FIRST = ("john", "maria", "wei", "fatima", "lucas", "aiko", "olga", "samuel", "priya", "diego", "emma", "noah")
LAST = ("smith", "garcia", "chen", "khan", "silva", "tanaka", "ivanova", "okafor", "patel", "lopez", "brown")
DOMAINS = ("gmail.com", "outlook.com", "example.org", "acme.io", "mail.co.uk", "yahoo.com", "corp.net")
AREA_CODES = ("212", "415", "312", "617", "202", "303", "206", "512", "646", "718", "305", "404", "713", "214")


@dataclass
class Sample:
    """One utterance; `truth` holds (start, end, kind) of every piece of personal data in it."""

    text: str = ""
    truth: list[tuple[int, int, str]] = field(default_factory=list)
    form: str = ""

    def add(self, piece: str, kind: str | None = None) -> Sample:
        if kind is not None:
            self.truth.append((len(self.text), len(self.text) + len(piece), kind))
        self.text += piece
        return self


# ---- checksums, the generator's own ------------------------------------------------------------


def luhn_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def iban_check(country: str, bban: str) -> str:
    moved = bban + country + "00"
    number = int("".join(str(int(ch, 36)) for ch in moved))
    return f"{98 - number % 97:02d}"


# ---- how numbers are said ---------------------------------------------------------------------


def spoken(rng: random.Random, digits: str) -> str:
    """Digit by digit, as a recognizer writes it: sometimes "oh" for zero, "double five" for 55."""
    words, i = [], 0
    while i < len(digits):
        d = digits[i]
        word = "oh" if d == "0" and rng.random() < 0.5 else DIGIT_WORDS[int(d)]
        if i + 1 < len(digits) and digits[i + 1] == d and rng.random() < 0.4:
            words.append(f"double {word}")
            i += 2
            continue
        words.append(word)
        i += 1
    return " ".join(words)


def grouped(digits: str, sizes: list[int]) -> list[str]:
    out, at = [], 0
    for size in sizes:
        out.append(digits[at : at + size])
        at += size
    return out


def say(rng: random.Random, digits: str, sizes: list[int], forms: tuple[str, ...]) -> tuple[str, str]:
    """One of the ways to write `digits` (grouped as `sizes`): returns (text, form)."""
    form = rng.choice(forms)
    groups = grouped(digits, sizes)
    if form == "spaced":
        return " ".join(groups), form
    if form == "dashed":
        return "-".join(groups), form
    if form == "plain":
        return digits, form
    if form == "spoken":
        return spoken(rng, digits), form
    return ", ".join(spoken(rng, g) for g in groups), form  # spoken with a pause between groups


# ---- personal data ------------------------------------------------------------------------------


def card(rng: random.Random, valid: bool = True) -> tuple[str, list[int]]:
    prefix, length, sizes = rng.choice([
        ("4", 16, [4, 4, 4, 4]), (f"5{rng.randint(1, 5)}", 16, [4, 4, 4, 4]),
        (rng.choice(["34", "37"]), 15, [4, 6, 5]), ("6011", 16, [4, 4, 4, 4]),
    ])  # fmt: skip
    payload = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    check = luhn_digit(payload)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    return payload + check, sizes


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


def invalid_ssn(rng: random.Random) -> str:
    good = ssn(rng)
    bad = rng.choice([("666", 0), ("000", 0), (f"9{rng.randint(0, 99):02d}", 0), ("00", 3), ("0000", 5)])
    return good[: bad[1]] + bad[0] + good[bad[1] + len(bad[0]) :]


def us_phone(rng: random.Random) -> str:
    while True:
        exchange = rng.randint(200, 999)
        if exchange % 100 == 11 or exchange == 555:
            continue
        digits = f"{rng.choice(AREA_CODES)}{exchange}{rng.randint(0, 9999):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(digits, "US")):
            return digits


def uk_phone(rng: random.Random) -> str:
    while True:
        digits = f"20{rng.randint(3, 8)}{rng.randint(0, 9999999):07d}"
        if phonenumbers.is_valid_number(phonenumbers.parse("+44" + digits, None)):
            return digits


def email(rng: random.Random) -> tuple[str, str]:
    first, last, domain = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    form = rng.choice(["written", "written", "spoken", "mixed"])
    if form == "written":
        local = rng.choice([f"{first}.{last}", f"{first}{last}{rng.randint(1, 99)}", f"{first[0]}_{last}"])
        return f"{local}@{domain}", form
    joiner = rng.choice([" dot ", " underscore "])
    said_domain = domain.replace(".", " dot ")
    if form == "spoken":
        return f"{first}{joiner}{last} at {said_domain}", form
    return f"{first}.{last} at {said_domain}", form


def iban(rng: random.Random, valid: bool = True) -> tuple[str, str, str]:
    """(country, check digits + BBAN, form); digits-only countries may be spoken."""
    country = rng.choice(["DE", "ES", "FR", "GB", "NL"])
    digits = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    bank = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
    bban = {"DE": digits(18), "ES": digits(20), "FR": digits(23), "GB": bank + digits(14), "NL": bank + digits(10)}[
        country
    ]
    check = iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 50)) % 97 + 2:02d}" if check != "97" else "12"
    rest = check + bban
    forms = ["spaced", "plain", "spoken"] if rest.isdigit() else ["spaced", "plain"]
    return country, rest, rng.choice(forms)


# ---- sentences ---------------------------------------------------------------------------------

CARD_LEADS = ("my card number is ", "it's ", "sure, the card is ", "the number on the card is ", "")
SSN_LEADS = ("it's ", "the number is ", "sure, ", "")
SSN_CONTEXT_LEADS = ("my social security number is ", "the SSN is ", "social is ")
PHONE_LEADS = ("you can call me at ", "my number is ", "call back on ", "it's ", "")
EMAIL_LEADS = ("send it to ", "my email is ", "you can reach me at ", "it's ")
IBAN_LEADS = ("my IBAN is ", "please transfer it to ", "the account is ")
TAILS = ("", ".", " please.", ", thanks", " if that helps", ", and that's it")


def card_sample(rng: random.Random) -> Sample:
    number, sizes = card(rng)
    text, form = say(rng, number, sizes, ("spaced", "dashed", "plain", "spoken", "paused"))
    return Sample(form=f"card/{form}").add(rng.choice(CARD_LEADS)).add(text, "card").add(rng.choice(TAILS))


def ssn_sample(rng: random.Random) -> Sample:
    number = ssn(rng)
    form = rng.choice(["dashed", "spaced", "paused", "spoken", "plain"])
    if form in ("spoken", "plain"):  # a bare nine-digit number is an SSN only when the words say so
        text = spoken(rng, number) if form == "spoken" else number
        lead = rng.choice(SSN_CONTEXT_LEADS)
    else:
        text, _ = say(rng, number, [3, 2, 4], (form,))
        lead = rng.choice(SSN_LEADS + SSN_CONTEXT_LEADS)
    return Sample(form=f"ssn/{form}").add(lead).add(text, "ssn").add(rng.choice(TAILS))


def phone_sample(rng: random.Random) -> Sample:
    form = rng.choice(["paren", "dashed", "dotted", "plus1", "plus44", "spoken", "paused", "one-dashed", "toll-free"])
    if form == "plus44":
        n = uk_phone(rng)
        text = f"+44 {n[:2]} {n[2:6]} {n[6:]}"
    else:
        n = us_phone(rng)
        a, e, line = n[:3], n[3:6], n[6:]
        text = {
            "paren": f"({a}) {e}-{line}", "dashed": f"{a}-{e}-{line}", "dotted": f"{a}.{e}.{line}",
            "plus1": f"+1 {a} {e} {line}", "one-dashed": f"1-{a}-{e}-{line}", "spoken": spoken(rng, n),
            "paused": f"{spoken(rng, a)}, {spoken(rng, e)}, {spoken(rng, line)}",
            "toll-free": f"one eight hundred {spoken(rng, e)}, {spoken(rng, line)}",
        }[form]  # fmt: skip
    return Sample(form=f"phone/{form}").add(rng.choice(PHONE_LEADS)).add(text, "phone").add(rng.choice(TAILS))


def email_sample(rng: random.Random) -> Sample:
    text, form = email(rng)
    return Sample(form=f"email/{form}").add(rng.choice(EMAIL_LEADS)).add(text, "email").add(rng.choice(TAILS))


def iban_sample(rng: random.Random) -> Sample:
    country, rest, form = iban(rng)
    if form == "spoken":
        text = f"{rng.choice([country, ' '.join(country)])} {spoken(rng, rest)}"
    elif form == "spaced":
        compact = country + rest
        text = " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    else:
        text = country + rest
    return Sample(form=f"iban/{form}").add(rng.choice(IBAN_LEADS)).add(text, "iban").add(rng.choice(TAILS))


def _order(rng: random.Random) -> str:
    n = str(rng.randint(10_000, 99_999_999))
    return rng.choice([
        f"order number {n}", f"your order #{n}", f"order A{n}B", f"the reference is ORD-{rng.randint(2020, 2026)}-{n[:5]}",
        f"order number {spoken(rng, n[:5])}", f"ticket {n[:6]}",
        f"booking reference {rng.randint(2, 8)}{rng.randint(0, 10**10 - 1):010d}",  # 11 digits, no phone
        f"account {rng.randint(10**11, 10**12 - 1)}",
    ])  # fmt: skip


def _time(rng: random.Random) -> str:
    return rng.choice([
        "at ten thirty", f"at {rng.randint(1, 12)}:{rng.randint(0, 59):02d} pm", "around seven fifteen tomorrow",
        "at nine o'clock", "between two and four", "at twelve forty five", "from 9:30 to 17:45",
    ])  # fmt: skip


def _price(rng: random.Random) -> str:
    return rng.choice([
        f"${rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}", "forty nine ninety nine", "twelve hundred dollars",
        f"{rng.randint(100, 99_999):,} euros", "nineteen ninety five a month",
    ])  # fmt: skip


def _date(rng: random.Random) -> str:
    m, d, y = rng.randint(1, 12), rng.randint(1, 28), rng.randint(1990, 2030)
    return rng.choice([
        f"{m}/{d}/{y}", f"{y}-{m:02d}-{d:02d}", f"on March {d}, {y}", "the twenty first of May",
        f"born {m:02d}/{d:02d}/{y}", "twenty twenty five",
    ])  # fmt: skip


def _count(rng: random.Random) -> str:
    return rng.choice([
        f"I have {rng.randint(2, 9)} kids", f"about {rng.randint(100, 999)} people", "two tickets for four adults",
        "one moment please", f"{rng.randint(1, 30)} days ago", "just the one",
    ])  # fmt: skip


def _short(rng: random.Random) -> str:
    return rng.choice([
        f"extension {rng.randint(1000, 9999)}", f"room {rng.randint(100, 999)}", f"flight UA {rng.randint(100, 9999)}",
        f"zip code {rng.randint(10000, 99999)}", f"the last four are {spoken(rng, str(rng.randint(1000, 9999)))}",
        f"PIN {rng.randint(1000, 9999)}",
    ])  # fmt: skip


def _failing(rng: random.Random) -> str:
    """Numbers shaped like personal data that fail its check: they must stay."""
    choice = rng.randrange(6)
    if choice == 0:
        number, sizes = card(rng, valid=False)
        return say(rng, number, sizes, ("spaced", "dashed", "plain", "spoken"))[0]
    if choice == 1:
        country, rest, _ = iban(rng, valid=False)
        return country + rest
    if choice == 2:
        return say(rng, invalid_ssn(rng), [3, 2, 4], ("dashed", "spaced"))[0]
    if choice == 3:
        return rng.choice(["123-456-7890", "(111) 234-5678", "099-555-0199"])
    if choice == 4:
        return f"tracking number {rng.randint(100_000_000, 999_999_999)}"
    return rng.choice(["order it at amazon dot com", "find us at example dot com", "I'm at home", "see you at noon"])


NEAR_MISSES: dict[str, Callable[[random.Random], str]] = {
    "order": _order, "time": _time, "price": _price, "date": _date, "count": _count, "short": _short,
    "failing": _failing,
}  # fmt: skip
POSITIVES: dict[str, Callable[[random.Random], Sample]] = {
    "card": card_sample, "ssn": ssn_sample, "phone": phone_sample, "email": email_sample, "iban": iban_sample,
}  # fmt: skip


def near_miss(rng: random.Random) -> Sample:
    name = rng.choice(sorted(NEAR_MISSES))
    lead = rng.choice(("", "yes, ", "so ", "okay, it was "))
    return Sample(form=f"near/{name}").add(lead + NEAR_MISSES[name](rng)).add(rng.choice(TAILS))


def mixed(rng: random.Random) -> Sample:
    """Personal data and a near miss in one sentence, in either order."""
    kind = rng.choice(sorted(POSITIVES))
    positive = POSITIVES[kind](rng)
    miss = NEAR_MISSES[rng.choice(sorted(NEAR_MISSES))](rng)
    sample = Sample(form=f"mixed/{kind}")
    if rng.random() < 0.5:
        sample.add(miss + " and ")
        offset = len(sample.text)
        sample.text += positive.text
        sample.truth = [(s + offset, e + offset, k) for s, e, k in positive.truth]
    else:
        sample.text, sample.truth = positive.text, list(positive.truth)
        sample.add(", and " + miss)
    return sample


def corpus(seed: int = 2026, per_kind: int = 400, misses: int = 1500, mixes: int = 500) -> list[Sample]:
    """The whole corpus, the same for the same arguments."""
    rng = random.Random(seed)
    samples = [POSITIVES[kind](rng) for kind in sorted(POSITIVES) for _ in range(per_kind)]
    samples += [near_miss(rng) for _ in range(misses)]
    samples += [mixed(rng) for _ in range(mixes)]
    return samples
