"""A re-run's files matched against the library's `paths` table as columns (`library.bypath`),
with what the folder walk learnt of each file (its real path and stat) asked of the disk once.

A re-run over 100,000 files spent seconds resolving every path twice (a realpath is an lstat per
component) and reading the table as a Python tuple per row; these hold the shortcut to the
answers of the slow way: the same real paths and stats, the same keys vouched for.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from matpac_cli.library import bypath, tables
from matpac_cli.library.key import RACY_S, Stat
from matpac_cli.library.store import Library
from matpac_cli.pipeline import discovery


def tree(root: Path, folders: int = 3, per: int = 20) -> Path:
    """Empty .wav files in a few folders, one folder reached through a symlink, one file a link."""
    for f in range(folders):
        for i in range(per):
            (root / "real" / f"f{f}").mkdir(parents=True, exist_ok=True)
            (root / "real" / f"f{f}" / f"t{i:03d}.wav").write_bytes(b"x" * (i + 1))
    os.symlink(root / "real" / "f0", root / "real" / "via")
    os.symlink(root / "real" / "f1" / "t000.wav", root / "real" / f"f{folders - 1}" / "link.wav")
    (root / "outside.wav").write_bytes(b"y")
    os.symlink(root / "outside.wav", root / "real" / f"f{folders - 1}" / "out.wav")
    return root / "real"


def test_the_walk_resolves_each_folder_once_and_asks_no_file_its_stat(tmp_path, monkeypatch):
    """A realpath per folder, not per file, and no lstat per file: the listing says what is a
    symlink; the library asks each file's stat once, as it identifies it (`stat_of`)."""
    top = tree(tmp_path)
    calls, stats = [], []
    slow, lstat, stat = os.path.realpath, os.lstat, os.stat
    monkeypatch.setattr(os.path, "realpath", lambda p, *a, **k: calls.append(p) or slow(p, *a, **k))
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: stats.append(p) or lstat(p, *a, **k))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(p) or stat(p, *a, **k))
    items = discovery.discover([str(top)])
    monkeypatch.undo()
    assert len(items) == 3 * 20 + 1  # `via` is f0 again, `link.wav` f1/t000 again: one row per file
    assert len(calls) < 12, len(calls)  # a folder at a time (was two per file)
    links = {str(p) for p in top.rglob("*.wav") if p.is_symlink()}
    asked = {p for p in map(str, stats) if p.endswith(".wav")}
    assert asked <= links | {os.path.realpath(p) for p in links}, asked  # the symlinks only (was every file)
    assert [i.name for i in items] == sorted(i.name for i in items)
    for item in items:
        assert item.real is None or item.real == os.path.realpath(item.path)
        if item.real is not None:
            assert bypath.stat_of(item) == (item.real, os.lstat(item.path))
    (out,) = [i for i in items if i.name.endswith("out.wav")]
    assert out.real is None and out.linked  # a symlink is resolved as before, when asked


def test_a_tree_thousands_of_folders_deep_is_walked_not_a_recursion_error(tmp_path):
    """The walk keeps a stack of folders, not a frame per level (a tree 1,100 deep raised
    RecursionError), and still goes top down, each folder's subfolders in name order."""
    top = tmp_path / "top"
    try:
        deep = top
        deep.mkdir()
        for _ in range(1100):
            deep = deep / "d"
            deep.mkdir()
        (deep / "bottom.wav").write_bytes(b"x")
        for name in ("b", "a"):
            (top / name).mkdir()
            (top / name / f"{name}.wav").write_bytes(b"x")
        items = discovery.discover([str(top)])
        assert [i.name.rsplit("/", 1)[-1] for i in items] == ["a.wav", "b.wav", "bottom.wav"]
        assert items[-1].name.count("/d") == 1100
    finally:  # taken down a level at a time: pytest's own clean-up (shutil.rmtree) recurses, and fails
        node = top
        while (node / "d").is_dir():
            node = node / "d"
        (node / "bottom.wav").unlink(missing_ok=True)
        while node != top:
            node.rmdir()
            node = node.parent


