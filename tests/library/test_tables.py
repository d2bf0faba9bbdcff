"""The library's Lance tables under concurrent writers: two processes, one library, no row lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

WRITER = """
import sys, time
from pathlib import Path
from matpac_cli.library import tables
root, who, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for i in range(10):
    rows = {n: [] for n in tables.PATHS.names}
    for j in range(20):
        path = f"/music/{who}/{i}/{j}" if j % 2 else f"/music/shared/{j}"
        for n, v in zip(tables.PATHS.names, (path.encode(), f"k{who}{i}", 1, 2, 3, 4, 5, time.time())):
            rows[n].append(v)
    tables.upsert_paths(root, rows)
    clip = {n: [] for n in tables.CLIPS.names}
    for n, v in zip(tables.CLIPS.names, (f"k{who}{i}", "m", "f", 12, [0.5] * 4, 1.0, 16000, 1, None, None, 0.0)):
        clip[n].append(v)
    tables.append(root, "clips", clip)
"""


def test_two_writers_that_start_together_lose_no_row(tmp_path):
    """Both find no table and make it: each committed a first version of its own and one of them
    was lost (a first run's paths gone: 3 races in 5 lost rows), until the tables are made under a
    lock. Three races, each on a new library."""
    for race in range(3):
        _race(tmp_path / f"library{race}", tmp_path / f"go{race}")


def _race(root: Path, go: Path) -> None:
    import lance

    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(root), who, str(go)], cwd=REPO, stderr=subprocess.PIPE)
        for who in "AB"
    ]
    time.sleep(1.0)  # both waiting at the line
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    paths = [p.decode() for p in lance.dataset(str(root / "paths.lance")).to_table().column("path").to_pylist()]
    expected = {f"/music/{w}/{i}/{j}" for w in "AB" for i in range(10) for j in range(1, 20, 2)}
    expected |= {f"/music/shared/{j}" for j in range(0, 20, 2)}
    assert set(paths) == expected  # none lost (a path both upserted at once may have two rows: readers take the latest)
    keys = lance.dataset(str(root / "clips.lance")).to_table().column("key").to_pylist()
    assert sorted(keys) == sorted(f"k{w}{i}" for w in "AB" for i in range(10))
    assert not any(Path(root).glob("*.lance/**/*.tmp"))


def test_a_held_result_is_committed_within_seconds_while_the_run_waits(tmp_path, predictor):
    """A run blocked on a long file (or a slow disk) adds nothing for minutes: the files it has
    finished must still reach the library within `COMMIT_S` seconds, or kill -9 meanwhile loses
    them (the per-output journal that once kept each one at once is gone)."""
    import lance
    import numpy as np

    from matpac_cli.library.key import Setting
    from matpac_cli.library.store import COMMIT_S, Library
    from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Plan
    from matpac_cli.pipeline.discovery import Item

    plan = Plan(predictor, layers=(-1,))
    out = EncoderOutput(np.ones((1, predictor.dims.embed_dim), np.float32))
    lib = Library(tmp_path / "lib")
    try:
        lib.add(
            "a:one", Setting.of(plan), plan, FileResult(Item("a.wav", tmp_path / "a.wav"), 1.0, 16000, 1, [out]), out
        )
        deadline = time.monotonic() + 3 * COMMIT_S
        rows = 0
        while time.monotonic() < deadline and not rows:
            time.sleep(0.25)
            clips = tmp_path / "lib" / "clips.lance"
            rows = lance.dataset(str(clips)).count_rows() if clips.exists() else 0
        assert rows == 1, "the finished file was still held in memory only"
    finally:
        lib.close()
    assert lance.dataset(str(tmp_path / "lib" / "clips.lance")).count_rows() == 1  # once, not twice


@pytest.mark.parametrize("segments", [False, True])
def test_a_first_run_into_a_new_library_reads_no_table_at_its_commits(tmp_path, predictor, monkeypatch, segments):
    """A run asks the library for its files before it encodes; in a new library there is nothing,
    and each commit after the first read the tables again for the keys it held, to find out what
    the run had already been told (a scan per commit: quadratic in the files of a first run)."""
    import numpy as np

    from matpac_cli.library import tables
    from matpac_cli.library.key import Setting
    from matpac_cli.library.store import COMMIT_FILES, Library
    from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Plan, Segment
    from matpac_cli.pipeline.discovery import Item

    reads = []
    where_keys = tables.where_keys
    monkeypatch.setattr(tables, "where_keys", lambda *a, **k: reads.append(a[2]) or where_keys(*a, **k))
    plan = Plan(predictor, layers=(-1,), segments=segments)
    vector = np.ones(predictor.dims.embed_dim, np.float32)
    out = EncoderOutput(vector[None], None, [Segment(0.0, 1.0, vector)] if segments else [])
    keys = [f"k{i}" for i in range(3 * COMMIT_FILES)]
    lib = Library(tmp_path / "lib")
    assert lib.lookup(keys, Setting.of(plan), plan.resolved_layers(), segments) == {}
    for key in keys:
        lib.add(key, Setting.of(plan), plan, FileResult(Item(key, tmp_path / key), 1.0, 16000, 1, [out]), out)
    lib.close()
    assert reads == []
    stored = tables.open_table(tmp_path / "lib", "segments" if segments else "clips").count_rows()
    assert stored == len(keys)


def test_files_finished_in_a_burst_are_committed_together(tmp_path, predictor, monkeypatch):
    """A cluster finishes hundreds of files a second: committed 16 at a time, the driver spent
    most of its time in Lance commits. Within `COMMIT_MIN_S` of the last commit, files wait."""
    import numpy as np

    from matpac_cli.library import store, tables
    from matpac_cli.library.key import Setting
    from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Plan
    from matpac_cli.pipeline.discovery import Item

    monkeypatch.setattr(store, "COMMIT_MIN_S", 3600.0, raising=False)  # a burst that never ends, for the test
    plan = Plan(predictor, layers=(-1,))
    out = EncoderOutput(np.ones((1, predictor.dims.embed_dim), np.float32))
    lib = store.Library(tmp_path / "lib")
    for i in range(6 * store.COMMIT_FILES):
        lib.add(f"k{i}", Setting.of(plan), plan, FileResult(Item("a", tmp_path / "a"), 1.0, 16000, 1, [out]), out)
    assert tables.open_table(tmp_path / "lib", "clips") is None  # nothing committed yet
    lib.close()
    clips = tables.open_table(tmp_path / "lib", "clips")
    assert clips.count_rows() == 6 * store.COMMIT_FILES


def test_tidying_merges_the_small_fragments_and_leaves_the_big_one(tmp_path):
    """A library of 100,000 clips has one big fragment; each run adds small ones, and tidying
    (past 16) merged them all, the big one too: 1.5 GB rewritten every 17th run."""
    import os

    from matpac_cli.library import tables

    root = tmp_path / "lib"
    names = tables.PATHS.names

    def rows(start: int, n: int) -> dict:
        t = {name: [] for name in names}
        for i in range(start, start + n):
            for name, value in zip(names, (os.fsencode(f"/m/{i}.wav"), f"k{i}", 1, i, 10, 1, 1, 1.0)):
                t[name].append(value)
        return t

    tables.append(root, "paths", rows(0, 40_000))
    big = tables.open_table(root, "paths").get_fragments()[0].data_files()[0].path
    for j in range(17):
        tables.append(root, "paths", rows(40_000 + 10 * j, 10))
    tables.tidy(root)
    fragments = tables.open_table(root, "paths").get_fragments()
    assert len(fragments) == 2 and fragments[0].data_files()[0].path == big  # the big one as it was
    assert tables.open_table(root, "paths").count_rows() == 40_170
