"""A file's audio key: a hash of its encoded audio packets as demuxed (no decoding), so the key
survives what leaves the audio alone (tags, pictures, renames, `touch`, `chmod`, a copy) and
changes with any edit of the audio. Stat (device, inode, size, mtime_ns, ctime_ns) with the real
path is the fast path, as git's index does it: an unchanged stat skips the hash."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matpac_cli.config import precision_name

if TYPE_CHECKING:
    from matpac_cli.pipeline.assemble import Plan

CHUNK = 1 << 20  # bytes read at a time where a file cannot be demuxed
RACY_S = 2.0  # a file modified this close before it was keyed is hashed again, whatever its stat


@dataclass(frozen=True)
class Stat:
    """What says a file is unchanged since it was keyed."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path | str) -> Stat | None:
        """The file's stat, or None for what is not a regular file (a FIFO would block its
        reader for ever, a device never end): the engine names those as it always did."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def vouches(self, recorded: Stat, seen: float) -> bool:
        """Whether this stat (now) vouches for the key recorded with `recorded` at `seen` (unix
        seconds): the same stat, and the file not written within `RACY_S` before it was keyed,
        as git's racy-index rule says (a same-size rewrite within the file system's time step
        would leave the stat as it was). Else the file is keyed again."""
        return self == recorded and self.mtime_ns < (seen - RACY_S) * 1e9

    def same_bytes(self, other: Stat) -> bool:
        """Same inode, size and modification time: only the mode or owner changed (`chmod`)."""
        return (self.dev, self.ino, self.size, self.mtime_ns) == (other.dev, other.ino, other.size, other.mtime_ns)


def audio_key(path: Path | str) -> str:
    """The first audio stream's codec, rate, channels and every packet's bytes, hashed; a file
    no demuxer reads is keyed by its bytes (`file:`...): decoding it will fail and say why, and
    the key is never found for another file."""
    try:
        return _packets_key(path)
    except Exception:  # noqa: BLE001 - any demuxer failure: the bytes key, and decoding names the error
        return _bytes_key(path)


def _packets_key(path: Path | str) -> str:
    import av

    digest = hashlib.blake2b(digest_size=20)
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = next(s for s in container.streams if s.type == "audio")
        ctx = stream.codec_context
        digest.update(f"{ctx.name}|{ctx.sample_rate}|{ctx.channels}|".encode())
        packets = 0
        for packet in container.demux(stream):
            if packet.size:
                digest.update(memoryview(packet))
                packets += 1
    if not packets:
        raise ValueError("no audio packets")
    return "a:" + digest.hexdigest()


def _bytes_key(path: Path | str) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return "f:" + digest.hexdigest()


@dataclass(frozen=True)
class Setting:
    """What an embedding was computed with: the model's sha256 and the front-end settings (audio
    front end, chunk length, precision). The CPU's linear path is not in it: it changes the
    numbers by about 1e-6, as any two runs may differ."""

    model: str
    frontend: str

    @classmethod
    def of(cls, plan: Plan) -> Setting:
        """The setting of a loaded plan (what `embed` and `tag` store under)."""
        p = plan.predictor
        return cls.of_parts(p.resolved.sha256, p.fe, p.dims.n_t, precision_name(p.dtype) or str(p.dtype))

    @classmethod
    def of_parts(cls, sha256: str, fe, n_t: int, precision: str) -> Setting:
        """The same rule from a checkpoint's sha256 and settings alone (no weights loaded): the
        front end (a `config.FrontEnd`), the chunk length in frames and the precision's name."""
        text = json.dumps({"fe": asdict(fe), "n_t": int(n_t), "precision": str(precision)}, sort_keys=True)
        return cls(sha256, hashlib.sha256(text.encode()).hexdigest()[:16])