def record(root: Path, rows: list[tuple[str, str, Stat, float]]) -> None:
    table = {name: [] for name in tables.PATHS.names}
    for path, key, st, seen in rows:
        for name, value in zip(tables.PATHS.names, (os.fsencode(path), key, *vars(st).values(), seen)):
            table[name].append(value)
    tables.ensure(root)
    import lance

    lance.write_dataset(pa.table(table, schema=tables.PATHS), tables.uri(root, "paths"), mode="append")


def test_the_columns_vouch_as_stat_vouches_does(tmp_path):
    """The same keys found by path as `Stat.vouches` row by row: the seen-last row of a path
    recorded twice, a changed size, the racy rule to the nanosecond, a path never seen."""
    files = [tmp_path / f"a{i}.wav" for i in range(7)]
    old = time.time() - 3600
    for f in files:
        f.write_bytes(b"abc")
        os.utime(f, (old, old))
    now = [Stat.of(f) for f in files]
    seen = time.time()
    bound = int(np.ceil((seen - RACY_S) * 1e9))
    rows = [
        (str(files[0]), "k0-old", now[0], seen - 100),
        (str(files[0]), "k0", now[0], seen),  # seen last: this one counts
        (str(files[1]), "k1", Stat(now[1].dev, now[1].ino, 99, now[1].mtime_ns, now[1].ctime_ns), seen),
        (str(files[2]), "k2", now[2], (now[2].mtime_ns + RACY_S * 1e9 - 1e6) / 1e9),  # keyed while racy
    ]
    for j, mtime in ((3, bound - 1), (4, bound), (5, bound + 1)):  # at the racy rule's edge
        os.utime(files[j], ns=(mtime, mtime))
        now[j] = Stat.of(files[j])
        rows.append((str(files[j]), f"k{j}", now[j], seen))
    record(tmp_path / "lib", rows)
    found = [(str(f), os.stat(f)) for f in files]
    matched = bypath.match(tmp_path / "lib", [p for p, _ in found], bypath.columns([s for _, s in found]))
    slow = bypath.known(tmp_path / "lib")
    for j, (path, _) in enumerate(found):
        row = slow.get(path)
        expect = row is not None and now[j].vouches(row[1], row[2])
        assert bool(matched.vouched[j]) == expect, (j, row)
        got = matched.recorded(j)
        assert (got and got[0]) == (row and row[0])
    assert list(matched.vouched) == [True, False, False, True, False, False, False]


def test_identify_finds_unchanged_paths_by_the_columns_and_keys_the_rest(tmp_path):
    top = tree(tmp_path, folders=2, per=5)
    items = discovery.discover([str(top)])
    lib = Library(tmp_path / "lib")
    first = lib.identify(items)  # the outside file through its link too
    lib.commit()
    assert {k.how for k in first.values()} == {"moved"} and len(first) == len(items)
    old = time.time() - 3600  # keyed long after its last write: no longer racy
    for item in items:
        os.utime(item.path, (old, old))
    lib = Library(tmp_path / "lib")
    lib.identify(discovery.discover([str(top)]))  # keyed again (the mtime moved), and recorded
    lib.commit()
    again = lib.identify(discovery.discover([str(top)]))
    assert {k.how for k in again.values()} == {"same path"}
    assert [k.key for k in again.values()] == [k.key for k in first.values()]


