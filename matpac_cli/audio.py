"""Open any input and stream it as mono float32 blocks at its own rate. All audio I/O lives here.

soundfile (libsndfile) reads wav/flac/ogg/opus/mp3/aiff/au; anything it refuses is handed to an
`ffmpeg` subprocess when one is on PATH (m4a, aac, wma, mp4 audio ...). Files are read in blocks,
so an hour-long file never sits in memory whole. Downmix is the mean over channels, before
resampling, as the spec says. Every failure is an `InputError` naming the file and the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np

from matpac_cli.errors import InputError

SOUNDFILE_FORMATS = {"wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "au"}
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
BLOCK_SECONDS = 5.0


class AudioSource:
    """An opened input: rate and channels known up front, mono blocks on iteration."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.path, self.name = path, name or str(path)
        self.n_samples = 0  # source samples read so far (the total once exhausted)
        if not path.is_file():
            raise InputError(self.name, "no such file" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise InputError(self.name, "empty file (0 bytes)")
        try:
            self._open_soundfile()
        except _SoundfileRefused as refused:
            self._open_ffmpeg(refused.reason)
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            self.close()
            raise InputError(self.name, f"sample rate {self.sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
        if self.channels < 1:
            self.close()
            raise InputError(self.name, "file has no audio channels")

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate

    def blocks(self, block_frames: int | None = None) -> Iterator[np.ndarray]:
        """Mono float32 blocks; checks samples as they come and the length at the end."""
        size = block_frames or int(BLOCK_SECONDS * self.sample_rate)
        try:
            for raw in self._raw_blocks(size):
                mono = _downmix(raw)
                if not np.isfinite(mono).all():
                    raise InputError(self.name, "samples contain NaN or infinity")
                self.n_samples += len(mono)
                yield np.ascontiguousarray(mono, dtype=np.float32)
        finally:
            self.close()
        if self.n_samples == 0:
            raise InputError(self.name, "file has no samples")

    # -------------------------------------------------------------- soundfile

    def _open_soundfile(self) -> None:
        import soundfile as sf

        try:
            self._sf = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise _SoundfileRefused(re.sub(r"^Error opening .*?: ", "", _short(str(exc)))) from None
        self.sample_rate, self.channels = int(self._sf.samplerate), int(self._sf.channels)
        self._proc = None

    # -------------------------------------------------------------- ffmpeg

    def _open_ffmpeg(self, why: str) -> None:
        """Decode with ffmpeg at the native rate and channel count; downmix happens here."""
        self._sf = None
        ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
        if not ffmpeg or not ffprobe:
            if self.path.suffix.lower().lstrip(".") in SOUNDFILE_FORMATS:
                raise InputError(self.name, f"cannot decode: {why}")
            kind = self.path.suffix.lower() or "this format"
            raise InputError(self.name, f"cannot decode {kind} without ffmpeg; install ffmpeg and put it on PATH")
        probe = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
             "stream=channels,sample_rate", "-of", "json", str(self.path)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        try:
            stream = json.loads(probe.stdout or "{}")["streams"][0]
            self.channels, self.sample_rate = int(stream["channels"]), int(stream["sample_rate"])
        except (KeyError, IndexError, ValueError, TypeError):
            detail = _short(probe.stderr).replace(f"{self.path}: ", "") or "no audio stream"
            raise InputError(self.name, f"cannot decode: {detail}") from None
        self._proc = subprocess.Popen(
            [ffmpeg, "-nostdin", "-v", "error", "-i", str(self.path), "-map", "0:a:0",
             "-f", "f32le", "-acodec", "pcm_f32le", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )

    def _raw_blocks(self, size: int) -> Iterator[np.ndarray]:
        if self._sf is not None:
            import soundfile as sf

            while True:
                try:
                    data = self._sf.read(size, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    raise InputError(self.name, f"decoding failed part-way: {_short(str(exc))}") from None
                if len(data) == 0:
                    return
                yield data
            return
        frame = 4 * self.channels
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            buf = self._proc.stdout.read(size * frame)
            if not buf:
                break
            usable = len(buf) // frame * frame
            yield np.frombuffer(buf[:usable], dtype="<f4").reshape(-1, self.channels)
        err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        if self._proc.wait() != 0:
            raise InputError(self.name, f"ffmpeg could not decode it: {_short(err).replace(f'{self.path}: ', '')}")

    def close(self) -> None:
        if getattr(self, "_sf", None) is not None:
            self._sf.close()
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _downmix(raw: np.ndarray) -> np.ndarray:
    """Mean over channels. Column by column: numpy's mean over a short inner axis is several
    times slower, and for stereo both give the same float32 (a + b) / 2."""
    if raw.shape[1] == 1:
        return raw[:, 0]
    acc = raw[:, 0].astype(np.float32, copy=True)
    for c in range(1, raw.shape[1]):
        acc += raw[:, c]
    acc /= np.float32(raw.shape[1])
    return acc


class _SoundfileRefused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _short(text: str) -> str:
    """Last meaningful line of a library message, so errors stay on one line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\] ", "", lines[-1])[:200] if lines else ""
