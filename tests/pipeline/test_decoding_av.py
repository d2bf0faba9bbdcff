"""Decoding in-process: PyAV for what libsndfile lacks, libsndfile's own answer for what it has.

The m4a files are made with PyAV itself (FFmpeg's AAC encoder in the `av` wheel), so these tests
need no ffmpeg binary; the comparison with the ffmpeg command line runs where one is installed.
No test here may start a subprocess while decoding (`no_subprocess`): the old fallback spawned
ffprobe and ffmpeg for every file libsndfile refused.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import signal, write_encoded, write_m4a

from matpac_cli.encoder.signal import downmix as _downmix
from matpac_cli.errors import InputError
from matpac_cli.pipeline.audio import AudioSource


def ffmpeg_cli_samples(path: Path, channels: int) -> np.ndarray:
    """(n, channels) float32 as `ffmpeg -i x -f f32le -acodec pcm_f32le -` decodes it."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, dtype="<f4").reshape(-1, channels)


@pytest.fixture()
def no_subprocess(monkeypatch):
    """Decoding must stay in this process: starting any program fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"decoding started a subprocess: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)


def decode(path: Path, block_frames: int | None = None) -> tuple[AudioSource, np.ndarray]:
    src = AudioSource(path, path.name)
    blocks = list(src.blocks(block_frames))
    return src, np.concatenate(blocks)


# ------------------------------------------------------------------ PyAV: formats libsndfile lacks


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (the reference decoder)")
@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_m4a_decodes_in_process_to_the_samples_ffmpeg_gives(tmp_path, monkeypatch, sr, channels):
    m4a = write_m4a(tmp_path / "x.m4a", 3.0, sr, channels, seed=channels)
    reference = _downmix(ffmpeg_cli_samples(m4a, channels))  # before subprocesses are refused
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("decoding started a subprocess"))
    src, mono = decode(m4a, block_frames=10_000)  # blocks that straddle AAC's 1024-sample frames
    assert (src.sample_rate, src.channels) == (sr, channels)  # native rate: no resampling here
    assert mono.dtype == np.float32 and len(mono) == len(reference) == src.n_samples
    # the same decoder; the ffmpeg binary may be another FFmpeg release, so allow float rounding
    np.testing.assert_allclose(mono, reference, rtol=0, atol=2e-6)
    assert np.abs(reference).max() > 0.2  # really audio, not silence matching silence


def test_hour_scale_input_streams_in_fixed_blocks(tmp_path, no_subprocess):
    """5 s blocks at the native rate, as soundfile's path gives: memory stays flat however long."""
    m4a = write_m4a(tmp_path / "long.m4a", 23.0, 48000, 2)
    src = AudioSource(m4a, "long.m4a")
    sizes = []
    for block in src.blocks():
        assert block.dtype == np.float32 and block.ndim == 1 and block.flags.c_contiguous
        assert block.flags.writeable  # torch.from_numpy warns on read-only arrays
        sizes.append(len(block))
    assert sizes[:-1] == [5 * 48000] * 4 and 0 < sizes[-1] <= 5 * 48000
    assert src.n_samples == sum(sizes) and abs(src.duration_s - 23.0) < 0.1


def test_wma_and_other_named_extensions_decode_in_process(tmp_path, no_subprocess):
    wma = write_encoded(tmp_path / "x.wma", 2.0, 44100, 2, codec="wmav2", container="asf")
    mp4 = write_encoded(tmp_path / "x.mp4", 2.0, 32000, 1, container="mp4")
    for path, sr, ch in ((wma, 44100, 2), (mp4, 32000, 1)):
        src, mono = decode(path)
        assert (src.sample_rate, src.channels) == (sr, ch)
        assert abs(len(mono) / sr - 2.0) < 0.2 and np.abs(mono).max() > 0.2


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)),
        lambda p: p.write_bytes(b"\0\0\0\x20ftypM4A " + bytes(100)),
        lambda p: p.write_bytes(write_m4a(p, 2.0).read_bytes()[: p.stat().st_size // 2]),  # moov lost
    ],
    ids=["random", "ftyp-only", "cut"],
)
def test_broken_m4a_is_one_line_naming_the_file(tmp_path, no_subprocess, make):
    path = tmp_path / "bad.m4a"
    make(path)
    with pytest.raises(InputError) as err:
        decode(path)
    msg = str(err.value)
    assert msg.startswith("bad.m4a: cannot decode: ") and "\n" not in msg, msg
    assert len(msg.split(": ", 2)[2]) > 5 and "ffmpeg" not in msg.lower(), msg


