"""Parquet outputs (`embed --out emb.parquet`, `tag --out tags.parquet`) and reading them back
(`search --index emb.parquet`, `report tags.parquet --embeddings emb.parquet`, readers).

Every Parquet output is checked against the .npy/.csv output of the same run settings, read with
numpy, the csv module, pandas and pyarrow directly, never with matpac's own readers alone.
Shard folders are written here with pyarrow, as Ray's `write_parquet` lays them out.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import cli, write_audio
from probes import EMB, probe_tensors

from matpac_cli.cli import main

NAMES = ["clips/a.wav", "clips/sub/b.flac", "clips/z.wav"]  # as discovered (sorted)


def make_clips(root: Path) -> None:
    write_audio(root / "clips" / "a.wav", 1.2, seed=0)
    write_audio(root / "clips" / "sub" / "b.flac", 7.0, sr=44100, channels=2, seed=1)  # two chunks
    write_audio(root / "clips" / "z.wav", 0.7, seed=2)


@pytest.fixture(scope="module")
def made(ckpts, tmp_path_factory) -> Path:
    """One folder: the same clips embedded to .npy and .parquet (last layer and --layer all), and
    tagged with --segments to .csv and .parquet."""
    d = tmp_path_factory.mktemp("parquet")
    make_clips(d)
    shutil.copy(ckpts["tiny608"], d / "tiny.pt")
    torch.save(probe_tensors(20, seed=4, width=EMB), d / "openmic.pth")
    common = ["clips", "--model", "tiny.pt", "--device", "cpu", "-q"]
    tag = ["tag", *common, "--head", "./openmic.pth", "--segments", "--min-segment", "0", "--top-k", "4"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        mp.setenv("MATPAC_LIBRARY", "off")  # each output computed, as its manifest's counts say
        for out in ("npy/emb.npy", "pq/emb.parquet"):
            assert main(["embed", *common, "--out", out]) == 0
        assert main(["embed", *common, "--out", "all/emb.parquet", "--layer", "all"]) == 0
        assert main([*tag, "--out", "tags.csv"]) == 0
        assert main([*tag, "--out", "tags.parquet"]) == 0
    return d


# ---------------------------------------------------------------- embed --out emb.parquet


def test_embed_parquet_holds_the_npy_rows_read_with_pyarrow_and_pandas(made):
    X = np.load(made / "npy" / "emb.npy")
    index = list(csv.DictReader(open(made / "npy" / "emb.csv")))
    table = pq.read_table(made / "pq" / "emb.parquet")
    assert table.schema.names == ["path", "duration_s", "sample_rate", "channels", "embedding"]
    assert table.schema.field("path").type == pa.string()
    assert table.schema.field("duration_s").type == pa.float64()
    assert table.schema.field("sample_rate").type == pa.int32() and table.schema.field("channels").type == pa.int32()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), EMB)
    got = np.stack(table.column("embedding").to_pylist()).astype(np.float32)
    np.testing.assert_array_equal(got, X)  # the same vectors, bit for bit
    df = pd.read_parquet(made / "pq" / "emb.parquet")
    assert list(df.path) == [r["path"] for r in index] == NAMES
    np.testing.assert_array_equal(np.stack(df.embedding.to_numpy()), X)
    np.testing.assert_allclose(df.duration_s, [1.2, 7.0, 0.7])
    assert list(df.sample_rate) == [16000, 44100, 16000] and list(df.channels) == [1, 2, 1]
    assert not (made / "pq" / "emb.csv").exists()  # the path column is the index


def test_embed_parquet_has_the_npy_manifest_naming_its_output(made):
    man = json.loads((made / "pq" / "emb.manifest.json").read_text())
    npy_man = json.loads((made / "npy" / "emb.manifest.json").read_text())
    assert man["output"] == {
        "path": "pq/emb.parquet",
        "format": "parquet",
        "columns": ["path", "duration_s", "sample_rate", "channels", "embedding"],
    }
    assert npy_man["output"]["format"] == "npy"
    assert man["settings"] == npy_man["settings"] and man["models"][0]["sha256"] == npy_man["models"][0]["sha256"]
    assert man["counts"] == {"computed": 3, "reused": 0, "failed": 0}
    assert not list((made / "pq").glob("*journal*"))  # the library keeps what a re-run needs


def test_the_manifest_names_the_cpu_it_ran_on(made):
    man = json.loads((made / "npy" / "emb.manifest.json").read_text())
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]  # read here, apart from matpac's parser
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()))
    cpu = man["host"]["cpu"]
    assert (cpu["family"], cpu["model"], cpu["name"]) == (
        int(fields["cpu family"]),
        int(fields["model"]),
        fields["model name"],
    )
    assert set(cpu["flags"]) <= set(fields["flags"].split()) and ("avx2" in cpu["flags"]) == (
        "avx2" in fields["flags"].split()
    )
    assert man["host"]["cpus"] >= 1 and man["host"]["role"] == "encoded here"


def test_layer_all_is_a_list_of_layers_of_vectors(made):
    table = pq.read_table(made / "all" / "emb.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.list_(pa.float32(), EMB), 2)
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert got.shape == (3, 2, EMB)
    np.testing.assert_allclose(got[:, -1], np.load(made / "npy" / "emb.npy"), atol=1e-6)
    from matpac_cli.outputs.readers import read_embeddings

    emb = read_embeddings(made / "all" / "emb.parquet")
    assert emb.matrix.shape == (3, 2, EMB) and emb.matrix.dtype == np.float32
    np.testing.assert_array_equal(emb.matrix, got)


# ---------------------------------------------------------------- tag --out tags.parquet


def test_tag_parquet_rows_are_the_csv_rows_typed(made):
    table = pq.read_table(made / "tags.parquet")
    assert [(f.name, f.type) for f in table.schema] == [
        ("path", pa.string()),
        ("head", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("rank", pa.int32()),
        ("tag_id", pa.string()),
        ("duration_s", pa.float64()),
        ("truncated", pa.bool_()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
    ]
    want = list(csv.DictReader(open(made / "tags.csv", newline="")))
    got = table.to_pylist()
    assert len(got) == len(want) > 3 * 4 * 2  # clip rows and segment rows, every file
    for g, w in zip(got, want):
        assert [g[c] for c in ("path", "head", "label", "tag_id")] == [
            w[c] for c in ("path", "head", "label", "tag_id")
        ]
        assert g["rank"] == int(w["rank"])
        assert g["score"] == pytest.approx(float(w["score"]), rel=1e-5, abs=1e-6)  # CSV prints 6 digits
        for c in ("duration_s", "start_s", "end_s"):
            assert g[c] == (float(w[c]) if w[c] else None)
    man = json.loads((made / "tags.parquet.manifest.json").read_text())
    assert man["output"]["format"] == "parquet" and man["output"]["path"] == "tags.parquet"
    from matpac_cli.outputs.tag_readers import read_tags, scan_tags

    tags, csv_tags = read_tags(made / "tags.parquet"), read_tags(made / "tags.csv")
    assert tags.segments and tags.heads == ["openmic"] and tags.files == NAMES
    assert list(scan_tags(made / "tags.parquet").rows()) == tags.rows
    assert [{**r, "score": 0} for r in tags.rows] == [{**r, "score": 0} for r in csv_tags.rows]
    np.testing.assert_allclose([r["score"] for r in tags.rows], [r["score"] for r in csv_tags.rows], rtol=1e-5)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--format", "parquet"], "binary"),
        (["--format", "parquet", "--out", "-"], "give --out FILE.parquet"),
        (["--format", "jsonl", "--out", "t.parquet"], "contradicts"),
    ],
)
def test_parquet_to_stdout_is_refused_in_one_line(made, capsys, args, says, monkeypatch, tmp_path):
    monkeypatch.chdir(made)
    code, out, err = cli(capsys, "tag", "clips", "--model", "tiny.pt", "--head", "./openmic.pth", *args)
    assert code == 2 and out == "" and err.startswith("matpac: error: ") and err.count("\n") == 1, err
    assert says in err


# ---------------------------------------------------------------- resume, refusals, failures


def test_parquet_runs_resume_and_a_replaced_parquet_is_rebuilt(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_clips(tmp_path)
    args = ["embed", "clips", "--out", "emb.parquet", "--model", ckpts["tiny608"]]
    assert cli(capsys, *args)[0] == 0
    first = pd.read_parquet("emb.parquet")
    code, _, err = cli(capsys, *args)
    assert code == 0 and "0 done, 3 reused" in err, err
    write_audio(tmp_path / "clips" / "m.wav", 1.0, seed=5)
    code, _, err = cli(capsys, *args)
    assert code == 0 and "1 done, 3 reused" in err, err
    second = pd.read_parquet("emb.parquet")
    assert list(second.path) == ["clips/a.wav", "clips/m.wav", "clips/sub/b.flac", "clips/z.wav"]
    for name, vec in zip(first.path, first.embedding):  # reused rows: read back from the library
        np.testing.assert_array_equal(second.embedding[list(second.path).index(name)], vec)
    # someone rewrites the table (zeros, same shape): its rows are never read as embeddings, the
    # output is rebuilt from the library
    zeros = second.assign(embedding=[np.zeros(EMB, np.float32)] * len(second))
    pq.write_table(pa.Table.from_pandas(zeros, schema=pq.read_schema("emb.parquet")), "other.parquet")
    os.replace("other.parquet", "emb.parquet")
    code, _, err = cli(capsys, *args)
    assert code == 0 and "0 done, 4 reused" in err, err
    third = pd.read_parquet("emb.parquet")
    np.testing.assert_allclose(np.stack(third.embedding), np.stack(second.embedding), atol=1e-6)
    code, _, err = cli(capsys, *args, "--layer", "1")
    assert code == 2 and "emb.parquet was made with another --layer" in err and err.count("\n") == 1


def test_a_parquet_not_written_by_matpac_and_a_shared_manifest_are_refused(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_clips(tmp_path)
    pq.write_table(pa.table({"x": [1]}), "emb.parquet")
    base = ["embed", "clips", "--model", ckpts["tiny608"], "-q"]
    code, _, err = cli(capsys, *base, "--out", "emb.parquet")
    assert code == 2 and "emb.parquet exists and was not written by matpac; use --force" in err
    assert cli(capsys, *base, "--out", "emb.parquet", "--force")[0] == 0
    assert len(pd.read_parquet("emb.parquet")) == 3
    manifest = Path("emb.manifest.json").read_bytes()
    for force in ([], ["--force"]):  # would replace emb.parquet's manifest: emb.parquet disowned (a
        # user's report: the error offered --force, and the next run called emb.parquet not matpac's)
        code, _, err = cli(capsys, *base, "--out", "emb.npy", *force)
        assert code == 2 and "emb.manifest.json is the manifest of emb.parquet" in err and err.count("\n") == 1
        assert "force" not in err and not Path("emb.npy").exists(), err
        assert Path("emb.manifest.json").read_bytes() == manifest
    assert cli(capsys, *base, "--out", "emb.parquet")[0] == 0  # still matpac's: it resumes


def test_a_failed_parquet_write_leaves_the_old_output_whole(ckpts, tmp_path, capsys, monkeypatch):
    import errno

    from matpac_cli.outputs import parquet

    monkeypatch.chdir(tmp_path)
    make_clips(tmp_path)
    args = ["embed", "clips", "--out", "emb.parquet", "--model", ckpts["tiny608"], "-q"]
    assert cli(capsys, *args)[0] == 0
    before = Path("emb.parquet").read_bytes(), Path("emb.manifest.json").read_bytes()
    write_audio(tmp_path / "clips" / "new.wav", 1.0, seed=6)

    def full_disk(fh, records, shape, **_):
        fh.write(b"PAR1 half a table")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(parquet, "write_embeddings", full_disk)
        code, _, err = cli(capsys, *args)
    assert code == 2 and err == "matpac: error: cannot write emb.parquet: No space left on device\n"
    assert (Path("emb.parquet").read_bytes(), Path("emb.manifest.json").read_bytes()) == before
    assert not [p for p in os.listdir() if ".tmp" in p]  # the temporaries are gone
    code, _, err = cli(capsys, *args[:-1])  # the library kept new.wav: it is not computed again
    assert code == 0 and "0 done, 4 reused" in err, err
    assert len(pd.read_parquet("emb.parquet")) == 4


def test_a_bad_file_is_named_and_the_good_rows_are_written(made, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_clips(tmp_path)
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    base = ["clips", "--model", made / "tiny.pt", "--device", "cpu"]
    code, _, err = cli(capsys, "embed", *base, "--out", "emb.parquet")
    assert code == 1 and "clips/broken.wav" in err, err
    assert list(pd.read_parquet("emb.parquet").path) == NAMES
    code, _, err = cli(capsys, "tag", *base, "--head", made / "openmic.pth", "--out", "tags.parquet")
    assert code == 1 and "clips/broken.wav" in err, err
    df = pd.read_parquet("tags.parquet")
    assert sorted(set(df.path)) == NAMES and len(df) == 3 * 5
    code, _, err = cli(capsys, "tag", *base, "--head", made / "openmic.pth", "--out", "tags.parquet")
    assert code == 1 and "0 done, 3 reused, 1 failed" in err, err


# ---------------------------------------------------------------- readers: shard folders


def _shard(path: Path, names: list[str], X: np.ndarray, tensor_style: bool = False) -> None:
    """One shard as Ray writes one: fixed-size lists, or (`tensor_style`) variable lists of one length."""
    flat = pa.array(X.reshape(-1).astype(np.float32))
    if tensor_style:
        emb = pa.ListArray.from_arrays(pa.array(np.arange(0, X.size + 1, X.shape[1], dtype=np.int32)), flat)
    else:
        emb = pa.FixedSizeListArray.from_arrays(flat, X.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "path": names,
                "duration_s": [1.0] * len(names),
                "sample_rate": [16000] * len(names),
                "channels": [1] * len(names),
                "embedding": emb,
            }
        ),
        path,
    )


def test_a_folder_of_shards_is_read_in_shard_order_and_hidden_files_are_ignored(made, tmp_path):
    from matpac_cli.outputs.readers import read_embeddings

    X = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    folder = tmp_path / "emb.parquet"
    _shard(folder / "b_000001.parquet", ["x/3.wav", "x/4.wav"], X[3:], tensor_style=True)
    _shard(folder / "a_000000.parquet", ["x/0.wav", "x/1.wav", "x/2.wav"], X[:3])
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".b_000002.parquet.tmp").write_bytes(b"half a shard")
    (folder / "_common_metadata.parquet").write_bytes(b"not ours")
    shutil.copy(made / "pq" / "emb.manifest.json", tmp_path / "emb.manifest.json")
    emb = read_embeddings(folder)
    assert emb.paths == [f"x/{i}.wav" for i in range(5)]
    np.testing.assert_array_equal(emb.matrix, X)
    assert emb.index[4] == {
        "row": 4,
        "path": "x/4.wav",
        "duration_s": 1.0,
        "sample_rate": 16000,
        "channels": 1,
        "truncated": False,
    }
    assert emb.model == "tiny.pt"  # the manifest beside the folder
    assert pd.read_parquet(folder).shape[0] == 5  # what pandas reads too


def test_a_folder_of_tag_shards_reads_as_the_one_file(made, tmp_path):
    from matpac_cli.outputs.tag_readers import read_tags, scan_tags

    table = pq.read_table(made / "tags.parquet")
    cut = table.column("path").to_pylist().index("clips/sub/b.flac")  # each file's rows in one shard
    folder = tmp_path / "tags.parquet"
    folder.mkdir()
    pq.write_table(table.slice(cut), folder / "part-1.parquet")
    pq.write_table(table.slice(0, cut), folder / "part-0.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    assert read_tags(folder).rows == read_tags(made / "tags.parquet").rows
    stream = scan_tags(folder)
    assert stream.segments and list(stream.rows()) == read_tags(folder).rows


@pytest.mark.parametrize(
    "case, says",
    [
        ("garbage", "not a readable Parquet file"),
        ("no_embedding", "no embedding column"),
        ("ragged", "different lengths"),
        ("float64", "float32"),
        ("empty_folder", "no .parquet file"),
    ],
)
def test_bad_parquet_embeddings_are_one_line(tmp_path, case, says):
    from matpac_cli.errors import UsageError
    from matpac_cli.outputs.readers import read_embeddings

    path = tmp_path / "emb.parquet"
    if case == "garbage":
        path.write_bytes(b"PAR1 but nothing else")
    elif case == "no_embedding":
        pq.write_table(pa.table({"path": ["a.wav"]}), path)
    elif case == "ragged":
        pq.write_table(
            pa.table({"path": ["a", "b"], "embedding": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))}), path
        )
    elif case == "float64":
        pq.write_table(pa.table({"path": ["a"], "embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float64(), 2))}), path)
    else:
        path.mkdir()
    with pytest.raises(UsageError) as err:
        read_embeddings(path)
    assert says in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- search and report over Parquet


def test_search_over_a_parquet_index_gives_the_npy_index_answers(made, capsys, monkeypatch):
    monkeypatch.chdir(made)
    query = made / "outside.wav"
    write_audio(query, 1.5, seed=9)  # not in the index: embedded with the manifest's model
    for args in (["clips/a.wav", "-k", "2"], [query, "-k", "3"], ["--duplicates", "--threshold", "-1"]):
        code_n, out_n, err_n = cli(capsys, "search", *args, "--index", "npy/emb.npy")
        code_p, out_p, err_p = cli(capsys, "search", *args, "--index", "pq/emb.parquet")
        assert code_n == code_p == 0, err_p
        assert out_p == out_n and out_p.count("\n") > 1
    code, _, err = cli(capsys, "search", "nowhere.wav", "--index", "pq/emb.parquet")
    assert code == 1 and "nowhere.wav: not a path in pq/emb.parquet" in err
    code, _, err = cli(capsys, "search", "clips/a.wav", "--index", "pq/emb.parquet", "--out", "nn.parquet")
    assert code == 0, err
    nn = pq.read_table("nn.parquet")
    assert nn.schema.names == ["query", "rank", "path", "score"] and nn.num_rows == 2
    assert nn.column("path").to_pylist() != [] and nn.schema.field("score").type == pa.float32()
    os.remove("nn.parquet")


def test_report_of_parquet_tags_and_embeddings(made, capsys, monkeypatch):
    import re

    monkeypatch.chdir(made)
    code, _, err = cli(capsys, "report", "tags.parquet", "--embeddings", "pq/emb.parquet", "--out", "r.html")
    assert code == 0, err
    html = Path("r.html").read_text()
    data = json.loads(
        re.search(r'<script type="application/json" id="matpac-data">(.*?)</script>', html, re.S).group(1)
    )
    assert sorted(data["paths"]) == NAMES and data["nn"]
    code, _, err = cli(
        capsys,
        "tag",
        "clips",
        "--model",
        "tiny.pt",
        "--head",
        "./openmic.pth",
        "--segments",
        "--min-segment",
        "0",
        "--top-k",
        "4",
        "--out",
        "tags.parquet",
        "--report",
        "tagged.html",
        "-q",
    )
    assert code == 0 and Path("tagged.html").exists(), err


def test_parquet_is_not_imported_by_help_or_an_npy_run(made, tmp_path, no_library):
    """pyarrow (about 0.3 s to import) only where a run needs it: Parquet, or the library's Lance
    tables (an npy run with the library on reads them through pyarrow)."""
    script = (
        "import sys; from matpac_cli.cli import main; "
        "main(['--help']) if sys.argv[1] == 'help' else "
        "main(['embed', 'clips/a.wav', '--out', sys.argv[1], '--model', 'tiny.pt', '-q']); "
        "print('pyarrow' in sys.modules)"
    )
    for arg in ("help", str(tmp_path / "e.npy")):
        proc = subprocess.run([sys.executable, "-c", script, arg], cwd=made, capture_output=True, timeout=300)
        assert proc.stdout.decode().strip().splitlines()[-1] == "False", proc.stderr


def test_earlier_rows_read_each_row_group_once_however_many_parts(tmp_path):
    """An output rewritten with `update` takes its kept rows from the file it replaces, a part at
    a time: each row group is read once (a take per part read the file from its start: the rows
    read grew with the square of its size), and the rows are the file's, in the order asked."""
    from matpac_cli.outputs import parquet

    rng = np.random.default_rng(0)
    values = rng.standard_normal((50, 8)).astype(np.float32)
    rows = [(f"f{i}.wav", {"duration_s": 1.0, "sample_rate": 16000, "channels": 1}, values[i]) for i in range(50)]
    path = tmp_path / "emb.parquet"
    with open(path, "wb") as fh:  # 4 rows of 8 float32 per row group: 13 groups
        parquet.write_embeddings(fh, [rows], (8,), group_bytes=4 * 8 * 4)
    assert pq.ParquetFile(path).num_row_groups == 13
    taker = parquet.EarlierRows(path)
    order = [i for i in range(50) if i % 7 != 3]  # the rows kept, in the output's order
    got = np.concatenate([taker.take(order[k : k + 6]) for k in range(0, len(order), 6)])
    assert np.array_equal(got, values[order])
    assert taker.groups_read == 13
    assert np.array_equal(taker.take([49, 0]), values[[49, 0]])  # any order still answers
