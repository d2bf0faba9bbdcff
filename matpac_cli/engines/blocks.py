"""How a Ray run's files are cut into decoding tasks: by work, not by count (engines.ray.driver).

Each decoding task costs the driver's executor a few milliseconds whatever it holds (issue 24:
4.7-10 ms), and a task whose worker dies is run again whole. So a task carries about `TASK_S`
seconds of one worker's decoding: enough that the fixed cost is a small share of it, little
enough that a rerun redoes little. A file's decoding time is not known before it is decoded; it
is estimated from its size (`os.stat`, which discovery and the library paid for already) at a
bit rate typical of its format, and a measured decoding speed. A task holds at least one file,
and a small job is still spread over every decoder (`plan`'s `at_least`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

TASK_S = 60.0  # seconds of one worker's decoding a task carries (the issue: "a minute or two")
DECODE_X = 100.0  # audio-seconds one worker decodes, resamples and cuts per second (measured: 90-175)
PCM = 176_400.0  # bytes per audio-second: 16-bit 44.1 kHz stereo, uncompressed
LOSSLESS = 90_000.0  # FLAC, ALAC, WavPack, APE: about half of the PCM
LOSSY = 24_000.0  # MP3, AAC, Vorbis, Opus at about 192 kb/s (also any format not listed)
RATES = {
    **dict.fromkeys((".wav", ".wave", ".aif", ".aiff", ".aifc", ".w64", ".rf64", ".caf", ".au", ".snd"), PCM),
    **dict.fromkeys((".flac", ".alac", ".wv", ".ape", ".tta", ".tak"), LOSSLESS),
}


def audio_seconds(path: str | os.PathLike, size: int | None = None) -> float:
    """The audio a file likely holds, from its size and its format's usual bit rate (a file
    that cannot be stat'ed: none; its decoding task names it)."""
    if size is None:
        try:
            size = os.stat(path).st_size
        except OSError:
            return 0.0
    return size / RATES.get(os.path.splitext(os.fspath(path))[1].lower(), LOSSY)


def plan(seconds: Sequence[float], at_least: int = 1, task_s: float = TASK_S * DECODE_X) -> list[range]:
    """Consecutive files (by their place in `seconds`, each file's estimated audio) in blocks of
    about `task_s` audio-seconds each, at least one file a block; a job of less than `at_least`
    such blocks is cut into about `at_least` smaller ones instead (so a small job still feeds
    every decoder). A block closes where its next file would take it further past the target
    than it is short of it."""
    n = len(seconds)
    if n == 0:
        return []
    total = float(sum(max(s, 0.0) for s in seconds))
    target = min(task_s, total / max(1, min(at_least, n))) if total > 0 else 0.0
    if target <= 0:  # nothing known of the sizes: the files spread evenly over `at_least` blocks
        blocks = max(1, min(at_least, n))
        return [range(n * b // blocks, n * (b + 1) // blocks) for b in range(blocks)]
    out, start, held = [], 0, 0.0
    for i, s in enumerate(seconds):
        s = max(s, 0.0)
        if i > start and held + s / 2 > target:
            out.append(range(start, i))
            start, held = i, 0.0
        held += s
    out.append(range(start, n))
    return out
