"""A re-run of `embed` writes only what changed: nothing new leaves the output as it was, byte for
byte; new files sorted last grow a .npy in place, equal to a full rewrite; a run killed while
growing it is put right by the next one; a Parquet output grows in place likewise (new row groups
and a new footer after its last byte) and is written a row group at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, write_audio

from matpac_cli.outputs import inplace


def _clips(root: Path, names=("c0", "c1", "c2")) -> Path:
    for i, name in enumerate(names):
        write_audio(root / "clips" / f"{name}.wav", 1.0 + 0.5 * i, seed=sum(map(ord, name)))
    return root / "clips"


def _embed(capsys, tiny, out: str, *extra: str) -> str:
    rc, _, err = cli(capsys, "embed", "clips", "--out", out, "--model", tiny, "-q", *extra)
    assert rc == 0, err
    return err


def _files(folder: Path, out: str) -> list[Path]:
    stem = out.split(".")[0]
    return sorted(p for p in folder.glob(f"{stem}.*") if p.is_file())


def _state(paths: list[Path]) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def _counts(folder: Path, out: str) -> dict:
    return json.loads((folder / f"{out.split('.')[0]}.manifest.json").read_text())["counts"]


@pytest.mark.parametrize("out", ["emb.npy", "emb.parquet"])
def test_a_rerun_with_nothing_new_leaves_every_file_as_it_was(tmp_path, tiny, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, out)
    before = _state(_files(tmp_path, out))
    assert len(before) == (3 if out.endswith(".npy") else 2)
    _embed(capsys, tiny, out)
    assert _state(_files(tmp_path, out)) == before  # inode, mtime and bytes: not rewritten, not touched
    assert _counts(tmp_path, out)["computed"] == 3  # the manifest is the first run's


@pytest.mark.parametrize("layer", ["last", "all"])
def test_new_files_sorted_last_grow_the_npy_in_place_as_a_full_rewrite_writes_it(
    tmp_path, tiny, capsys, monkeypatch, layer
):
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "emb.npy", "--layer", layer)
    inode = (tmp_path / "emb.npy").stat().st_ino, (tmp_path / "emb.csv").stat().st_ino
    _clips(tmp_path, ("c8", "c9"))  # sorted after c0..c2
    _embed(capsys, tiny, "emb.npy", "--layer", layer)
    assert ((tmp_path / "emb.npy").stat().st_ino, (tmp_path / "emb.csv").stat().st_ino) == inode  # grown in place
    assert _counts(tmp_path, "emb.npy") == {"computed": 2, "reused": 3, "failed": 0}
    _embed(capsys, tiny, "full.npy", "--layer", layer)  # everything from the library, written whole
    assert (tmp_path / "emb.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()
    assert (tmp_path / "emb.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    _embed(capsys, tiny, "emb.npy", "--layer", layer)  # and the grown output's record holds: nothing new
    assert _counts(tmp_path, "emb.npy") == {"computed": 2, "reused": 3, "failed": 0}


def test_an_output_with_another_name_is_written_anew_not_grown_in_place(tmp_path, tiny, capsys, monkeypatch):
    """A hard link's other name (a backup made with `cp -al`) would change with a file grown in
    place; a new file renamed into place leaves it as it was."""
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "emb.npy")
    (tmp_path / "bak").mkdir()
    for name in ("emb.npy", "emb.csv"):
        os.link(tmp_path / name, tmp_path / "bak" / name)
    kept = _state(sorted((tmp_path / "bak").iterdir()))
    _clips(tmp_path, ("c9",))
    _embed(capsys, tiny, "emb.npy")
    assert _state(sorted((tmp_path / "bak").iterdir())) == kept
    assert not json.loads((tmp_path / "emb.manifest.json").read_text())["rows"].get("pending")
    _embed(capsys, tiny, "full.npy")
    assert (tmp_path / "emb.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()


def test_a_new_file_sorted_first_rewrites_the_output_in_input_order(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "pq.parquet")
    _embed(capsys, tiny, "emb.npy")
    _clips(tmp_path, ("a0",))
    for out, full in (("emb.npy", "full.npy"), ("pq.parquet", "fullpq.parquet")):
        _embed(capsys, tiny, out)
        _embed(capsys, tiny, full)
        assert (tmp_path / out).read_bytes() == (tmp_path / full).read_bytes()
    assert (tmp_path / "emb.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    assert (tmp_path / "emb.csv").read_text().splitlines()[1].split(",")[1] == "clips/a0.wav"


@pytest.mark.parametrize("out", ["emb.npy", "emb.parquet"])
def test_an_update_run_keeping_other_rows_still_grows_the_output_in_place(tmp_path, tiny, capsys, monkeypatch, out):
    """A daily `--update` run over one folder of a larger output: its rows of the other folder are
    kept (first), and a new file sorted last is added after the rows the output has, in place
    (it was written anew each time: a kept row had no key, and the row digest stopped there)."""
    monkeypatch.chdir(tmp_path)
    for folder, names in (("a", ("a1", "a2")), ("b", ("b1", "b2"))):
        for i, name in enumerate(names):
            write_audio(tmp_path / "lib" / folder / f"{name}.wav", 1.0 + 0.5 * i, seed=sum(map(ord, name)))

    def run(folder: str) -> None:
        rc, _, err = cli(capsys, "embed", folder, "--out", out, "--model", tiny, "-q", "--update")
        assert rc == 0, err

    run("lib")
    run("lib/b")  # the rows of lib/a kept, first: written anew
    before, inode = (tmp_path / out).read_bytes(), (tmp_path / out).stat().st_ino
    write_audio(tmp_path / "lib" / "b" / "b9.wav", 1.2, seed=99)
    run("lib/b")
    assert (tmp_path / out).stat().st_ino == inode and (tmp_path / out).read_bytes()[len(before) :]
    if out.endswith(".parquet"):
        assert (tmp_path / out).read_bytes()[: len(before)] == before
        assert _read_three_ways(tmp_path / out)[0][-1] == "lib/b/b9.wav"
    else:
        assert (tmp_path / "emb.csv").read_text().splitlines()[-1].split(",")[1] == "lib/b/b9.wav"


def _read_three_ways(path: Path) -> list:
    """The table as pyarrow, pandas and DuckDB (a reader of its own, not Arrow's) read it: each
    one's (paths, embeddings) must agree."""
    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    frame = pd.read_parquet(path)
    rows = duckdb.sql(f"select path, embedding from read_parquet('{path}')").fetchall()
    got = [
        (t.column("path").to_pylist(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))),
        (list(frame["path"]), np.stack(frame["embedding"].to_numpy())),
        ([r[0] for r in rows], np.array([r[1] for r in rows], np.float32)),
    ]
    for names, matrix in got[1:]:
        assert names == got[0][0]
        np.testing.assert_array_equal(matrix, got[0][1])
    return got[0]


