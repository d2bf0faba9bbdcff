"""Open any input and stream it as mono float32 blocks at its own rate. All audio I/O lives here.

Two decoders, both in-process, chosen by extension:

- soundfile (libsndfile) reads wav/flac/ogg/oga/opus/mp3/aiff/aif/au. A file of those kinds that
  libsndfile refuses fails at once with libsndfile's reason; it is not handed to anything else.
- PyAV (FFmpeg's libraries, bundled in the `av` wheel) reads every other extension: m4a, aac, wma,
  mp4 audio and whatever `--ext` names. It decodes at the native rate and channel count; its
  resampler only converts the sample format to packed float32.

Files are read in blocks, so an hour-long file never sits in memory whole. Downmix is the mean
over channels, before resampling, as the spec says. Every failure is an `InputError` naming the
file and the reason, on one line; nothing here prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from matpac_cli.encoder.signal import downmix
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
        self.expected_frames: int | None = None  # what the header promises, where it says
        self._sf = self._av = None
        if not path.is_file():
            raise InputError(self.name, "does not exist" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise InputError(self.name, "empty file (0 bytes)")
        if path.suffix.lower().lstrip(".") in SOUNDFILE_FORMATS:
            self._open_soundfile()
        else:
            self._open_av()
        # only now, after a successful open, are rate and channels the file's own
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            self.close()
            if self.sample_rate <= 0:
                raise InputError(self.name, "the header gives no sample rate")
            raise InputError(
                self.name,
                f"sample rate {self.sample_rate} Hz is not supported "
                f"(matpac reads {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)",
            )
        if self.channels < 1:
            self.close()
            raise InputError(self.name, "file has no audio channels")

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def truncated(self) -> tuple[int, int] | None:
        """(frames the header promised, frames read) when the file ended early, else None."""
        if self.expected_frames is not None and self.n_samples < self.expected_frames:
            return self.expected_frames, self.n_samples
        return None

    def blocks(self, block_frames: int | None = None) -> Iterator[np.ndarray]:
        """Mono float32 blocks; checks samples as they come and the length at the end."""
        size = block_frames or int(BLOCK_SECONDS * self.sample_rate)
        raw_blocks = self._sf_blocks(size) if self._sf is not None else self._av_blocks(size)
        try:
            for raw in raw_blocks:
                mono = downmix(raw)
                if not np.isfinite(mono).all():
                    raise InputError(self.name, "samples contain NaN or infinity")
                self.n_samples += len(mono)
                yield np.ascontiguousarray(mono, dtype=np.float32)
        finally:
            self.close()
        if self.n_samples == 0:
            raise InputError(self.name, "file has no samples")

    def close(self) -> None:
        if self._sf is not None:
            self._sf.close()
        if self._av is not None:
            self._av.close()

    # -------------------------------------------------------------- soundfile

    def _open_soundfile(self) -> None:
        import soundfile as sf

        why = _not_for_libsndfile(self.path)
        if why:  # libsndfile would hand it to libmpg123, which prints its complaints on stderr
            raise InputError(self.name, f"cannot decode: {why}")
        try:
            self._sf = sf.SoundFile(os.fsencode(self.path))  # bytes: any file name, UTF-8 or not
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            reason = re.sub(r"^Error opening .*?: ", "", _short(str(exc))).rstrip(".")
            if reason.startswith("File does not exist or is not a regular file"):
                reason = "Format not recognised"  # what libsndfile says when its MPEG probe gives up
            raise InputError(self.name, f"cannot decode: {reason}") from None
        self.sample_rate, self.channels = int(self._sf.samplerate), int(self._sf.channels)
        self.expected_frames = _promised_frames(self._sf)

    def _sf_blocks(self, size: int) -> Iterator[np.ndarray]:
        import soundfile as sf

        while True:
            try:
                data = self._sf.read(size, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise InputError(self.name, f"decoding failed part-way: {_short(str(exc))}") from None
            if len(data) == 0:
                return
            yield data

    # -------------------------------------------------------------- PyAV (FFmpeg)

    def _open_av(self) -> None:
        """Open with FFmpeg's demuxers and decode the first frame, so the rate and channel count
        are what the decoder produces (HE-AAC's doubled rate, say), not what the container claims."""
        import av

        try:
            self._av = av.open(str(self.path), mode="r")
            streams = self._av.streams.audio
            if not streams:
                raise InputError(self.name, "no audio stream in the file")
            self._stream = streams[0]
            self._frames = self._av.decode(self._stream)
            self._first = next(self._frames, None)
        except InputError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - av.FFmpegError, OSError, ...: all this file's
            self.close()
            raise InputError(self.name, f"cannot decode: {_av_reason(exc)}") from None
        if self._first is None:
            self.close()
            raise InputError(self.name, "file has no samples")
        self.sample_rate = int(self._first.sample_rate)
        self.channels = len(self._first.layout.channels)

    def _av_blocks(self, size: int) -> Iterator[np.ndarray]:
        """Packed float32 (n, channels) blocks of exactly `size` frames (the last may be short)."""
        import av

        # format conversion only (planar or integer -> packed float32); rate and layout stay
        resampler = av.AudioResampler(format="flt", layout=self._first.layout, rate=self.sample_rate)
        block, filled = np.empty((size, self.channels), np.float32), 0
        frames, first = self._frames, self._first
        self._first = None
        while True:
            try:
                frame = first if first is not None else next(frames, None)
                first = None
                converted = resampler.resample(frame)  # None flushes at the end
            except ValueError as exc:  # PyAV: a frame whose rate or layout differs from the first
                raise InputError(
                    self.name, f"decoding failed part-way: the audio format changes mid-stream ({_short(str(exc))})"
                ) from None
            except Exception as exc:  # noqa: BLE001 - av.FFmpegError and friends
                raise InputError(self.name, f"decoding failed part-way: {_av_reason(exc)}") from None
            for out in converted:
                data = out.to_ndarray().reshape(-1, self.channels)
                while len(data):
                    take = min(size - filled, len(data))
                    block[filled : filled + take] = data[:take]
                    filled, data = filled + take, data[take:]
                    if filled == size:
                        yield block
                        block, filled = np.empty((size, self.channels), np.float32), 0
            if frame is None:
                break
        if filled:
            yield block[:filled]


def _av_reason(exc: Exception) -> str:
    """FFmpeg's reason without the errno and file name PyAV wraps it in."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return _short(reason).rstrip(".")


# ------------------------------------------------------------------ what libsndfile would do

# First four bytes of the containers libsndfile recognises by content (its guess_file_type); a
# file without one reaches libsndfile's last resort, the MPEG probe, and libmpg123 writes its
# complaints about non-MPEG data straight to the process's stderr (fd 2), naming no file.
_LIBSNDFILE_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"BW64",
    b"riff",
    b"FORM",
    b".snd",
    b"dns.",
    b"fap ",
    b" paf",
    b"NIST",
    b"Crea",
    b"MATL",
    b"PVF1",
    b"Exte",
    b"caff",
    b"OggS",
    b"ALaw",
    b"Diam",
    b"LM89",
    b"2BIT",
    b"CAT ",
    b"fLaC",
    b"wvpk",
    b"SOUN",
    b"SY80",
    b"SY85",
    b"ajkg",
)
_MPEG_SCAN_BYTES = 65_536  # more than libmpg123's own resync limit: never stricter than it is
_MPEG_KBPS = {  # (MPEG-1?, layer) -> bitrate table, kbit/s
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _not_for_libsndfile(path: Path) -> str | None:
    """Why libsndfile cannot read this file, when that is plain from its first bytes and asking
    libsndfile would make libmpg123 print; None when libsndfile should be asked."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if head[:4] in _LIBSNDFILE_MAGIC:
                return None
            head += fh.read(_MPEG_SCAN_BYTES - len(head))
            at_eof = len(head) < _MPEG_SCAN_BYTES or not fh.read(1)
    except OSError as exc:
        return exc.strerror or "cannot read the file"
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # ID3v2 tag: libsndfile skips it and looks again
        start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F)
        if head[5] & 0x10:
            start += 10  # footer
        if start >= len(head):
            return None  # a huge tag: let libsndfile look
    if len(head) - start < 12:
        return None  # too short for the MPEG probe; libsndfile says "Format not recognised" itself
    if head[start : start + 4] in _LIBSNDFILE_MAGIC or _mpeg_frames_at(head, start, at_eof):
        return None
    return "Format not recognised"