def test_identify_hands_the_files_on_as_columns_and_makes_a_known_only_when_asked(tmp_path, monkeypatch):
    """A `Known` and a dict entry per unchanged file cost 0.3 s at 100,000 files: `identify`
    gives columns (index, key, how, real path), and a `Known` where one file is asked for."""
    top = tree(tmp_path, folders=2, per=4)
    lib = Library(tmp_path / "lib")
    lib.identify(discovery.discover([str(top)]))
    lib.commit()
    old = time.time() - 3600  # keyed long after its last write: no longer racy
    for item in discovery.discover([str(top)]):
        os.utime(item.path, (old, old))
    lib = Library(tmp_path / "lib")
    first = lib.identify(discovery.discover([str(top)]))  # keyed again (the mtime moved), and recorded
    lib.commit()
    made = []
    init = bypath.Known.__init__
    monkeypatch.setattr(bypath.Known, "__init__", lambda self, *a: made.append(a) or init(self, *a))
    items = discovery.discover([str(top)])
    again = Library(tmp_path / "lib").identify(items)
    assert made == [] and len(again) == len(items)
    assert again.hows == ["same path"] * len(items) and sorted(again.index) == list(range(len(items)))
    assert again.reals == [bypath.stat_of(items[i])[0] for i in again.index]
    assert [again[i].key for i in again.index] == again.audio_keys == [first[i].key for i in again.index]
    assert len(made) == 2 * len(items)  # asked for, one at a time
    assert sorted(again.keys()) == sorted(dict(again)) == list(range(len(items)))  # still a mapping by index


def test_a_file_moved_over_a_walked_path_after_the_walk_is_keyed_as_the_new_file(tmp_path):
    """The walk runs before the model loads (minutes, for a download); a file moved over one of
    its paths since (`mv new.wav a.wav`, an editor's save) must not be vouched for by the stat
    the walk took: the library would hand on the old audio's embedding."""
    import soundfile as sf

    from matpac_cli.library.key import audio_key

    folder = tmp_path / "music"
    folder.mkdir()
    sf.write(folder / "a.wav", np.zeros(1600, np.float32), 16000)
    sf.write(tmp_path / "new.wav", np.full(1600, 0.25, np.float32), 16000)
    hour_ago = time.time() - 3600
    os.utime(folder / "a.wav", (hour_ago, hour_ago))  # written long before it was keyed: its stat vouches
    library = Library(tmp_path / "lib")
    items = discovery.discover([str(folder)])
    first = library.identify(items)[0].key
    library.commit()
    items = discovery.discover([str(folder)])  # the next run's walk ...
    os.replace(tmp_path / "new.wav", folder / "a.wav")  # ... then, while its model loads, a move
    known = Library(tmp_path / "lib").identify(items)[0]
    assert known.key == audio_key(str(folder / "a.wav")) != first


def test_a_folder_link_repointed_after_the_walk_is_keyed_and_recorded_as_the_file_it_leads_to(tmp_path):
    """The walk learnt `music/album`'s real folder (A); repointed to B while the model loads, the
    file at the path is B's: keyed by B's audio and recorded at B's path, not A's (the walk's)."""
    import soundfile as sf

    from matpac_cli.library.key import audio_key

    for folder, value in (("A", 0.0), ("B", 0.25)):
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / "x.wav", np.full(1600, value, np.float32), 16000)
        hour_ago = time.time() - 3600
        os.utime(tmp_path / folder / "x.wav", (hour_ago, hour_ago))
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "album").symlink_to("../A")
    library = Library(tmp_path / "lib")
    library.identify(discovery.discover([str(tmp_path / "music")]))
    library.commit()
    items = discovery.discover([str(tmp_path / "music")])  # the next run's walk ...
    (tmp_path / "music" / "album").unlink()
    (tmp_path / "music" / "album").symlink_to("../B")  # ... then, while its model loads, the link repointed
    known = Library(tmp_path / "lib").identify(items)[0]
    assert known.key == audio_key(str(tmp_path / "B" / "x.wav")) != audio_key(str(tmp_path / "A" / "x.wav"))
    assert known.path == os.path.realpath(tmp_path / "B" / "x.wav")


