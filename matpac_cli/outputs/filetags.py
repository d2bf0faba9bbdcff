"""Labels written into the audio files' own tags (`matpac tag --write`), one mapping across formats.

Players read tags, not CSV files, so `tag --write` puts each file's labels into its metadata,
with mutagen, the tag library the Python audio tools share. The mapping follows MusicBrainz
Picard's cross-format names:

| field              | ID3 (MP3, WAV, AIFF)      | MP4 / M4A                                 | Vorbis comment (FLAC, Ogg, Opus) |
| MOOD               | TMOO                      | ----:com.apple.iTunes:MOOD                | MOOD                             |
| MATPAC_GENRE       | TXXX:MATPAC_GENRE         | ----:com.apple.iTunes:MATPAC_GENRE        | MATPAC_GENRE                     |
| MATPAC_MOOD        | TXXX:MATPAC_MOOD          | ----:com.apple.iTunes:MATPAC_MOOD         | MATPAC_MOOD                      |
| MATPAC_INSTRUMENTS | TXXX:MATPAC_INSTRUMENTS   | ----:com.apple.iTunes:MATPAC_INSTRUMENTS  | MATPAC_INSTRUMENTS               |
| MATPAC_SOURCE      | TXXX:MATPAC_SOURCE        | ----:com.apple.iTunes:MATPAC_SOURCE       | MATPAC_SOURCE                    |
| GENRE (option)     | TCON                      | \\xa9gen                                  | GENRE                            |

Each value is one string, the labels joined by the separator (default "; "). A head feeds the
field of its kind (genre, mood or instruments: `KINDS`); `MOOD` is written from the mood head
only where it kept a label (an empty `MOOD` is left as the user had it), the `MATPAC_*` fields
are matpac's own (one whose head kept no label is removed); `MATPAC_SOURCE` says which matpac,
model and heads wrote them. `GENRE` is the librarian's: only with `genre="append"` (matpac's
labels not already there joined after the file's genres) or `genre="replace"`.

ID3 is saved as v2.4, or v2.3 where the file had 2.3. Everything else in the file (other tags,
pictures, chapters) is left to mutagen, which rewrites only the tag block; the audio packets are
checked unchanged before a file is replaced (`filesafe.replace_tags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = {  # registry head -> the field its labels feed
    "mtg_genre": "genre",
    "gtzan": "genre",
    "mtg_mood": "mood",
    "mtg_instrument": "instruments",
    "openmic": "instruments",
    "nsynth": "instruments",
}
OURS = ("MATPAC_GENRE", "MATPAC_MOOD", "MATPAC_INSTRUMENTS", "MATPAC_SOURCE")
FIELDS = ("MOOD", *OURS, "GENRE")  # every field `tag --write` may change, recorded for undo
GENRE_MODES = ("append", "replace")
SEPARATOR = "; "
MP4_FREE = "----:com.apple.iTunes:"


@dataclass(frozen=True)
class WriteSpec:
    """How `tag --write` writes: `genre` None, "append" or "replace"; `separator` between labels;
    `dry_run` says what would change and writes nothing; `touch` lets the mtime change."""

    genre: str | None = None
    separator: str = SEPARATOR
    dry_run: bool = False
    touch: bool = False


def check_spec(spec: WriteSpec) -> None:
    from matpac_cli.errors import UsageError

    if spec.genre is not None and spec.genre not in GENRE_MODES:
        raise UsageError(f"genre={spec.genre}: expected append or replace", settings=("genre",))
    if not spec.separator or "\n" in spec.separator or "\x00" in spec.separator:
        raise UsageError("separator= must be a non-empty one-line text", settings=("separator",))


def kind_of(head_name: str) -> str | None:
    """genre, mood or instruments for a head matpac knows (a head file named after one counts);
    None for a head whose labels have no field (sounds, events, tags)."""
    return KINDS.get(Path(head_name).stem.lower())


def wanted(labels: dict[str, list[str]], source: str, current: dict, spec: WriteSpec) -> dict:
    """field -> the value list matpac wants, from each kind's labels (`labels`: kind -> labels,
    best first; a kind no head fed is absent) and the file's `current` values."""
    sep = spec.separator
    out: dict[str, list[str] | None] = {}
    for kind, names in labels.items():
        out[f"MATPAC_{kind.upper()}"] = [sep.join(names)] if names else None
    if labels.get("mood"):
        out["MOOD"] = [sep.join(labels["mood"])]
    if not out:
        return {}
    out["MATPAC_SOURCE"] = [source]
    genres = labels.get("genre") or []
    if spec.genre == "replace" and genres:
        out["GENRE"] = [sep.join(genres)]
    elif spec.genre == "append" and genres:
        old = current.get("GENRE") or []
        have = {part.strip().lower() for value in old for part in value.split(sep.strip() or sep)}
        missing = [g for g in genres if g.lower() not in have]
        if missing:  # a list stays a list (Vorbis, ID3v2.4, MP4 hold several); one value grows
            out["GENRE"] = [*old, *missing] if len(old) > 1 else [sep.join([*old, *missing])]
    return out


