"""What the adapters share to tap a call's audio: a framework's PCM made into what callstream
sends (mono 16-bit; each adapter resamples with its framework's own resampler).

Imports numpy, which both frameworks install; ``import callstream`` never imports this module.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from callstream.audio_send import check_format

__all__ = ["DEFAULT_SAMPLE_RATE", "audio_rate", "mono_s16"]

DEFAULT_SAMPLE_RATE: Final = 16_000  # wideband speech: what STT engines take, a quarter of 48 kHz WebRTC


def audio_rate(audio: bool, sample_rate: int) -> int | None:
    """The rate an adapter sends audio at, None when audio is off; ValueError for a rate the
    protocol does not list (so a typo fails at start-up, not on the first frame)."""
    if not audio:
        return None
    check_format("pcm_s16le", sample_rate)
    return sample_rate


def mono_s16(pcm: bytes, channels: int) -> bytes:
    """Interleaved 16-bit little-endian PCM of ``channels`` channels as mono (their mean); a
    trailing partial sample is left out."""
    width = 2 * max(channels, 1)
    whole = len(pcm) - len(pcm) % width
    if channels <= 1:
        return pcm[:whole] if whole != len(pcm) else pcm
    samples = np.frombuffer(pcm, dtype="<i2", count=whole // 2).reshape(-1, channels)
    mono: bytes = samples.mean(axis=1).astype("<i2").tobytes()
    return mono
