"""The end-of-run merge in three parts (`library.compaction`): planned here, rewritten in another
process (as a Ray worker does: the rewrites pickle), committed here; rows whole, fragments fewer."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import REPO

ELSEWHERE = """
import pickle, sys
rewrites = pickle.load(open(sys.argv[1], "rb"))
results = []
for rewrite in rewrites:
    try:
        results.append(rewrite())
    except Exception as exc:
        results.append(exc)
pickle.dump(results, open(sys.argv[2], "wb"))
"""


def _clips(root: Path, small: int, big: int = 20_000) -> None:
    """A clips table of one big fragment and `small` fragments of 100 rows each, as a run's
    workers leave it (`write_fragments`, then the driver's commit)."""
    from matpac_cli.library import tables

    rng = np.random.default_rng(0)

    def rows(start: int, n: int) -> dict:
        t = {name: [] for name in tables.CLIPS.names}
        for i in range(start, start + n):
            row = (f"k{i}", "m", "f", 12, rng.standard_normal(8).astype(np.float32), 1.0, 16000, 1, None, None, 0.0)
            for name, value in zip(tables.CLIPS.names, row):
                t[name].append(value)
        return t

    tables.append(root, "clips", rows(0, big))
    for j in range(small):
        tables.commit_fragments(root, "clips", tables.write_fragments(root, "clips", rows(big + 100 * j, 100)))


def _rows(root: Path) -> dict:
    from matpac_cli.library import tables

    t = tables.open_table(root, "clips").to_table().to_pydict()
    return {key: (t["layer"][j], list(t["embedding"][j])) for j, key in enumerate(t["key"])}


def _elsewhere(rewrites: list, tmp_path: Path) -> list:
    """`rewrites` called in another process, their results (or errors) back, pickled both ways."""
    (tmp_path / "in.pkl").write_bytes(pickle.dumps(rewrites))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", ELSEWHERE, str(tmp_path / "in.pkl"), str(tmp_path / "out.pkl")],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return pickle.loads((tmp_path / "out.pkl").read_bytes())


def test_the_rows_are_rewritten_in_another_process_and_committed_here(tmp_path):
    from matpac_cli.library import compaction, tables

    root = tmp_path / "lib"
    _clips(root, 40)
    before, ds = _rows(root), tables.open_table(root, "clips")
    big = ds.get_fragments()[0].data_files()[0].path
    planned = compaction.plan(root)
    assert {r.name for r in planned.rewrites} == {"clips"} and len(planned.rewrites) >= 2  # paths: none
    results = _elsewhere(planned.rewrites, tmp_path)
    assert all(r.pid != os.getpid() for r in results)  # rewritten in the other process
    assert compaction.commit(root, planned, results) == {"clips": [(r.host, r.pid) for r in results]}
    fragments = tables.open_table(root, "clips").get_fragments()
    assert len(fragments) < 41 // 4 and fragments[0].data_files()[0].path == big  # the big one as it was
    assert _rows(root) == before


def test_a_failed_rewrite_commits_the_others_and_leaves_the_table_to_the_tidy(tmp_path):
    """One rewrite cannot read the library (its folder is elsewhere for that worker): the others
    are committed, the table is not merged whole, and `tidy` on the driver merges what is left."""
    from dataclasses import replace

    from matpac_cli.library import compaction, tables

    root = tmp_path / "lib"
    _clips(root, 40)
    before = _rows(root)
    planned = compaction.plan(root)
    lost = replace(planned.rewrites[0], root=str(tmp_path / "elsewhere"))
    results = _elsewhere([lost, *planned.rewrites[1:]], tmp_path)
    assert isinstance(results[0], Exception)
    assert compaction.commit(root, planned, results) == {}
    between = len(tables.open_table(root, "clips").get_fragments())
    assert between < 41 and _rows(root) == before  # the others merged
    tables.tidy(root)
    assert len(tables.open_table(root, "clips").get_fragments()) < between and _rows(root) == before


def test_the_tidy_leaves_the_tables_merged_already_and_merges_the_others(tmp_path):
    """A table the cluster merged (`Library.merged`) is not merged again by the driver."""
    from matpac_cli.library import tables
    from matpac_cli.library.store import Library

    root = tmp_path / "lib"
    _clips(root, 20)
    library = Library(root)
    library.merged["clips"] = []
    library.close()
    assert len(tables.open_table(root, "clips").get_fragments()) == 21
    Library(root).close()
    assert len(tables.open_table(root, "clips").get_fragments()) < 21


def test_a_rewrite_runs_only_where_the_run_s_token_is_seen(tmp_path):
    """A node without the driver's library (its own disk) is told by the token, not by a Lance
    error: the rewrite refuses (`Unseen`), and where the token is there it runs."""
    import pytest

    from matpac_cli.library import compaction

    root = tmp_path / "lib"
    _clips(root, 20)
    planned = compaction.plan(root, token=".matpac-ray-x")
    with pytest.raises(compaction.Unseen, match="not seen on Ray node"):
        planned.rewrites[0]()
    (root / ".matpac-ray-x").touch()
    assert planned.rewrites[0]().name == "clips"


def test_a_copy_of_the_library_at_the_same_path_never_commits_into_the_driver_s(tmp_path):
    """A node whose own copy of the library sits at the driver's path (a default library in a
    home folder, a synced snapshot) rewrites its copy: those data files are not in the driver's
    folder, so nothing is committed, and the driver's library stays readable and whole."""
    import shutil
    from dataclasses import replace

    from matpac_cli.library import compaction, tables

    root, copy = tmp_path / "lib", tmp_path / "copy"
    _clips(root, 20)
    before = _rows(root)
    shutil.copytree(root, copy)
    planned = compaction.plan(root)
    results = _elsewhere([replace(r, root=str(copy)) for r in planned.rewrites], tmp_path)
    assert all(isinstance(r, compaction.Rewritten) for r in results)
    assert compaction.commit(root, planned, results) == {}
    assert _rows(root) == before and len(tables.open_table(root, "clips").get_fragments()) == 21


def test_rewrites_that_are_not_committed_leave_no_data_files(tmp_path):
    """Another run deleted rows between the plan and the commit: Lance refuses the commit, and
    the merged copies the rewrites wrote are removed, not left for a week."""
    from matpac_cli.library import compaction, tables

    root = tmp_path / "lib"
    _clips(root, 20)
    planned = compaction.plan(root)
    results = _elsewhere(planned.rewrites, tmp_path)
    tables.delete(root, "clips", "key = 'k20000'")  # a fragment the plan merges
    assert compaction.commit(root, planned, results) == {}
    ds = tables.open_table(root, "clips")
    referenced = {f.path for fragment in ds.get_fragments() for f in fragment.data_files()}
    assert {p.name for p in (root / "clips.lance" / "data").iterdir()} == referenced
