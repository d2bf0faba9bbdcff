"""`search` through a vector index: recall against exact search on a clustered catalogue, the
cache (reused, rebuilt when its index changed or when it cannot be read), `--exact`, and the
library's index kept inside the library folder.

Recall and scores are checked against exact search (`similarity.nearest`) and a float64 numpy
cosine, never against the index under test. The threshold is lowered through the Python API
(`rows=`) or $MATPAC_SEARCH_INDEX_ROWS, so small sets take the index path.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, run_matpac, write_audio

from matpac_cli.events import Listeners
from matpac_cli.jobs.search_index import NeighbourSearch, cache_root
from matpac_cli.jobs.similarity import nearest
from matpac_cli.jobs.vector_index import VectorIndex
from matpac_cli.outputs.readers import read_embeddings


def catalogue(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Like clip embeddings of a music library: a large shared mean, 16 genres, artists of
    about 40 tracks and the tracks' own offsets (a decaying spectrum), plus a small floor."""
    rng = np.random.default_rng(seed)
    rank = min(64, dim)
    basis = rng.standard_normal((rank, dim)) / np.sqrt(dim)
    spec = (1.0 + np.arange(rank)) ** -0.5
    spec /= np.linalg.norm(spec)

    def offsets(m: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((m, rank)) * spec * scale) @ basis

    mean = rng.standard_normal(dim)
    mean *= 1.3 / np.linalg.norm(mean)
    artists = offsets(16, 1.0)[rng.integers(0, 16, n // 40 + 1)] + offsets(n // 40 + 1, 0.6)
    x = mean + artists[rng.integers(0, len(artists), n)] + offsets(n, 0.45)
    return (x + 0.08 * rng.standard_normal((n, dim)) / np.sqrt(dim)).astype(np.float32)


def write_index(folder: Path, x: np.ndarray) -> Path:
    """`x` as `embed --out emb.npy` writes it (matrix and row index; no manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "emb.npy", x)
    with open(folder / "emb.csv", "w") as fh:
        fh.write("row,path,duration_s,sample_rate,channels,truncated\n")
        fh.writelines(f"{i},t{i:05d}.wav,30.000,44100,2,0\n" for i in range(len(x)))
    return folder / "emb.npy"


def recall(got, want, k: int = 10) -> float:
    return float(np.mean([len(set(a[0][:k].tolist()) & set(b[0][:k].tolist())) / k for a, b in zip(got, want)]))


def test_recall_at_10_against_exact_on_a_clustered_catalogue():
    """20,000 x 256 (a shared mean, clusters): recall@10 at least 0.95 with the default probes,
    and every score returned the exact cosine of its row (only recall may differ)."""
    x = catalogue(20_000, 256)
    picks = np.random.default_rng(1).choice(len(x), 100, replace=False)
    index = VectorIndex.build(x)
    got = index.nearest(x, x[picks], 10, picks.tolist())
    want = nearest(x, x[picks], 10, picks.tolist())
    assert recall(got, want) >= 0.95
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    for p, (rows, scores) in zip(picks, got):
        assert len(rows) == 10 and p not in rows and np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, unit[rows] @ unit[p], atol=2e-6)
    reads = (np.diff(index.offsets)[: index.probes].sum(), len(x))
    assert len(index.centroids) >= 100 and reads[0] < reads[1] / 5  # a query reads a small share


def test_the_cache_is_reused_rebuilt_when_stale_and_rebuilt_when_damaged(tmp_path):
    npy = write_index(tmp_path / "idx", catalogue(3000, 32))
    emb = read_embeddings(npy)
    notes, warnings = [], []
    listen = Listeners(warning=warnings.append)
    first = NeighbourSearch(emb, emb.matrix, rows=0, events=listen, note=notes.append)
    answer = first(emb.matrix[:5], 10, list(range(5)))
    assert first.builds == 1 and len(notes) == 1 and "3,000 rows" in notes[0] and "`exact` skips it" in notes[0]
    cached = list(cache_root().iterdir())
    assert [p.suffix for p in cached] == [".npz"] and not list(npy.parent.glob("*.npz"))  # never beside the file
    again = NeighbourSearch(emb, emb.matrix, events=listen, note=notes.append)  # default threshold: the cache
    same = again(emb.matrix[:5], 10, list(range(5)))
    assert again.builds == 0 and len(notes) == 1
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(answer, same))

    write_index(npy.parent, catalogue(3000, 32, seed=7))  # the index changed: its cache is stale
    emb = read_embeddings(npy)
    stale = NeighbourSearch(emb, emb.matrix, events=listen, note=notes.append)
    stale(emb.matrix[:2], 5, [0, 1])
    assert stale.builds == 1 and warnings == []

    cached[0].write_bytes(b"PK\x03\x04 not an index")  # damaged: one warning, then rebuilt
    damaged = NeighbourSearch(emb, emb.matrix, events=listen, note=notes.append)
    got = damaged(emb.matrix[:2], 5, [0, 1])
    assert damaged.builds == 1 and len(warnings) == 1 and "cannot be read (not a search index)" in warnings[0]
    assert len(notes) == 2  # the warning says it is rebuilt: no second line for it
    assert recall(got, nearest(emb.matrix, emb.matrix[:2], 5, [0, 1]), 5) >= 0.8
    whole = NeighbourSearch(emb, emb.matrix, events=listen)
    assert whole(emb.matrix[:1], 3, [0]) and whole.builds == 0 and len(warnings) == 1  # whole again, kept


def test_a_planted_link_or_an_unreadable_cache_folder_means_no_cache_and_an_exact_answer(tmp_path, monkeypatch):
    """The cache is never read or written through a symlink someone planted, and a folder it
    cannot read is one warning: the answer (exact) does not depend on the cache."""
    monkeypatch.setenv("MATPAC_SEARCH_INDEX_ROWS", "100")
    npy = write_index(tmp_path / "idx", catalogue(600, 16))
    emb = read_embeddings(npy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache_root().parent.mkdir(parents=True, exist_ok=True)
    cache_root().symlink_to(elsewhere)
    warnings = []
    search = NeighbourSearch(emb, emb.matrix, events=Listeners(warning=warnings.append))
    got = search(emb.matrix[:1], 4, [0])
    want = nearest(emb.matrix, emb.matrix[:1], 4, [0])
    assert search.builds == 0 and list(elsewhere.iterdir()) == []
    assert len(warnings) == 1 and "is a symlink or not a folder" in warnings[0]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(got, want))


def test_a_crowd_of_queries_that_would_go_exact_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MATPAC_SEARCH_INDEX_ROWS", "100")
    npy = write_index(tmp_path / "idx", catalogue(600, 16))
    emb = read_embeddings(npy)
    search = NeighbourSearch(emb, emb.matrix)
    got = search(emb.matrix, 4, list(range(len(emb.matrix))))  # every row a query
    assert search.builds == 0 and not cache_root().exists()
    want = nearest(emb.matrix, emb.matrix, 4, list(range(len(emb.matrix))))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, want))


def test_below_the_threshold_and_with_exact_nothing_is_built(tmp_path):
    npy = write_index(tmp_path / "idx", catalogue(500, 16))
    emb = read_embeddings(npy)
    for search in (NeighbourSearch(emb, emb.matrix), NeighbourSearch(emb, emb.matrix, rows=0, exact=True)):
        got = search(emb.matrix[:3], 4, [0, 1, 2])
        want = nearest(emb.matrix, emb.matrix[:3], 4, [0, 1, 2])
        assert search.builds == 0 and all(np.array_equal(a[0], b[0]) for a, b in zip(got, want))
    assert not cache_root().exists()


def test_exact_gives_todays_output_and_the_index_its_exact_scores(tmp_path, monkeypatch, capsys):
    """`--exact` over an index that has a cache: byte for byte the output exact search gave
    before any index existed; the indexed answer: the same format, exact cosines of its rows."""
    x = catalogue(4000, 48)
    npy = write_index(tmp_path / "idx", x)
    args = ["search", "t00003.wav", "t00100.wav", "--index", npy, "-k", "10"]
    code, before, _ = cli(capsys, *args)  # 4,000 rows: below the threshold, exact
    assert code == 0 and not cache_root().exists()
    monkeypatch.setenv("MATPAC_SEARCH_INDEX_ROWS", "1000")
    code, indexed, err = cli(capsys, *args)
    assert code == 0 and "building a search index for 4,000 rows" in err and "--exact skips it" in err
    code, exact, err = cli(capsys, *args, "--exact")
    assert code == 0 and exact == before and "building" not in err
    got = list(csv.DictReader(io.StringIO(indexed)))
    assert list(got[0]) == ["query", "rank", "path", "score"] and len(got) == 20
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    for r in got:
        q, p = int(r["query"][1:6]), int(r["path"][1:6])
        assert abs(float(r["score"]) - unit[q] @ unit[p]) < 2e-6
    monkeypatch.setenv("MATPAC_SEARCH_INDEX_ROWS", "lots")
    code, _, err = cli(capsys, *args)
    assert code == 2 and "MATPAC_SEARCH_INDEX_ROWS=lots" in err and err.count("\n") == 1


@pytest.fixture
def indexed_library(tiny, tmp_path):
    """Four files in `a/`, embedded into `emb.npy` and the library `L`."""
    for i, s in enumerate((3.0, 4.0, 5.0, 3.5)):
        write_audio(tmp_path / "a" / f"f{i}.wav", s, seed=i)
    args = ["embed", "a", "--model", str(tiny), "--out", "emb.npy", "--library", "L", "--device", "cpu", "-q"]
    proc = run_matpac(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path


def test_a_library_keeps_its_index_inside_and_a_moved_file_is_still_found(indexed_library):
    """End to end: the index is built once into L/search-index (over the audio keys, so moving a
    file leaves it valid), the answer is exact search's on so few rows, --exact agrees."""
    d = indexed_library
    env = {"MATPAC_SEARCH_INDEX_ROWS": "0"}
    first = run_matpac(["search", "a/f0.wav", "--index", "L", "--top-k", "3"], cwd=d, env=env)
    assert first.returncode == 0, first.stderr.decode()
    assert b"building a search index for 4 rows, cached in" in first.stderr
    assert len(list((d / "L" / "search-index").glob("*.npz"))) == 1 and not cache_root().exists()
    shutil.move(d / "a" / "f1.wav", d / "moved.wav")
    again = run_matpac(["search", "moved.wav", "--index", "L", "--top-k", "5"], cwd=d, env=env)
    assert again.returncode == 0 and b"building" not in again.stderr, again.stderr.decode()
    exact = run_matpac(["search", "moved.wav", "--index", "L", "--top-k", "5", "--exact"], cwd=d)
    assert exact.returncode == 0 and again.stdout == exact.stdout
    assert len(list(csv.DictReader(io.StringIO(again.stdout.decode())))) == 3  # the files on disk


def test_a_library_index_is_over_its_keys_and_answers_for_every_row_of_a_key(indexed_library, tiny):
    """A file copied to a second path is one key and two rows: the index (over keys) returns both
    rows, as exact search does; the rows' scores are exact."""
    from matpac_cli.jobs.library import library_embeddings
    from matpac_cli.jobs.search_index import place

    d = indexed_library
    emb = library_embeddings(d / "L")
    first = NeighbourSearch(emb, emb.matrix, rows=0)
    first(emb.matrix[:1], 2, [0])
    shutil.copy(d / "a" / "f2.wav", d / "a" / "f2copy.wav")
    args = ["embed", "a", "--model", str(tiny), "--out", "emb2.npy", "--library", "L", "--device", "cpu", "-q"]
    assert run_matpac(args, cwd=d).returncode == 0
    emb = library_embeddings(d / "L")
    kept = NeighbourSearch(emb, emb.matrix)
    kept(emb.matrix[:1], 2, [0])
    assert (first.builds, kept.builds) == (1, 0)  # a copy adds a path, not a key: the index holds
    where = place(emb, emb.matrix, None)
    assert len(emb.matrix) == 5 and len(where.items) == 4 and len(set(where.row_items.tolist())) == 4
    index = VectorIndex.build(where.items, lists=2, probes=1)
    for q in range(5):
        got = index.nearest(emb.matrix, emb.matrix[q : q + 1], 4, [q], where.row_items)[0]
        want = nearest(emb.matrix, emb.matrix[q : q + 1], 4, [q])[0]
        rows = set(got[0].tolist())
        assert rows <= set(want[0].tolist()) and len(rows) >= 1
        np.testing.assert_allclose(got[1], [want[1][want[0].tolist().index(r)] for r in got[0]], atol=1e-6)
        same = [r for r in range(5) if r != q and where.row_items[r] == where.row_items[q]]
        assert set(same) <= rows  # the copy of a query is in its list: always found
    write_audio(d / "a" / "new.wav", 2.5, seed=9)  # a new file: a new clips version, a stale index
    assert run_matpac([*args[:5], "emb3.npy", *args[6:]], cwd=d).returncode == 0
    emb = library_embeddings(d / "L")
    stale = NeighbourSearch(emb, emb.matrix)
    stale(emb.matrix[:1], 2, [0])
    assert stale.builds == 1 and len(list((d / "L" / "search-index").glob("*.npz"))) == 1
