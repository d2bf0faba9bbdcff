"""`playlist`: a "song radio" or a path between two tracks, from the library's embeddings, as M3U8.

The library is read as `search --index LIB` reads it (`jobs.library.library_embeddings`: the
files on disk that have the model's embedding) and the seeds are found in it the same way
(`jobs.search.plan_queries`: by path, else by audio key, so a moved or retagged file is found
without encoding). A seed the library does not hold is embedded first, into the library, through
the `embed` job (`jobs.search.embed_queries`), and the library is read again: from then on every
seed is a row like any other file.

One audio key is one track: a file copied to two places plays once (the first path in path
order). The choice and the order of the tracks are `jobs.playlist_order`'s; this module finds
the seeds, builds the pool and writes the M3U8 (`#EXTM3U`, one `#EXTINF:<seconds>,<title>` and
one path per track, UTF-8, paths relative to the playlist's folder as players expect).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matpac_cli.config import RunOptions
from matpac_cli.errors import InputError, UsageError
from matpac_cli.events import Listeners
from matpac_cli.jobs import playlist_order as order
from matpac_cli.jobs import search as S
from matpac_cli.jobs.library import library_embeddings
from matpac_cli.jobs.similarity import unit_rows
from matpac_cli.library import tables

HEADER = "#EXTM3U"


@dataclass
class PlaylistConfig:
    """What `matpac playlist` asks for. `n`: tracks in all, the seeds (or `start` and `end`)
    among them; `model`: which of the library's models (None: the only one it holds);
    `spread_folders`: no two tracks of one folder in a row where the choice allows it;
    `start`/`end`: a path from one track to another instead of a radio around seeds; `options`:
    the device and precision a seed not yet in the library is embedded with."""

    n: int = 30
    model: str | None = None
    spread_folders: bool = False
    start: str | None = None
    end: str | None = None
    options: RunOptions | None = None

    def check(self, seeds: Sequence[str]) -> None:
        """The settings alone, refused before the library is read."""
        if (self.start is None) != (self.end is None):
            raise UsageError("a path needs both ends: give `start` and `end` together", settings=("start", "end"))
        if self.start is not None and seeds:
            raise UsageError("give SEED files, or `start` and `end`, not both", settings=("start", "end"))
        if self.start is None and not seeds:
            raise UsageError("give at least one SEED (an audio file), or `start` and `end`", settings=("start", "end"))
        least = 2 if self.start is not None else 1
        if self.n < least:
            raise UsageError(f"n={self.n}: give at least {least} tracks", settings=("n",))


@dataclass
class Track:
    """One entry: the file's path on disk, its duration, and how close it is (cosine to the
    seeds' mean, or to the step's aim on a path; 1.0 for a seed itself)."""

    path: str
    duration_s: float
    score: float = 1.0


@dataclass
class Playlist:
    tracks: list[Track]
    pool: int  # distinct tracks (audio keys) on disk the choice was made from
    embedded: int = 0  # seeds encoded now (they were not in the library)
    notes: list[str] = field(default_factory=list)  # files of the model left out (the view's notes)


@tables.guards
def playlist(root: Path, seeds: Sequence[str], config: PlaylistConfig, load: Callable | None = None) -> Playlist:
    """The playlist of `config` from the library at `root`. `load(resolved)` gives the encoder
    for seeds the library does not hold (default: `Predictor.load` on `config.options`)."""
    config.check(seeds)
    named = list(seeds) if config.start is None else [config.start, config.end]
    emb = library_embeddings(root, config.model)
    found, embedded = _found(root, emb, named, config, load)
    if embedded:
        emb = library_embeddings(root, config.model)  # the seeds encoded now are rows of it
        found, _ = _found(root, emb, named, config, load)
    view = emb.library
    pool = order.Pool(view.paths, view.keys, emb.matrix)
    fixed = _distinct([_seed(view, q) for q in found], config)
    vectors = {s.key: view.vectors[s.key] for s in fixed}
    folders = [os.path.dirname(s.path) for s in fixed]
    if config.start is None:
        centre = unit_rows(np.stack([vectors[s.key] for s in fixed])).mean(axis=0)  # each seed counts the same
        keys = [s.key for s in fixed]
        picked = order.radio(pool, keys, centre, config.n, config.spread_folders, folders[-1])
        head, tail = fixed[: config.n], []
    else:
        a, b = fixed
        picked = order.path(
            pool,
            (a.key, b.key),
            (vectors[a.key], vectors[b.key]),
            (folders[0], folders[1]),
            config.n,
            config.spread_folders,
        )
        head, tail = [a], [b]
    tracks = [Track(s.path, s.duration_s) for s in head]
    tracks += [Track(view.paths[row], float(view.facts[row]["duration_s"]), score) for row, score in picked]
    tracks += [Track(s.path, s.duration_s) for s in tail]
    return Playlist(tracks, pool.size, embedded, list(view.notes))


@dataclass
class _Seed:
    path: str
    key: str
    duration_s: float


def _found(root, emb, named, config, load) -> tuple[list[S.Query], int]:
    """The seeds as queries of the library index, one per file (a folder names its files); the
    ones it does not hold are embedded into it now (how many: the second value)."""
    plan, failed = S.plan_queries(emb, named)
    if failed:
        raise UsageError(f"seed {failed[0].path}: not a file the library holds and no such file")
    if not plan:
        raise UsageError(f"no audio files in {', '.join(named)}")
    todo = [q for q in plan if q.path is not None]
    if not todo:
        return plan, 0
    if config.model is None and emb.model is None:  # a checkpoint of one's own: which file is it?
        raise UsageError(
            f"{todo[0].name} is not in the library {root}; to embed it, give the checkpoint file of "
            "the library's model with `model`",
            settings=("model",),
        )
    predictor = (load or _default_load(config))(S.query_model(emb, config.model))
    errors: list[InputError] = []
    got = S.embed_queries(todo, predictor, emb.library.layer, config.options, Listeners(failure=errors.append), root)
    missed = [q.name for q in todo if q.name not in got]
    if missed:
        why = str(errors[0]) if errors else f"{missed[0]}: could not be embedded"
        raise UsageError(f"seed {why}")  # no playlist without every seed
    return plan, len(todo)


def _default_load(config: PlaylistConfig) -> Callable:
    from matpac_cli.inference.predictor import Predictor

    options = config.options or RunOptions()
    return lambda resolved: Predictor.load(resolved, options.device, options.precision, options.threads)


def _seed(view, q: S.Query) -> _Seed:
    """A seed's entry: the file as the user named it where it is one (a copy of a held file is
    itself, not its twin), else the library's path of that row."""
    key = view.keys[q.row] if q.row is not None else q.key
    if q.path is not None or key is None:
        raise UsageError(f"seed {q.name}: the library does not hold it")  # embedded above: never here
    path = os.path.realpath(q.name) if os.path.isfile(q.name) else view.paths[q.row]
    return _Seed(path, key, float(view.key_facts[key]["duration_s"]))