def test_decoding_m4a_raises_no_warning_into_torch(tmp_path, no_subprocess):
    m4a = write_m4a(tmp_path / "x.m4a", 1.0, 44100, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in AudioSource(m4a).blocks():
            torch.from_numpy(block)  # what pipeline.feed.Feed does with every block


# ------------------------------------------------------------------ libsndfile's formats: no fallback


def _wav(x: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


REFUSED = [  # (name, bytes, the whole message after "name: ")
    ("one_byte.wav", b"x", "cannot decode: Format not recognised"),
    ("garbage.flac", np.random.default_rng(1).bytes(5000), "cannot decode: Format not recognised"),
    ("text.mp3", b"this is not audio\n" * 100, "cannot decode: Format not recognised"),
    ("noise.aiff", np.random.default_rng(3).bytes(64), "cannot decode: Format not recognised"),
    ("cut_header.wav", _wav(np.zeros(100))[:20], "cannot decode: Error in WAV/W64/RF64 file. Malformed 'fmt ' chunk"),
    ("empty.wav", b"", "empty file (0 bytes)"),
    ("header_only.wav", _wav(np.zeros(0)), "file has no samples"),
]


@pytest.mark.parametrize("name,data,reason", REFUSED, ids=[case[0] for case in REFUSED])
def test_libsndfile_formats_fail_at_once_with_libsndfiles_reason(tmp_path, no_subprocess, name, data, reason):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError) as err:
        decode(tmp_path / name)
    assert str(err.value) == f"{name}: {reason}"


def test_sample_rate_is_checked_only_after_a_successful_open_and_worded(tmp_path, no_subprocess):
    data = bytearray(_wav(0.1 * np.ones(16000)))
    data[24:28], data[28:32] = (3_000_000).to_bytes(4, "little"), (6_000_000).to_bytes(4, "little")
    (tmp_path / "absurd.wav").write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        AudioSource(tmp_path / "absurd.wav", "absurd.wav")
    assert str(err.value) == "absurd.wav: sample rate 3000000 Hz is not supported (matpac reads 1000 to 768000 Hz)"


def test_garbage_mp3_and_flac_leave_stderr_alone(tmp_path):
    """libsndfile's MPEG probe makes libmpg123 write to fd 2 without naming the file; the C-level
    stderr is watched in a child process, where Python's capture cannot hide it."""
    (tmp_path / "text.mp3").write_bytes(b"this is not audio\n" * 100)
    (tmp_path / "garbage.flac").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "garbage.wav").write_bytes(np.random.default_rng(2).bytes(5000))
    code = (
        "import sys; from pathlib import Path; from matpac_cli.pipeline.audio import AudioSource\n"
        "from matpac_cli.errors import InputError\n"
        "for p in sys.argv[1:]:\n"
        "    try: list(AudioSource(Path(p)).blocks())\n"
        "    except InputError as e: print(e)\n"
    )
    files = [str(tmp_path / n) for n in ("text.mp3", "garbage.flac", "garbage.wav")]
    proc = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode(errors="replace")
    assert len(proc.stdout.decode().splitlines()) == 3


@pytest.mark.parametrize(
    "codec,sr,channels,prefix",
    [
        ("libmp3lame", 44100, 2, b""),  # MPEG-1 layer III, with the ID3v2 tag the muxer writes
        ("libmp3lame", 22050, 1, b""),  # MPEG-2
        ("libmp3lame", 8000, 1, b""),  # MPEG-2.5
        ("libmp3lame", 48000, 2, bytes(700)),  # junk before the first frame: decoders resync
        ("mp2", 48000, 2, b""),  # layer II in a .mp3
    ],
)
def test_real_mp3s_still_reach_libsndfile(tmp_path, no_subprocess, codec, sr, channels, prefix):
    """The check that spares libmpg123's noise must not turn away anything it would decode."""
    path = write_encoded(
        tmp_path / "x.mp3", 2.0, sr, channels, codec=codec, container="mp2" if codec == "mp2" else "mp3"
    )
    path.write_bytes(prefix + path.read_bytes())
    src, mono = decode(path)
    assert (src.sample_rate, src.channels) == (sr, channels)
    assert abs(len(mono) / sr - 2.0) < 0.2 and np.abs(mono).max() > 0.2


def test_mp3_written_by_libsndfile_decodes(tmp_path, no_subprocess):
    sf.write(tmp_path / "x.mp3", signal(1.0, 16000, 1)[0], 16000, format="MP3")  # no ID3, no Xing
    src, mono = decode(tmp_path / "x.mp3")
    assert src.sample_rate == 16000 and abs(len(mono) - 16000) < 2000
