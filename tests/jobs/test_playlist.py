"""`matpac playlist` end to end: the real command on a real library made by a real `matpac embed`,
and every playlist read back by a real M3U8 parser (the `m3u8` package): each entry's path
resolves to the right file, with its duration and title. The order is checked against the rules
(`jobs.playlist_order`) recomputed here from the embed output of the same run."""

from __future__ import annotations

import itertools
import math
import os
import shutil
from pathlib import Path

import m3u8
import numpy as np
import pytest
import soundfile as sf
from conftest import retag, run_matpac, write_audio

from matpac_cli.jobs.playlist_order import spread

TITLE = "Café, Nr. 1"


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """Three album folders of four files (one FLAC with a title tag), embedded into the library
    `L` and into `emb.npy` (its rows: the same vectors, to recompute the order from)."""
    d = tmp_path_factory.mktemp("pl")
    for album in range(3):
        for t in range(4):
            write_audio(d / "music" / f"album{album}" / f"t{t}.wav", 2.0 + 0.6 * t, seed=4 * album + t)
    retag(write_audio(d / "music" / "album1" / "tagged.flac", 3.2, seed=30), TITLE)
    args = ["embed", "music", "--model", str(tiny), "--library", "L", "--out", "emb.npy", "--device", "cpu", "-q"]
    proc = run_matpac(args, cwd=d)
    assert proc.returncode == 0, proc.stderr.decode()
    return d


def playlist(d: Path, *args: str):
    return run_matpac(["playlist", *args, "--library", "L"], cwd=d)