def test_a_file_dated_past_2262_is_keyed_by_its_audio_not_a_traceback(tmp_path):
    """`touch -d 2300-01-01` sets a time whose nanoseconds do not fit the table's int64: every
    library run ended in a traceback (OverflowError) as it matched or recorded the stat."""
    import soundfile as sf

    from matpac_cli.library.key import audio_key

    folder = tmp_path / "music"
    folder.mkdir()
    for name, value in (("far.wav", 0.1), ("near.wav", 0.2)):
        sf.write(folder / name, np.full(1600, value, np.float32), 16000)
    far = 10**19  # ns: the year 2286
    os.utime(folder / "far.wav", ns=(far, far))
    assert os.stat(folder / "far.wav").st_mtime_ns > 2**63 - 1
    for _ in range(2):  # the second run finds the first's records
        library = Library(tmp_path / "lib")
        known = library.identify(discovery.discover([str(folder)]))
        library.close()
        keys = {k.path.rsplit("/", 1)[-1]: k.key for k in known.values()}
        assert keys == {"far.wav": audio_key(str(folder / "far.wav")), "near.wav": audio_key(str(folder / "near.wav"))}


def test_paths_are_looked_up_as_the_table_holds_them_whatever_their_bytes(tmp_path):
    """The run's real paths go to Arrow as UTF-8 cast to bytes (no Python call per path); a name
    that is not UTF-8 (a surrogate escape) falls back to `os.fsencode`, and is still found."""
    names = ["/a/b.wav", "/é/ü.flac", os.fsdecode(b"/x/\xff\xfe.wav")]
    for some in (names[:2], names):
        assert bypath.encoded(some).to_pylist() == [os.fsencode(n) for n in some]
    odd = tmp_path / os.fsdecode(b"\xff odd.wav")
    odd.write_bytes(b"z")
    items = discovery.discover([str(tmp_path)])
    lib = Library(tmp_path / "lib")
    lib.identify(items)
    lib.commit()
    old = time.time() - 3600
    os.utime(odd, (old, old))
    lib.identify(items := discovery.discover([str(tmp_path)]))
    lib.commit()
    reals = [discovery.real_path(i) for i in items]
    matched = bypath.match(tmp_path / "lib", reals, bypath.columns([os.stat(r) for r in reals]))
    assert list(matched.vouched) == [True]


def test_the_walk_s_paths_read_as_the_same_paths_parsed_from_their_names(tmp_path, monkeypatch):
    """The walk gives each file's path its string as it makes it (no formatting on first use):
    the same string, and an equal path, as parsing it gives, however the folder was named."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.wav", "d/sub/b.flac"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    for arg in (str(tmp_path / "d"), str(tmp_path / "d") + "/", "d", "./d", ".", "d//sub/.."):
        for item in discovery.discover([arg]):
            parsed = Path(os.path.join(*Path(item.name).parts)) if arg != "d//sub/.." else None
            assert str(item.path) == os.fspath(Path(str(item.path))), arg
            assert os.path.samefile(item.path, item.name)
            if parsed is not None:
                assert item.path == parsed and str(item.path) == str(parsed), (arg, item)


def test_an_unchanged_path_seen_long_ago_is_recorded_again_with_its_own_key(tmp_path, monkeypatch):
    """The `seen` time of a path vouched for is refreshed once a day (`SEEN_AGAIN_S`): each such
    path is recorded again with the key it was vouched for, taken from the columns."""
    from matpac_cli.library import store

    top = tree(tmp_path, folders=2, per=3)
    lib = Library(tmp_path / "lib")
    lib.identify(discovery.discover([str(top)]))
    lib.commit()
    old = time.time() - 3600
    for item in discovery.discover([str(top)]):
        os.utime(item.path, (old, old))
    lib = Library(tmp_path / "lib")
    lib.identify(discovery.discover([str(top)]))
    lib.commit()
    monkeypatch.setattr(store, "SEEN_AGAIN_S", 0.0)  # every path seen "a day" ago
    lib = Library(tmp_path / "lib")
    known = lib.identify(discovery.discover([str(top)]))
    assert set(known.hows) == {"same path"}
    again = dict(zip(lib._paths["path"], lib._paths["key"]))
    assert again == {os.fsencode(r): k for r, k in zip(known.reals, known.audio_keys)}
