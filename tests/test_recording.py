"""The recording assembler (recording.py, docs/recordings.md), fed frames synchronously: the WAV
it writes is read back with the standard library's `wave` and compared sample by sample."""

from __future__ import annotations

import io
import itertools
import math
import struct
import wave
from dataclasses import dataclass

import pytest

from callstream.recording import (
    WRITE_MS,
    Assembler,
    Chunk,
    Limits,
    decode,
    read_header,
    ulaw_to_linear,
    wav_header,
)

CALLER, AGENT = 0, 1


@dataclass(frozen=True)
class Fmt:
    codec: str = "pcm_s16le"
    sample_rate: int = 16000


@dataclass(frozen=True)
class Frame:
    track: int
    ms: int
    payload: bytes
    arrived: int | None = None  # when it reaches the server; None: live, at its own ms


def arrival(frame: Frame, clock: int) -> int:
    """When the frame arrives: as given, else live (at its ms); the clock never goes back."""
    return max(clock, frame.ms if frame.arrived is None else frame.arrived)


PCM16 = Fmt()


def tone(n: int, *, freq: float = 440.0, rate: int = 16000, start: int = 0, amp: int = 12000) -> list[int]:
    return [round(amp * math.sin(2 * math.pi * freq * (start + i) / rate)) for i in range(n)]