def changes(current: dict, want: dict) -> dict:
    """field -> (old, new) for each field whose value would change (empty: nothing to write)."""
    return {k: (current.get(k), v) for k, v in want.items() if (current.get(k) or None) != (v or None)}


# ------------------------------------------------------------------------------------ formats


def open_tags(path: Path, like: Path | None = None):
    """The mutagen file object of `path` (`like`: the file whose type to use, for a copy whose
    hidden temp name has no extension to go by); ValueError for a file mutagen cannot tag."""
    import mutagen
    from mutagen.id3 import ID3

    kind = type(open_tags(like)) if like is not None else None
    f = kind(str(path)) if kind is not None else mutagen.File(str(path))
    if f is None:
        raise ValueError("not a format whose tags matpac writes")
    if isinstance(f.tags, ID3):  # as the file has them: an ID3v2.3 tag's frames never made v2.4
        f = type(f)(str(path), translate=False)
    return f


def other_fields(f) -> dict[str, str]:
    """Every tag of `f` that matpac does not write, as comparable text: what a write must leave
    exactly as it was (pictures, chapters, dates, a v2.3 tag's own frames)."""
    style = _style(f)
    if style == "id3":
        ours = {_id3_key(field) for field in FIELDS}
        return {k: repr(f.tags.getall(k)) for k in f.tags.keys() if k not in ours}
    if style == "mp4":
        ours = {_mp4_key(field) for field in FIELDS}
        return {k: repr(v) for k, v in f.tags.items() if k not in ours}
    ours = {field.upper() for field in FIELDS}
    return {k.upper(): repr(f.tags[k]) for k in f.tags.keys() if k.upper() not in ours}


def _style(f) -> str:
    from mutagen.id3 import ID3
    from mutagen.mp4 import MP4Tags

    if f.tags is None:
        f.add_tags()
    if isinstance(f.tags, ID3):
        return "id3"
    if isinstance(f.tags, MP4Tags):
        return "mp4"
    from mutagen._vorbis import VCommentDict  # FLAC's, Ogg Vorbis' and Opus' comments alike

    if isinstance(f.tags, VCommentDict):
        return "vorbis"
    raise ValueError(f"{type(f).__name__} tags are not written by matpac")


def _id3_key(field: str) -> str:
    return {"MOOD": "TMOO", "GENRE": "TCON"}.get(field, f"TXXX:{field}")


def _mp4_key(field: str) -> str:
    return "\xa9gen" if field == "GENRE" else MP4_FREE + field


def read_fields(f) -> dict[str, list[str] | None]:
    """The current value list of every field matpac writes (None where the file has none)."""
    style = _style(f)
    out = {}
    for field in FIELDS:
        if style == "id3":
            frame = f.tags.get(_id3_key(field))
            out[field] = [str(t) for t in frame.text] if frame is not None else None
        elif style == "mp4":
            raw = f.tags.get(_mp4_key(field))
            out[field] = (
                None if raw is None else [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in raw]
            )
        else:
            out[field] = list(f.tags[field]) if field in f.tags else None
    return out


def set_fields(f, values: dict[str, list[str] | None]) -> None:
    """Each field to its value list (None: removed) in `f`'s tags, nothing else touched."""
    from mutagen.id3 import TCON, TMOO, TXXX
    from mutagen.mp4 import MP4FreeForm

    style = _style(f)
    for field, value in values.items():
        if style == "id3":
            key = _id3_key(field)
            f.tags.delall(key)
            if value:
                frame = {"TMOO": TMOO, "TCON": TCON}.get(key)
                f.tags.add(frame(encoding=3, text=value) if frame else TXXX(encoding=3, desc=field, text=value))
        elif style == "mp4":
            key = _mp4_key(field)
            f.tags.pop(key, None)
            if value:
                f.tags[key] = value if field == "GENRE" else [MP4FreeForm(v.encode("utf-8")) for v in value]
        else:
            if field in f.tags:
                del f.tags[field]
            if value:
                f.tags[field] = value


def save(f, path: Path, id3_version: int) -> None:
    """Save `f`'s tags into `path` (ID3 as v2.`id3_version`, the file's own)."""
    if _style(f) == "id3":
        f.save(str(path), v2_version=id3_version, v23_sep=None)  # a v2.3 list stays a list
    else:
        f.save(str(path))


def id3_version(f) -> int:
    """3 for a file whose ID3 tag is v2.3 (kept so), else 4."""
    from mutagen.id3 import ID3

    tags = getattr(f, "tags", None)
    if isinstance(tags, ID3) and tags.version[:2] == (2, 2):
        raise ValueError("an ID3v2.2 tag, which matpac does not rewrite (its frames would be converted)")
    return 3 if isinstance(tags, ID3) and tags.version[:2] == (2, 3) else 4
