"""The audio key: what leaves the audio alone keeps it (a copy, a rename, a tag editor's rewrite,
`touch`, `chmod`), any edit of the audio changes it, in every container a music folder holds.

Files are made by the ffmpeg program and re-tagged by mutagen, as a user's tools do it.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import ffmpeg, retag, write_audio

from matpac_cli.library.key import Stat, audio_key

FORMATS = {
    "flac": (),
    "mp3": ("-c:a", "libmp3lame"),
    "ogg": ("-c:a", "libvorbis"),
    "m4a": ("-c:a", "aac"),
    "wav": (),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("src") / "src.wav", 2.0, sr=44100, channels=2, seed=4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_key_survives_copy_rename_retag_touch_chmod(source, tmp_path, fmt):
    path = ffmpeg(source, tmp_path / f"a.{fmt}", *FORMATS[fmt])
    key = audio_key(path)
    assert key.startswith("a:")  # demuxed, not the bytes

    copy = tmp_path / "elsewhere" / f"copy.{fmt}"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    moved = tmp_path / f"renamed.{fmt}"
    os.rename(path, moved)
    assert audio_key(copy) == audio_key(moved) == key

    before = moved.read_bytes()
    retag(moved, "A new title")
    assert moved.read_bytes() != before  # the tag editor did rewrite the file
    assert audio_key(moved) == key

    stat = Stat.of(moved)
    os.utime(moved, ns=(stat.mtime_ns + 10**9, stat.mtime_ns + 10**9))
    os.chmod(moved, 0o600)
    assert audio_key(moved) == key
    assert not Stat.of(moved).same_bytes(stat)  # touch: the stat says "look again"


@pytest.mark.parametrize("fmt", FORMATS)
def test_key_changes_with_the_audio(source, tmp_path, fmt):
    """A volume change of 0.1 dB re-encoded the same way is another key."""
    plain = ffmpeg(source, tmp_path / f"a.{fmt}", *FORMATS[fmt])
    louder = ffmpeg(source, tmp_path / f"b.{fmt}", "-af", "volume=0.1dB", *FORMATS[fmt])
    assert audio_key(plain) != audio_key(louder)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_one_sample_changed_is_another_key(tmp_path, fmt):
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    sf.write(a, wave, 16000, subtype="PCM_16")
    wave[8000] += 0.01
    sf.write(b, wave, 16000, subtype="PCM_16")
    assert audio_key(a) != audio_key(b)


def test_a_file_no_demuxer_reads_is_keyed_by_its_bytes(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 100)
    other = tmp_path / "other.mp3"
    other.write_bytes(b"not audio at all" * 101)
    assert audio_key(junk).startswith("f:")
    assert audio_key(junk) != audio_key(other)