def test_new_files_after_a_parquet_output_grow_it_in_place_its_bytes_kept(tmp_path, tiny, capsys, monkeypatch):
    """The rows it has are neither read nor rewritten: the old file's bytes stay where they were
    (same inode), the new rows and a new footer come after them; pyarrow, pandas and DuckDB read
    the same rows as a file written whole; a second append too."""
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "emb.parquet")
    before = (tmp_path / "emb.parquet").read_bytes()
    inode = (tmp_path / "emb.parquet").stat().st_ino
    for names in (("c8", "c9"), ("d1",)):
        _clips(tmp_path, names)
        _embed(capsys, tiny, "emb.parquet")
        grown = (tmp_path / "emb.parquet").read_bytes()
        assert grown[: len(before)] == before and (tmp_path / "emb.parquet").stat().st_ino == inode
        before = grown
    _embed(capsys, tiny, "full.parquet")
    names, matrix = _read_three_ways(tmp_path / "emb.parquet")
    full_names, full = _read_three_ways(tmp_path / "full.parquet")
    assert names == full_names and len(names) == 6
    np.testing.assert_array_equal(matrix, full)
    _embed(capsys, tiny, "emb.parquet")  # nothing new: left as it is
    assert (tmp_path / "emb.parquet").read_bytes() == before


def test_a_run_killed_while_growing_a_parquet_output_is_put_right_by_the_next(tmp_path, tiny, capsys, monkeypatch):
    """Killed after the manifest was marked pending and some bytes were added: the next run cuts
    them off and appends again."""
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "emb.parquet")
    manifest = tmp_path / "emb.manifest.json"
    man = json.loads(manifest.read_text())
    man["rows"]["pending"] = True
    manifest.write_text(json.dumps(man))
    with open(tmp_path / "emb.parquet", "ab") as fh:
        fh.write(b"PAR1 half a row group")
    _clips(tmp_path, ("c9",))
    _embed(capsys, tiny, "emb.parquet")
    _embed(capsys, tiny, "full.parquet")
    names, matrix = _read_three_ways(tmp_path / "emb.parquet")
    full_names, full = _read_three_ways(tmp_path / "full.parquet")
    assert names == full_names and len(names) == 4
    np.testing.assert_array_equal(matrix, full)


def test_a_parquet_output_of_many_row_groups_is_written_anew_in_full_groups(tmp_path, tiny, capsys, monkeypatch):
    from matpac_cli.outputs import parquet_append

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(parquet_append, "MAX_GROUPS", 2)
    _clips(tmp_path)
    _embed(capsys, tiny, "emb.parquet")
    for name in ("c8", "c9"):
        _clips(tmp_path, (name,))
        _embed(capsys, tiny, "emb.parquet")  # 2 row groups after the first append: then written anew
    import pyarrow.parquet as pq

    assert pq.read_metadata(tmp_path / "emb.parquet").num_row_groups == 1
    _embed(capsys, tiny, "full.parquet")
    assert (tmp_path / "emb.parquet").read_bytes() == (tmp_path / "full.parquet").read_bytes()