def _mpeg_frames_at(buf: bytes, start: int, at_eof: bool) -> bool:
    """True if an MPEG audio frame header is followed by a second one of the same stream (or by
    the end of the file) somewhere in buf[start:], as a decoder syncing on the data would find."""
    pos = buf.find(b"\xff", start)
    while 0 <= pos <= len(buf) - 4:
        first = _mpeg_header(buf, pos)
        if first is not None:
            length, key = first
            nxt = pos + length
            if nxt == len(buf) and at_eof:
                return True
            second = _mpeg_header(buf, nxt) if nxt <= len(buf) - 4 else None
            if second is not None and second[1] == key:
                return True
        pos = buf.find(b"\xff", pos + 1)
    return False


def _mpeg_header(buf: bytes, pos: int) -> tuple[int, tuple[int, int, int]] | None:
    """(frame length in bytes, (version, layer, rate index)) of a valid header at pos, else None."""
    if pos < 0 or pos + 4 > len(buf):
        return None
    b1, b2, b3 = buf[pos + 1], buf[pos + 2], buf[pos + 3]
    if buf[pos] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3  # version 3: MPEG-1, 2: MPEG-2, 0: 2.5
    bitrate_i, rate_i, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer_bits == 0 or bitrate_i in (0, 15) or rate_i == 3 or b3 & 3 == 2:
        return None  # reserved values (free-format bitrate 0 is not checked: it has no length)
    layer, mpeg1 = 4 - layer_bits, version == 3
    rate = (44100, 48000, 32000)[rate_i] >> {3: 0, 2: 1, 0: 2}[version]
    bps = _MPEG_KBPS[(mpeg1, layer)][bitrate_i] * 1000
    if layer == 1:
        length = (12 * bps // rate + padding) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bps // rate + padding
    return length, (version, layer, rate_i)


def _promised_frames(snd) -> int | None:
    """Frames the header promises. libsndfile sizes a cut WAV by what is on disk, so its own
    count cannot show the cut; its header log still has the data chunk's declared size."""
    frames = int(snd.frames) if 0 < snd.frames < 2**62 else None
    try:
        log = snd.extra_info
    except Exception:  # noqa: BLE001 - the log is a nicety; without it, trust the frame count
        return frames
    declared = re.search(r"^data\s*:\s*(\d+)\s*\(should be \d+\)", log, re.M)
    align = re.search(r"Block Align\s*:\s*(\d+)", log)
    if declared and align and int(align.group(1)) > 0:
        return max(frames or 0, int(declared.group(1)) // int(align.group(1)))
    return frames


def probe_duration(path: Path) -> float | None:
    """Seconds of audio the header promises (libsndfile formats), or None if it cannot tell.
    Cheap (reads the header only), so a progress display can size the whole run up front."""
    if path.suffix.lower().lstrip(".") not in SOUNDFILE_FORMATS:
        return None
    import soundfile as sf

    try:
        if _not_for_libsndfile(path):
            return None
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - any file it cannot read is simply of unknown length
        return None
    if not info.samplerate or info.frames <= 0 or info.frames >= 2**62:
        return None
    return info.frames / info.samplerate


def _short(text: str) -> str:
    """Last meaningful line of a library message, so errors stay on one line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\] ", "", lines[-1])[:200] if lines else ""
