"""In-process cost of redaction: µs per event of `pii.redact_event` with every kind on.

`python -m bench.pii_cost` times the ingest benchmark's events (loadgen's plain texts, which
take the fast path, and its "pii" texts, two utterances in three with personal data) and the
generated corpus of tests/pii_corpus.py, and prints the median of several repeats for each.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from bench.loadgen import MIXES, TEXTS, make_data
from callstream.pii import KINDS, Redactor, redact_event


def events(texts: str, n: int = 10_000) -> list[tuple[str, dict[str, Any]]]:
    mix = MIXES["call"]
    return [(mix[i % len(mix)], make_data(mix[i % len(mix)], i, 0, TEXTS[texts])) for i in range(n)]


def corpus_events() -> list[tuple[str, dict[str, Any]]]:
    sys.path.insert(0, ".")
    from tests.pii_corpus import corpus

    return [("transcript.final", {"speaker": "user", "text": s.text}) for s in corpus()]


def per_event_us(redactor: Redactor, batch: list[tuple[str, dict[str, Any]]], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        copies = [(kind, dict(data)) for kind, data in batch]
        t0 = time.process_time()
        for kind, data in copies:
            redact_event(redactor, kind, data)
        times.append((time.process_time() - t0) / len(copies) * 1e6)
    return statistics.median(times)


def main() -> None:
    redactor = Redactor(KINDS)
    redact_event(redactor, "transcript.final", {"text": "warm up 415-555-2671"})
    for name, batch in (("ingest mix, plain texts", events("plain")), ("ingest mix, pii texts", events("pii")),
                        ("generated corpus (every utterance a number or an email)", corpus_events())):
        print(f"{name}: {per_event_us(redactor, batch):.1f} µs an event ({len(batch):,} events)")


if __name__ == "__main__":
    main()
