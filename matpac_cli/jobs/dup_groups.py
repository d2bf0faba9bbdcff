"""`search --duplicates --groups`: near-duplicate pairs joined into groups, each ordered by a "keep" hint.

Pairs (`jobs.dup_cells.duplicates`) are joined into connected components (union-find): a file
within the threshold of any member is in the group, so A~B and B~C make one group of three even
where A and C score below it. Memory holds one entry per file that has a pair, never the pairs.

Each group is ordered by the keep hint, best first (`keep` 1 is the copy to keep):

1. complete before cut short: a copy the index marks `truncated` (it ended before its header
   said), or one clearly shorter than the group's longest (by more than 1 s or more than 2%), goes
   last whatever else it has: a 48 kHz copy that stops halfway is never kept over a complete one;
2. lossless before lossy: PCM (wav, aiff, au), FLAC, ALAC, WavPack, APE, TTA before MP3, AAC,
   Vorbis, Opus, WMA: the codec the file holds (an .m4a may be either), else its extension;
3. higher sample rate;
4. longer duration (to a tenth of a second: an MP3's encoder padding is not "longer");
5. larger bit depth, where the file says (PCM in wav/aiff/flac, ALAC); lossy codecs have none;
6. the path, so the order is the same on every run.

The facts are read from each member's own file (soundfile, else PyAV), falling back to what the
index records (sample rate, duration) and the extension for a file that cannot be opened now. It
is a hint for a person or a script to act on: nothing is ever deleted or moved here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from matpac_cli.jobs.dup_cells import duplicates

GROUP_COLUMNS = [
    "group",
    "keep",
    "path",
    "match",
    "score",
    "lossless",
    "codec",
    "sample_rate",
    "bit_depth",
    "duration_s",
]
LOSSLESS_CODECS = {"pcm", "flac", "alac", "wavpack", "ape", "tta", "truehd", "mlp", "wav", "aiff", "au", "wv"}
LOSSY_EXTENSIONS = {"mp3", "aac", "ogg", "oga", "opus", "m4a", "mp4", "wma", "mpc", "ac3"}
# soundfile's subtypes: (codec, bit depth)
SUBTYPES = {
    "PCM_S8": ("pcm", 8),
    "PCM_U8": ("pcm", 8),
    "PCM_16": ("pcm", 16),
    "PCM_24": ("pcm", 24),
    "PCM_32": ("pcm", 32),
    "FLOAT": ("pcm", 32),
    "DOUBLE": ("pcm", 64),
    "ALAC_16": ("alac", 16),
    "ALAC_20": ("alac", 20),
    "ALAC_24": ("alac", 24),
    "ALAC_32": ("alac", 32),
    "VORBIS": ("vorbis", None),
    "OPUS": ("opus", None),
    "MPEG_LAYER_I": ("mp1", None),
    "MPEG_LAYER_II": ("mp2", None),
    "MPEG_LAYER_III": ("mp3", None),
}


def is_lossless(codec: str | None) -> bool | None:
    """True for a lossless codec (or container of PCM), False for a lossy one, None if unknown."""
    if not codec:
        return None
    codec = codec.lower()
    return codec in LOSSLESS_CODECS or codec.startswith("pcm_")


def file_facts(path: str, recorded: dict | None = None) -> dict:
    """The facts the keep hint reads of one file: lossless, codec, sample_rate, bit_depth,
    duration_s; `recorded` (the index's row) fills what the file cannot tell now."""
    recorded = recorded or {}
    facts = _soundfile_facts(path) or _av_facts(path)
    if facts is None:
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        codec = ext or None
        lossless = True if is_lossless(ext) else (False if ext in LOSSY_EXTENSIONS else None)
        facts = {"codec": codec, "lossless": lossless, "sample_rate": None, "bit_depth": None, "duration_s": None}
    for key in ("sample_rate", "duration_s"):
        if facts[key] is None and recorded.get(key) is not None:
            facts[key] = recorded[key]
    facts["truncated"] = bool(recorded.get("truncated"))  # the header promised more than was read
    return facts


def _soundfile_facts(path: str) -> dict | None:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - any file libsndfile cannot read: PyAV is asked next
        return None
    codec, depth = SUBTYPES.get(info.subtype, (info.subtype.lower(), None))
    if info.format == "FLAC":
        codec = "flac"
    return {
        "codec": codec,
        "lossless": is_lossless(codec),
        "sample_rate": int(info.samplerate),
        "bit_depth": depth,
        "duration_s": float(info.duration),
    }


def _av_facts(path: str) -> dict | None:
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.audio[0]
            cc = stream.codec_context
            codec = cc.name
            lossless = is_lossless(codec)
            depth = _av_depth(cc) if lossless else None
            if container.duration is not None:
                duration = container.duration / av.time_base
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = None
            return {
                "codec": codec,
                "lossless": lossless,
                "sample_rate": int(cc.sample_rate) or None,
                "bit_depth": depth,
                "duration_s": duration,
            }
    except Exception:  # noqa: BLE001 - av.FFmpegError, IndexError (no audio stream), OSError ...
        return None


def _av_depth(cc) -> int | None:
    """A lossless stream's bit depth as PyAV shows it: ALAC's from its magic cookie (the decoder
    gives 24-bit ALAC as 32-bit samples), others' where the decoded samples are 8 or 16 bits."""
    extra = cc.extradata or b""
    if cc.name == "alac" and len(extra) > 17 and extra[4:8] == b"alac":
        return int(extra[17]) or None
    bits = cc.format.bits if cc.format is not None else 0
    return bits if bits in (8, 16) and not cc.format.name.startswith(("flt", "dbl")) else None


def is_short(facts: dict, longest: float | None) -> bool:
    """True for a copy cut short: marked `truncated`, or shorter than `longest` (the group's
    longest copy) by more than 1 s or more than 2% (well past an encoder's padding)."""
    if facts.get("truncated"):
        return True
    if not longest or facts.get("duration_s") is None:
        return False
    missing = longest - float(facts["duration_s"])
    return missing > 1.0 or missing > 0.02 * longest


def keep_key(path: str, facts: dict, longest: float | None = None) -> tuple:
    """The keep hint's sort key (smallest first): cut short last, then lossless, rate, duration,
    bit depth, path; `longest` is the group's longest duration (None: no copy is short by length)."""
    lossless = {True: 0, False: 1, None: 2}[facts.get("lossless")]
    duration = round(float(facts.get("duration_s") or 0.0), 1)
    rest = (lossless, -(facts.get("sample_rate") or 0), -duration, -(facts.get("bit_depth") or 0), path)
    return (is_short(facts, longest), *rest)


@dataclass
class Groups:
    """Groups of rows of the index, each in keep order; `pairs` is how many pairs joined them,
    `best[row]` each member's best match (row, score) within its group."""

    members: list[list[int]] = field(default_factory=list)
    best: dict[int, tuple[int, float]] = field(default_factory=dict)
    facts: dict[int, dict] = field(default_factory=dict)
    pairs: int = 0

    @property
    def files(self) -> int:
        return sum(len(g) for g in self.members)


def join_pairs(pairs: Iterator[tuple[int, int, float]]) -> tuple[list[list[int]], dict[int, tuple[int, float]], int]:
    """Connected components of `pairs` (union-find with path halving), in the order of each
    group's first row, rows in index order; and each row's best-scoring partner."""
    parent: dict[int, int] = {}
    best: dict[int, tuple[int, float]] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    count = 0
    for a, b, score in pairs:
        count += 1
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        for x, y in ((a, b), (b, a)):
            if x not in best or score > best[x][1] or (score == best[x][1] and y < best[x][0]):
                best[x] = (y, score)
    components: dict[int, list[int]] = {}
    for row in sorted(parent):
        components.setdefault(root(row), []).append(row)
    return sorted(components.values(), key=lambda g: g[0]), best, count


def duplicate_groups(
    paths: Sequence[str],
    matrix: np.ndarray,
    threshold: float = 0.98,
    index: Sequence[dict] | None = None,
    cwd: str | None = None,
    exact: bool = False,
) -> Groups:
    """The near-duplicate groups of an index's rows (`paths`, `matrix`), each in keep order.
    `index` rows (sample_rate, duration_s) fill facts a file cannot give; `cwd` is the folder
    relative paths were written from (the index's manifest), where each file is opened; `exact`
    compares every pair (`dup_cells.duplicates`)."""
    members, best, count = join_pairs(duplicates(matrix, threshold, exact=exact or None))
    found = Groups(best=best, pairs=count)
    for group in members:
        for row in group:
            where = os.path.join(cwd, paths[row]) if cwd else paths[row]
            found.facts[row] = file_facts(where, index[row] if index is not None else None)
        known = [float(found.facts[r]["duration_s"] or 0.0) for r in group]
        longest = max((d for d in known if np.isfinite(d)), default=0.0)  # an index may record NaN
        found.members.append(sorted(group, key=lambda r, top=longest: keep_key(paths[r], found.facts[r], top)))
    return found


def group_rows(paths: Sequence[str], groups: Groups) -> Iterator[dict]:
    """One row per member: group id (from 1), keep rank (1: keep), its best match and score, and
    the facts the hint read."""
    for gid, group in enumerate(groups.members, start=1):
        for rank, row in enumerate(group, start=1):
            match, score = groups.best[row]
            facts = groups.facts[row]
            yield {
                "group": gid,
                "keep": rank,
                "path": paths[row],
                "match": paths[match],
                "score": float(score),
                **{k: facts[k] for k in ("lossless", "codec", "sample_rate", "bit_depth", "duration_s")},
            }