def pcm(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def frames(track: int, samples: list[int], *, per_frame: int = 320, first_ms: int = 0, rate: int = 16000) -> list[Frame]:
    """`samples` cut into 20 ms frames (at 16 kHz) stamped with their start."""
    out = []
    for i in range(0, len(samples), per_frame):
        out.append(Frame(track, first_ms + i * 1000 // rate, pcm(samples[i : i + per_frame])))
    return out


def interleaved(*streams: list[Frame]) -> list[Frame]:
    """Frames of several tracks in the order a live producer sends them: by timestamp."""
    return sorted((f for s in streams for f in s), key=lambda f: f.ms)


def record(feed: list[tuple[Fmt, Frame]], rate: int = 16000, limits: Limits | None = None) -> tuple[list[int], list[int]]:
    """Feed the frames, finish, and read the WAV back: (caller samples, agent samples)."""
    assembler = Assembler(rate, limits=limits)
    chunks: list[Chunk] = []
    clock = 0
    for fmt, frame in feed:
        clock = arrival(frame, clock)
        chunks += assembler.feed(fmt, frame, clock)
    chunks += assembler.finish()
    data = b"".join(bytes(c) if isinstance(c, int) else c for c in chunks)
    assert len(data) == assembler.data_bytes
    with wave.open(io.BytesIO(wav_header(rate, len(data)) + data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, rate)
        both = struct.unpack(f"<{wav.getnframes() * 2}h", wav.readframes(wav.getnframes()))
    return list(both[0::2]), list(both[1::2])


def pcm_feed(frames_: list[Frame], fmt: Fmt = PCM16) -> list[tuple[Fmt, Frame]]:
    return [(fmt, f) for f in frames_]


# ---- what was sent comes back ----------------------------------------------------------------


def test_both_tracks_come_back_sample_for_sample_caller_left_agent_right() -> None:
    caller, agent = tone(16000, freq=440), tone(16000, freq=660, amp=9000)
    left, right = record(pcm_feed(interleaved(frames(CALLER, caller), frames(AGENT, agent))))
    assert left == caller
    assert right == agent


def test_a_track_that_sent_nothing_is_silent_and_one_that_started_late_is_silent_until_it_did() -> None:
    caller = tone(8000)
    agent = tone(1600, freq=300)  # 100 ms, starting 250 ms into the call
    left, right = record(pcm_feed(interleaved(frames(CALLER, caller), frames(AGENT, agent, first_ms=250))))
    assert left == caller
    assert right == [0] * 4000 + agent + [0] * (8000 - 4000 - 1600)

    only_caller, silent = record(pcm_feed(frames(CALLER, caller)))
    assert only_caller == caller
    assert silent == [0] * len(caller)


def test_a_gap_in_a_track_becomes_silence_of_its_length() -> None:
    first, second = tone(320), tone(320, start=320)
    left, _ = record(pcm_feed([Frame(CALLER, 0, pcm(first)), Frame(CALLER, 500, pcm(second))]))
    assert left == first + [0] * (8000 - 320) + second


def test_timestamps_a_few_ms_off_still_give_a_contiguous_stream() -> None:
    caller = tone(3200)
    jittered = [Frame(f.track, f.ms + (3 if i % 2 else -2) * (i > 0), f.payload) for i, f in enumerate(frames(CALLER, caller))]
    left, _ = record(pcm_feed(jittered))
    assert left == caller


# ---- mu-law ----------------------------------------------------------------------------------


def test_mulaw_is_decoded_with_the_g711_table() -> None:
    assert [ulaw_to_linear(c) for c in (0x00, 0x80, 0xFF, 0x7F, 0x70, 0xF0)] == [-32124, 32124, 0, 0, -120, 120]
    decoded = struct.unpack("<256h", decode("mulaw", bytes(range(256))))
    assert list(decoded) == [ulaw_to_linear(c) for c in range(256)]
    assert all(a < b for a, b in itertools.pairwise(decoded[:127]))  # 0x00..0x7E rise towards 0
    assert all(a > b for a, b in itertools.pairwise(decoded[128:255]))  # 0x80..0xFE fall towards 0


def test_mulaw_frames_are_recorded_as_their_16_bit_samples() -> None:
    codes = bytes(range(256)) * 4  # 128 ms at 8 kHz
    mulaw = Fmt("mulaw", 8000)
    feed = [(mulaw, Frame(AGENT, i // 8, codes[i : i + 160])) for i in range(0, len(codes), 160)]
    _, right = record(feed, rate=8000)
    assert right == [ulaw_to_linear(c) for c in codes]


def test_a_codec_change_at_the_same_rate_goes_on_and_another_rate_is_left_out() -> None:
    first = tone(160, rate=8000)
    feed = [
        (Fmt("pcm_s16le", 8000), Frame(CALLER, 0, pcm(first))),
        (Fmt("mulaw", 8000), Frame(CALLER, 20, b"\x00" * 160)),
        (Fmt("pcm_s16le", 16000), Frame(CALLER, 40, pcm(tone(320)))),  # another rate: not recorded
        (Fmt("mulaw", 8000), Frame(CALLER, 60, b"\x80" * 160)),
    ]
    left, _ = record(feed, rate=8000)
    assert left == first + [-32124] * 160 + [0] * 160 + [32124] * 160


# ---- duplicates, overlaps, order -------------------------------------------------------------


def test_a_duplicate_frame_changes_nothing() -> None:
    caller = tone(3200)
    sent = frames(CALLER, caller)
    left, _ = record(pcm_feed([*sent[:5], sent[3], sent[4], *sent[5:]]))
    assert left == caller


def test_frames_out_of_order_within_the_window_land_at_their_timestamps() -> None:
    caller = tone(3200)
    sent = frames(CALLER, caller)
    left, _ = record(pcm_feed([sent[0], sent[2], sent[1], *sent[3:]]))
    assert left == caller


def test_an_overlapping_frame_replaces_what_it_overlaps() -> None:
    base, patch = tone(1600), [7] * 320
    feed = [*frames(CALLER, base), Frame(CALLER, 40, pcm(patch))]  # 40 ms: samples 640..959
    left, _ = record(pcm_feed(feed))
    assert left == base[:640] + patch + base[960:]


def test_a_frame_older_than_what_was_written_out_is_dropped() -> None:
    assembler = Assembler(16000, limits=Limits(reorder_ms=20))
    for f in frames(CALLER, tone(16000)):
        assembler.feed(PCM16, f, f.ms)
    written = assembler.written
    assert written > 320
    assert assembler.feed(PCM16, Frame(CALLER, 0, pcm([5] * 320)), 1000) == []
    assert assembler.dropped_frames == 1
    assert assembler.written == written


# ---- bounds ----------------------------------------------------------------------------------


def test_live_audio_is_written_out_as_it_comes_while_the_other_track_is_quiet() -> None:
    assembler = Assembler(16000)
    agent = frames(AGENT, tone(1600), first_ms=1000)  # the agent says 100 ms at 1 s, then nothing
    for f in interleaved(frames(CALLER, tone(16000 * 10)), agent):  # 10 s of the caller
        assembler.feed(PCM16, f, f.ms)
        assert assembler.written >= f.ms * 16 - (200 + WRITE_MS) * 16  # 200 ms held, written in pieces


def test_a_track_sent_faster_than_real_time_waits_for_the_live_one() -> None:
    caller = tone(16000 * 4)
    burst = tone(16000 * 2, freq=300)  # 2 s of the agent's speech from 1 s on, sent in 10 ms
    agent = [Frame(f.track, f.ms, f.payload, arrived=1000 + i // 10) for i, f in enumerate(frames(AGENT, burst, first_ms=1000))]
    feed = sorted([*frames(CALLER, caller), *agent], key=lambda f: f.ms if f.arrived is None else f.arrived)
    left, right = record(pcm_feed(feed))
    assert left == caller
    assert right == [0] * 16000 + burst + [0] * 16000


def test_no_more_than_the_longest_hold_is_kept_behind_the_furthest_audio() -> None:
    limits = Limits(max_held_ms=1000)
    assembler = Assembler(16000, limits=limits)
    for f in frames(AGENT, tone(16000 * 5)):  # 5 s of agent speech, all sent at once
        assembler.feed(PCM16, f, 0)
        assert assembler.written >= f.ms * 16 - (1000 + WRITE_MS) * 16


def test_a_huge_timestamp_jump_makes_at_most_the_capped_gap_and_later_frames_follow_it() -> None:
    limits = Limits(max_gap_ms=2000)
    first, later = tone(320), tone(320, start=320)
    feed = [
        Frame(CALLER, 0, pcm(first)),
        Frame(CALLER, 4_000_000_000, pcm(later)),  # 46 days on
        Frame(CALLER, 4_000_000_020, pcm(later)),
        Frame(AGENT, 4_000_000_020, pcm(later)),  # the agent follows the same shift
    ]
    left, right = record(pcm_feed(feed), limits=limits)
    assert left == first + [0] * (2000 * 16) + later + later
    assert right == [0] * (320 + 2000 * 16 + 320) + later


def test_nothing_is_recorded_past_the_longest_duration() -> None:
    left, _ = record(pcm_feed(frames(CALLER, tone(16000))), limits=Limits(max_duration_ms=500))
    assert len(left) == 8000
    assembler = Assembler(16000, limits=Limits(max_duration_ms=500))
    assembler.feed(PCM16, Frame(CALLER, 600, pcm(tone(320))), 600)
    assembler.feed(PCM16, Frame(CALLER, 9_000_000, pcm(tone(320))), 900_000)
    assembler.finish()
    assert assembler.dropped_frames == 2
    assert assembler.written <= 8000


def test_a_gap_is_returned_as_a_count_not_as_a_buffer_of_zeros() -> None:
    assembler = Assembler(48000)
    out = assembler.feed(Fmt("pcm_s16le", 48000), Frame(CALLER, 50_000, pcm(tone(960))), 50_000)
    out += assembler.finish()
    silence = [c for c in out if isinstance(c, int)]
    assert sum(silence) >= 49_000 * 48 * 4
    assert sum(len(c) for c in out if isinstance(c, bytes)) < 300 * 48 * 4  # the held 200 ms and the frame


def test_a_resumed_file_goes_on_where_it_stopped() -> None:
    assembler = Assembler(16000, start=16000)  # a file holding the call's first second
    out = assembler.feed(PCM16, Frame(CALLER, 500, pcm(tone(320))), 500)  # before it: dropped
    out += assembler.feed(PCM16, Frame(CALLER, 1500, pcm(tone(320))), 1500)
    out += assembler.finish()
    assert assembler.dropped_frames == 1
    assert assembler.written == 16000 + 8000 + 320
    data = b"".join(bytes(c) if isinstance(c, int) else c for c in out)
    assert list(struct.unpack(f"<{len(data) // 2}h", data)[0::2]) == [0] * 8000 + tone(320)


def test_the_header_is_read_back_only_when_it_is_one_of_ours() -> None:
    assert read_header(wav_header(24000, 400)) == 24000
    assert read_header(wav_header(44100, 400)) is None
    assert read_header(b"RIFF" + bytes(40)) is None
    assert read_header(b"") is None


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_every_rate_of_the_contract_records(rate: int) -> None:
    samples = tone(rate // 5, rate=rate)
    per = rate // 50
    feed = [(Fmt("pcm_s16le", rate), Frame(AGENT, i * 1000 // rate, pcm(samples[i : i + per]))) for i in range(0, len(samples), per)]
    _, right = record(feed, rate=rate)
    assert right == samples
