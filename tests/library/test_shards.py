"""The library written by Ray workers (library/shards.py) on a real Lance library: which files a
worker may store, and the fragments it writes, committed by the driver's library in one commit
and known to it once committed (its output reads them back)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lance
import numpy as np
import pytest

from matpac_cli.library import tables
from matpac_cli.library.key import Setting
from matpac_cli.library.shards import Sink, sink
from matpac_cli.library.store import Library

A = Setting("m" * 64, "frontend-a")
FACTS = (3.0, 16000, 1, None)


def _plan(layers=(2,), segments=False):
    """What `sink` asks of a plan: its resolved layers, segments and its setting (`Setting.of`)."""
    return SimpleNamespace(resolved_layers=lambda: layers, segments=segments)


@pytest.fixture
def library(tmp_path, monkeypatch) -> Library:
    monkeypatch.setattr(Setting, "of", staticmethod(lambda plan: A))
    return Library(tmp_path / "lib")


def _item(name: str):
    from matpac_cli.pipeline.discovery import Item

    return Item(name, Path(name))


def test_a_worker_stores_only_files_alone_with_their_audio_and_new_to_the_library(library):
    library.adopt(
        Sink(library, [A], [(2,)], {}).shard().write([("kp", FACTS, [((1,), np.ones((1, 4)), None)])]),
        [("kp", A, (1,), False)],
    )
    library.commit()  # kp: layer 1 stored, layer 2 lacking
    items = [_item(n) for n in ("a", "b", "copy-of-b", "p")]
    by_item = dict(zip(items, ["ka", "kb", "kb", "kp"]))
    made = sink(library, items, by_item, [_plan()])
    assert made.keys == {"a": "ka"}  # two inputs of one audio, or a part stored: the driver's, once each
    assert made.key_of("b") == "" and made.key_of("p") == ""
    gave_up = _item("given-up")  # keyed, but skipped: the library records it as failed (`jobs.stored`)
    assert sink(library, items, {**by_item, gave_up: "kg"}, [_plan()]).keys == {"a": "ka"}  # was a KeyError


def test_a_file_whose_segments_the_library_holds_already_is_the_driver_s(library):
    """With segments, a key of which the segments table holds a row (its clip rows lacking: a
    `library prune` stopped between the two tables, which deletes clips first) is stored by the
    driver, which writes only what lacks."""
    from matpac_cli.pipeline.assemble import Segment

    written = (
        Sink(library, [A], [(2,)], {}, [True])
        .shard()
        .write([("ks", FACTS, [((2,), np.ones((1, 4)), [Segment(0.0, 3.0, np.ones(4, np.float32))])])])
    )
    library.adopt({"segments": written["segments"]}, [])
    library.commit()
    items = [_item(n) for n in ("a", "s")]
    by_item = dict(zip(items, ["ka", "ks"]))
    assert sink(library, items, by_item, [_plan(segments=True)]).keys == {"a": "ka"}
    assert sink(library, items, by_item, [_plan()]).keys == {"a": "ka", "s": "ks"}  # no segments asked


def test_workers_are_told_the_library_s_absolute_path_and_old_tokens_go(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.chdir(tmp_path)
    library = Library(Path("lib"))  # `--library lib`: a worker's folder is its raylet's, not ours
    made = Sink(library, [A], [(2,)], {})
    shard = made.shard()
    assert Path(shard.root) == tmp_path / "lib" and Path(shard.root).is_absolute()
    old, fresh = tmp_path / "lib" / ".matpac-ray-old", tmp_path / "lib" / ".matpac-ray-other-run"
    old.touch()
    fresh.touch()
    os.utime(old, (time.time() - 2 * 86_400,) * 2)  # left by a driver killed two days ago
    made.close()
    assert sorted(p.name for p in (tmp_path / "lib").glob(".matpac-ray-*")) == [".matpac-ray-other-run"]


def test_fragments_a_worker_wrote_are_committed_at_once_and_known_after(library):
    made = Sink(library, [A], [(2,)], {})
    shard = made.shard()
    assert shard.visible() and Path(library.root, shard.token).is_file()
    vectors = {f"k{i}": np.full((1, 8), i, np.float32) for i in range(40)}
    fragments = shard.write([(k, FACTS, [((2,), v, None)]) for k, v in vectors.items()])
    assert len(fragments["clips"]) == 1 and all(len(f) < 1024 for f in fragments["clips"])  # metadata, not the rows
    assert fragments["segments"] == []  # the plan keeps none
    assert library.holds(list(vectors), A, (2,)) == set()
    before = lance.dataset(tables.uri(library.root, "clips")).version
    made.adopt(fragments, list(vectors))
    library.commit()
    ds = lance.dataset(tables.uri(library.root, "clips"))
    assert ds.version == before + 1 and ds.count_rows() == 40
    assert library.holds(list(vectors), A, (2,)) == set(vectors)
    found = library.lookup(["k7"], A, (2,), False)["k7"]
    np.testing.assert_array_equal(found.layers[2], vectors["k7"][0])
    assert found.facts == {"duration_s": 3.0, "sample_rate": 16000, "channels": 1, "truncated": None}
    made.close()
    assert not list(library.root.glob(".matpac-ray-*"))


def test_keys_a_worker_wrote_are_read_back_from_their_own_fragments_even_after_a_merge(library, monkeypatch):
    """Where the workers' rows landed is kept (`Homes`, asked for by `tag`): a key of one write is
    read from that write's fragments, not by a scan of every fragment (0.6 s at 4,000, per batch
    of files); the same rows, segments too, and where a merge has rewritten them, found by a scan."""
    from matpac_cli.library.shards import Homes
    from matpac_cli.pipeline.assemble import Segment

    library.homes = Homes()
    made = Sink(library, [A], [(2,)], {}, [True])
    shard = made.shard()
    for w in range(6):  # six writes, six fragments per table
        keys = [f"w{w}k{i}" for i in range(5)]
        rows = [
            (k, FACTS, [((2,), np.full((1, 4), w, np.float32), [Segment(0.0, 3.0, np.full(4, w, np.float32))])])
            for k in keys
        ]
        made.adopt(shard.write(rows), keys)
        library.commit()
    scanned = []
    real = tables.where_keys
    monkeypatch.setattr(
        tables, "where_keys", lambda ds, keys, e, c, within=None: scanned.append(within) or real(ds, keys, e, c, within)
    )
    for _ in range(2):
        found = library.lookup(["w3k1", "w4k0"], A, (2,), True)
        assert sorted(found) == ["w3k1", "w4k0"]
        assert [found[k].layers[2][0] for k in ("w3k1", "w4k0")] == [3, 4]
        assert [float(found[k].segments[0].embedding[0]) for k in ("w3k1", "w4k0")] == [3, 4]
        tables.tidy(library.root, most_fragments=2)  # the second time round: merged, each table one fragment
    first, merged = scanned[:4], scanned[4:]
    assert [len(f) for f in first] == [1, 1, 1, 1]  # clips and segments, per write: its own fragment
    assert merged == [None, None]  # the fragments are gone: one scan per table
    library.homes.forget(["w3k1", "w4k0"])
    assert all("w3k1" not in ids for ids in library.homes.ids.values())


def test_a_library_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(tables.Unwritable, match=r"library .*file/lib: cannot write \(Not a directory\)"):
        Sink(Library(tmp_path / "file" / "lib"), [A], [(2,)], {}).shard()