def ok(d: Path, *args: str):
    proc = playlist(d, *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def entries(path: Path) -> list[tuple[str, float, str]]:
    """(real path, duration, title) of each entry as the m3u8 parser reads it."""
    parsed = m3u8.load(str(path))
    base = path.parent
    return [(os.path.realpath(base / s.uri), s.duration, s.title) for s in parsed.segments]


def vectors(d: Path) -> dict[str, np.ndarray]:
    """Real path -> unit clip vector, from the embed output beside the library."""
    import csv

    matrix = np.load(d / "emb.npy")
    with open(d / "emb.csv") as fh:
        rows = list(csv.DictReader(fh))
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return {os.path.realpath(d / r["path"]): unit[int(r["row"])] for r in rows}


def test_radio_is_the_seed_then_its_nearest_read_by_a_real_parser(made):
    seed = made / "music" / "album0" / "t1.wav"
    proc = ok(made, "music/album0/t1.wav", "--n", "6", "--out", "mixes/mix.m3u8")
    assert b"6 tracks from 13 in the library" in proc.stderr
    text = (made / "mixes" / "mix.m3u8").read_text(encoding="utf-8")
    assert text.startswith("#EXTM3U\n#EXTINF:") and "../music/album0/t1.wav" in text  # relative to its folder
    got = entries(made / "mixes" / "mix.m3u8")
    vecs = vectors(made)
    ranked = sorted((p for p in vecs if p != str(seed)), key=lambda p: -float(vecs[p] @ vecs[str(seed)]))
    assert [p for p, _, _ in got] == [str(seed), *ranked[:5]]
    for path, duration, title in got:
        assert duration == math.floor(sf.info(path).duration + 0.5)
        assert title == (TITLE if path.endswith("tagged.flac") else Path(path).stem)


def test_titles_from_tags_absolute_paths_and_stdout(made):
    """The FLAC's tag title (a comma and a non-ASCII letter in it) as the entry's title; --out -
    writes the same playlist to stdout, paths relative to the current folder; --absolute."""
    proc = ok(made, "music/album1/tagged.flac", "--n", "3", "--absolute")
    parsed = m3u8.loads(proc.stdout.decode("utf-8"))
    first = parsed.segments[0]
    assert (first.uri, first.title) == (str(made / "music" / "album1" / "tagged.flac"), TITLE)
    assert all(os.path.isabs(s.uri) and os.path.isfile(s.uri) for s in parsed.segments)
    here = m3u8.loads(ok(made, "music/album1/tagged.flac", "--n", "3", "--out", "-").stdout.decode())
    assert [os.path.realpath(made / s.uri) for s in here.segments] == [s.uri for s in parsed.segments]


def _meets(paths: list[str]) -> int:
    return sum(os.path.dirname(a) == os.path.dirname(b) for a, b in zip(paths, paths[1:]))


def test_spread_folders_keeps_the_tracks_and_parts_the_albums(made):
    """The same tracks as without the option, the seed first, and as few neighbours of one folder
    as any order of them has (every order tried)."""
    for seed in ("music/album0/t0.wav", "music/album2/t3.wav", "music/album1/tagged.flac"):
        ok(made, seed, "--n", "7", "--out", "plain.m3u8", "--force")
        ok(made, seed, "--n", "7", "--out", "spread.m3u8", "--force", "--spread-folders")
        plain = [p for p, _, _ in entries(made / "plain.m3u8")]
        spread_out = [p for p, _, _ in entries(made / "spread.m3u8")]
        assert spread_out[0] == plain[0] and sorted(spread_out) == sorted(plain)
        best = min(_meets([plain[0], *rest]) for rest in itertools.permutations(plain[1:]))
        assert _meets(spread_out) == best


def test_spread_rule():
    """Best first where it can; a crowded folder takes every other place when it must."""
    assert spread(list("abcde"), ["A", "A", "A", "B", "B"]) == list("adbec")
    assert spread(list("abc"), ["A", "A", "B"], before="B") == list("acb")
    assert spread(list("abcd"), ["A", "A", "A", "B"]) == list("adbc")  # two of A must meet
    assert spread(list("abcd"), ["A", "B", "C", "D"]) == list("abcd")


def test_path_from_a_to_b_takes_the_nearest_unused_track_toward_b(made):
    """Starts at A, ends at B, no track twice; each step is the unused track nearest to the
    point 1/k of the way from the current track to B (k: the steps left)."""
    ok(made, "--from", "music/album0/t0.wav", "--to", "music/album2/t3.wav", "--n", "6", "--out", "path.m3u8")
    got = [p for p, _, _ in entries(made / "path.m3u8")]
    vecs = vectors(made)
    a, b = str(made / "music" / "album0" / "t0.wav"), str(made / "music" / "album2" / "t3.wav")
    want, here = [a], vecs[a]
    for step in range(4):
        aim = here + (vecs[b] - here) / (5 - step)
        aim /= np.linalg.norm(aim)
        nxt = max((p for p in vecs if p not in want and p != b), key=lambda p: float(vecs[p] @ aim))
        want.append(nxt)
        here = vecs[nxt]
    assert got == [*want, b] and len(set(got)) == 6


def test_a_seed_not_in_the_library_is_embedded_first_and_a_copy_plays_once(made, tiny, tmp_path):
    d = tmp_path / "lib"
    shutil.copytree(made / "music", d / "music")  # a library of its own: the copies' only paths
    shutil.copy(d / "music" / "album0" / "t1.wav", d / "music" / "album2" / "copy of t1.wav")
    args = ["embed", "music", "--model", str(tiny), "--library", "L", "--out", "e.npy", "--device", "cpu", "-q"]
    assert run_matpac(args, cwd=d).returncode == 0
    write_audio(d / "new" / "song.wav", 3.0, seed=50)
    proc = playlist(d, "new/song.wav", "--n", "20", "--out", "mix.m3u8")
    assert proc.returncode == 2 and b"give the checkpoint file of the library's model with --model" in proc.stderr
    proc = ok(d, "new/song.wav", "--n", "20", "--out", "mix.m3u8", "--model", str(tiny))
    assert b"1 seed(s) embedded now" in proc.stderr and b"14 tracks from 14" in proc.stderr
    got = [p for p, _, _ in entries(d / "mix.m3u8")]
    assert got[0] == str(d / "new" / "song.wav") and len(set(got)) == 14
    twins = {str(d / "music" / "album0" / "t1.wav"), str(d / "music" / "album2" / "copy of t1.wav")}
    assert len(twins & set(got)) == 1  # one audio, two paths: one track
    again = ok(d, "new/song.wav", "--n", "3", "--out", "mix.m3u8", "--force")  # held now: no model needed
    assert b"embedded now" not in again.stderr


def test_out_rules(made):
    (made / "mine.m3u8").write_text("my own\n")
    proc = playlist(made, "music/album0/t0.wav", "--out", "mine.m3u8")
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1 and b"--force" in proc.stderr
    assert (made / "mine.m3u8").read_text() == "my own\n"
    proc = playlist(made, "music/album0/t0.wav", "--out", "music/album0/t0.wav", "--force")
    assert proc.returncode == 2 and b"is an input of this run" in proc.stderr
    ok(made, "music/album0/t0.wav", "--out", "mine.m3u8", "--force", "--n", "2")
    assert len(entries(made / "mine.m3u8")) == 2


@pytest.mark.parametrize(
    "args, said",
    [
        (["--from", "music/album0/t0.wav"], "give --from and --to together"),
        (["music/album0/t1.wav", "--from", "music/album0/t0.wav", "--to", "music/album0/t2.wav"], "not both"),
        (["--from", "music/album0/t0.wav", "--to", "music/album0/t0.wav"], "are one track"),
        (["music/album0/t0.wav", "--n", "0"], "--n 0: give at least 1"),
        (["nowhere.wav"], "seed nowhere.wav: not a file the library holds"),
        ([], "give at least one SEED"),
    ],
)
def test_mistakes_are_one_line(made, args, said):
    proc = playlist(made, *args)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and said in err and err.count("\n") == 1, err


def test_several_models_are_refused_with_their_list(made, ckpts, tmp_path):
    d = tmp_path / "two"
    shutil.copytree(made / "music", d / "music")
    shutil.copytree(made / "L", d / "L")
    proc = run_matpac(
        ["embed", "music/album0", "--model", str(ckpts["tiny608"]), "--library", "L", "--out", "e.npy", "-q"], cwd=d
    )
    assert proc.returncode == 0, proc.stderr.decode()
    proc = playlist(d, "music/album0/t0.wav")
    assert proc.returncode == 2 and b"holds several models" in proc.stderr and b"--model" in proc.stderr
    ok(d, "music/album0/t0.wav", "--model", str(ckpts["tiny608"]), "--n", "4", "--out", "mix.m3u8")
    assert len(entries(d / "mix.m3u8")) == 4  # album0's four files: what that model holds