def _killed(tmp_path: Path, stage: str) -> None:
    """What a run killed while growing emb.npy by two rows leaves (`inplace.append`'s steps)."""
    matrix, index, manifest = tmp_path / "emb.npy", tmp_path / "emb.csv", tmp_path / "emb.manifest.json"
    man = json.loads(manifest.read_text())
    man["rows"]["pending"] = True  # step 0
    manifest.write_text(json.dumps(man))
    (count, width), _ = inplace.shape_of(matrix)
    with open(matrix, "ab") as fh:
        fh.write(np.full((2, width), 7.0, "<f4").tobytes()[: 3 * width if stage == "rows" else None])
    if stage in ("index", "header"):
        with open(index, "a") as fh:
            fh.write(f"{count},x.wav,1.000,16000,1,0\n{count + 1},y.wav,1.000,16000,1,0\n")
    if stage == "torn index":  # killed between two writes of the tail: the first byte of a row 1x
        with open(index, "a") as fh:
            fh.write("1")
    if stage == "header":
        with open(matrix, "r+b") as fh:
            fh.write(inplace.header(count + 2, (width,)))


@pytest.mark.parametrize("stage", ["rows", "index", "torn index", "header"])
def test_a_run_killed_while_growing_the_npy_is_put_right_by_the_next(tmp_path, tiny, capsys, monkeypatch, stage):
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "full.npy")
    _embed(capsys, tiny, "emb.npy")
    _killed(tmp_path, stage)
    _embed(capsys, tiny, "emb.npy")  # nothing new: the files are cut back to what the manifest says
    assert (tmp_path / "emb.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()
    assert (tmp_path / "emb.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    _killed(tmp_path, stage)
    _clips(tmp_path, ("c9",))
    _embed(capsys, tiny, "emb.npy")  # one new: put right, then grown
    _embed(capsys, tiny, "full.npy")
    assert (tmp_path / "emb.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()
    assert (tmp_path / "emb.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()


@pytest.mark.parametrize("where", [-4, 200])
def test_a_matrix_written_by_something_else_is_not_grown(tmp_path, tiny, capsys, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    _clips(tmp_path)
    _embed(capsys, tiny, "emb.npy")
    good = np.load(tmp_path / "emb.npy")
    with open(tmp_path / "emb.npy", "r+b") as fh:  # edited in place (last row, first): same inode and length
        fh.seek(where, 0 if where > 0 else 2)
        fh.write(np.float32(123.0).tobytes())
    _clips(tmp_path, ("c9",))
    _embed(capsys, tiny, "emb.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy")[:3], good)


PARQUET_MEMORY = """
import resource, sys
import numpy as np, pyarrow as pa
from matpac_cli.outputs import parquet
rows, width, parts = 1000, 512, int(sys.argv[2])
def made():
    for p in range(parts):
        v = np.random.default_rng(p).standard_normal((rows, width)).astype(np.float32)
        yield [(f"f{p}_{i}.wav", {"duration_s": 1.0, "sample_rate": 16000, "channels": 1}, v[i]) for i in range(rows)]
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(sys.argv[1], "wb") as fh:
    parquet.write_embeddings(fh, made(), (width,), group_bytes=int(sys.argv[3]))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
print(pa.default_memory_pool().max_memory(), grown * 1024)
"""


def test_a_parquet_export_holds_about_one_row_group_not_the_file(tmp_path):
    group = 2 * 2**20  # row groups of 2 MiB of embeddings (64 MiB in a real run)
    out = subprocess.run(
        [sys.executable, "-c", PARQUET_MEMORY, str(tmp_path / "e.parquet"), "60", str(group)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    arrow_peak, rss_growth = map(int, out)
    assert (tmp_path / "e.parquet").stat().st_size > 50 * group  # a 120 MB file ...
    assert arrow_peak < 6 * group  # ... written holding a few row groups at most, not the file
    assert rss_growth < 20 * group


@pytest.mark.parametrize("stretch", [65_536, 4])
def test_the_row_digest_is_the_one_outputs_were_written_with(stretch, monkeypatch):
    """An output grows in place only where its manifest's digest of its rows is what this run
    computes of them: hashed many rows at a time now, the digests are those a row at a time gave
    (the literals: matpac 2026-12-04's), at every length, up to the first row without a key."""
    from matpac_cli.jobs import embed_output

    monkeypatch.setattr(embed_output, "DIGEST_ROWS", stretch)
    done = [
        (f"clips/\u00e9{i}\udcff.wav", {"duration_s": i * 0.5, "sample_rate": 16000, "channels": 2}, None)
        for i in range(20)
    ]
    for i in range(0, 20, 5):
        done[i][1]["truncated"] = [1, 2]
    keys = [f"k{i}" for i in range(20)]
    keys[3] = ""  # a row kept from the output itself
    assert embed_output.digests("seed", done, keys, (0, 7, 20)) == {
        0: "f006f35de25bce4166b6185253ce438c",
        7: "fa61a95f02e637f67e82ee12fd8f62be",
        20: "1d8eed47cdcdf91740f5514f6fe76def",
    }
    keys[15] = None  # a row the library could not key: no digest past it
    assert embed_output.digests("seed", done, keys, (7, 15, 20)) == {
        7: "fa61a95f02e637f67e82ee12fd8f62be",
        15: "1227d6b7bc2bef0ef3597a0da2792aac",
        20: None,
    }