def _distinct(seeds: list[_Seed], config: PlaylistConfig) -> list[_Seed]:
    """One entry per track: a seed named twice (or two copies of one audio) plays once; a path's
    two ends must be two tracks."""
    out: dict[str, _Seed] = {}
    for seed in seeds:
        out.setdefault(seed.key, seed)
    if config.start is not None and len(out) != 2:
        why = "are one track" if len(out) < 2 else "must be one audio file each"
        raise UsageError(f"start={config.start} and end={config.end} {why}", settings=("start", "end"))
    return list(out.values())


# ---------------------------------------------------------------- M3U8


def title_of(path: str) -> str:
    """The file's title tag where mutagen reads one (ID3 TIT2, Vorbis and FLAC TITLE, MP4 ©nam),
    else its name without the extension; on one line."""
    title = ""
    try:
        import mutagen

        tags = getattr(mutagen.File(path, easy=True), "tags", None)
        for name in ("title", "TIT2", "\xa9nam"):
            value = tags.get(name) if tags is not None else None
            if value:
                title = str(value[0] if isinstance(value, list) else getattr(value, "text", [value])[0])
                break
    except Exception:  # noqa: BLE001 - a file mutagen cannot read has no title: the name stands
        title = ""
    title = " ".join(title.split())  # no line break may end the entry early
    return title or Path(path).stem


def m3u8_text(tracks: Sequence[Track], folder: Path | None, absolute: bool = False) -> str:
    """The playlist: `#EXTM3U`, then `#EXTINF:<whole seconds, half up>,<title>` and the path of each
    track, relative to `folder` (the playlist's; None: the current one) unless `absolute`. A
    relative path that starts with `#` is written `./#...`, so no reader takes it for a comment."""
    base = os.path.realpath(folder or os.curdir)
    lines = [HEADER]
    for t in tracks:
        where = t.path if absolute else os.path.relpath(t.path, base)
        if where.startswith("#"):
            where = "./" + where
        lines += [f"#EXTINF:{math.floor(t.duration_s + 0.5)},{title_of(t.path)}", where]
    return "\n".join(lines) + "\n"


def write_playlist(tracks: Sequence[Track], out: Path, absolute: bool = False) -> None:
    """`out` written whole or not at all (a temporary name, then renamed: `outputs.writers`)."""
    from matpac_cli.outputs.writers import atomic

    text = m3u8_text(tracks, Path(out).parent, absolute)
    with atomic(Path(out), "w") as fh:
        fh.write(text)
