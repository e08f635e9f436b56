"""The slow-consumer policy, driven without sockets."""

from __future__ import annotations

import orjson

from callstream.events import Event
from callstream.outbox import Outbox
from callstream.server.transport import frame_payload


def event(seq: int, kind: str, speaker: str = "user", utterance: str | None = None, size: int = 0) -> Event:
    data: dict[str, object] = {"speaker": speaker, "text": "x" * size}
    if utterance is not None:
        data["utterance_id"] = utterance
    return Event("acme", "c1", seq, 0, kind, data)


def push(box: Outbox, e: Event) -> bool:
    return box.push(e.wire, e.key, e.is_partial)


def drain(box: Outbox) -> list[int]:
    seqs = []
    while (frame := box.pop()) is not None:
        seqs.append(int(orjson.loads(frame_payload(frame))["seq"]))
    return seqs


def test_under_the_high_water_mark_nothing_is_dropped() -> None:
    box = Outbox(high_water_bytes=100_000)
    for seq in range(1, 11):
        assert push(box, event(seq, "transcript.partial"))
    assert drain(box) == list(range(1, 11))


def test_superseded_partials_go_first_and_order_is_kept() -> None:
    events = [event(1, "transcript.partial", size=300)]
    events += [event(2, "agent.state", size=300), event(3, "transcript.partial", size=300)]
    events += [event(4, "transcript.final", size=300), event(5, "transcript.partial", size=300)]
    box = Outbox(high_water_bytes=len(events[0].wire) * 4 + 10)
    assert all(push(box, e) for e in events)
    # 1 and 3 were superseded by the final (4) of the same speaker; 5 is the newest partial.
    assert drain(box) == [2, 4, 5]
    assert box.statistics().dropped_partials == 2


def test_partials_of_other_speakers_or_utterances_are_not_superseded() -> None:
    events = [
        event(1, "transcript.partial", "user", "u1", size=200),
        event(2, "transcript.partial", "agent", "u2", size=200),
        event(3, "transcript.partial", "user", "u3", size=200),
    ]
    box = Outbox(high_water_bytes=len(events[0].wire) * 2 + 20)
    assert push(box, events[0])
    assert push(box, events[1])
    assert not push(box, events[2])  # nothing is superseded: the consumer is too slow
    assert box.overflowed
    assert box.statistics().dropped_partials == 0


def test_finals_are_never_dropped_only_overflow() -> None:
    finals = [event(seq, "transcript.final", size=500) for seq in range(1, 5)]
    box = Outbox(high_water_bytes=len(finals[0].wire) * 3)
    results = [push(box, e) for e in finals]
    assert results == [True, True, True, False]
    assert drain(box) == [1, 2, 3, 4]  # what was queued stays; the connection is closed instead


def test_pushing_after_overflow_is_refused() -> None:
    box = Outbox(high_water_bytes=4096)
    big = event(1, "transcript.final", size=5000)
    assert not push(box, big)
    assert not box.push(b"{}")


def test_pop_batch_takes_oldest_frames_up_to_the_size() -> None:
    box = Outbox(high_water_bytes=1 << 20)
    events = [event(seq, "transcript.final", size=100) for seq in range(1, 11)]
    for e in events:
        push(box, e)
    size = len(events[0].wire)
    first = box.pop_batch(size * 3)
    assert [orjson.loads(frame_payload(f))["seq"] for f in first] == [1, 2, 3]
    assert drain(box) == list(range(4, 11))
    assert box.queued_bytes == 0
    assert box.pop_batch(100) == []
