"""`matpac tag --wide`: one row per file (path, duration_s, truncated, then each head's top label
and score), as CSV, JSON Lines and Parquet, to a file or stdout; read back with
`outputs.tag_readers.read_wide` and pyarrow, checked against the long rows of the same run; what
`--update` does onto a wide output, and what is refused in one line."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from conftest import cli, write_audio
from probes import openmic_probe

from matpac_cli.outputs.tag_readers import read_tags, read_wide

WIDE = ["path", "duration_s", "truncated", "audioset_label", "audioset_score", "openmic_label", "openmic_score"]


@pytest.fixture()
def work(tmp_path, monkeypatch, ckpts):
    """a.wav (2 s), b.flac (3.5 s), c.wav (1 s) and an openmic probe, in the working folder;
    the arguments of a run of two heads on the tiny AudioSet model."""
    write_audio(tmp_path / "a.wav", 2.0, seed=1)
    write_audio(tmp_path / "b.flac", 3.5, sr=22050, seed=2)
    write_audio(tmp_path / "c.wav", 1.0, seed=3)
    openmic_probe(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path, ["--model", str(ckpts["tiny992_as"]), "--head", "events", "--head", "./openmic.pth"]


def _top_of_long(capsys, args: list[str], files: list[str]) -> dict[str, dict]:
    """The long format's rank-1 row of each (file, head), as a wide row's cells."""
    code, out, err = cli(capsys, "tag", *files, *args, "--top-k", "1", "--device", "cpu")
    assert code == 0, err
    want: dict[str, dict] = {}
    for r in csv.DictReader(io.StringIO(out)):
        cells = want.setdefault(r["path"], {"duration_s": float(r["duration_s"])})
        cells[f"{r['head']}_label"], cells[f"{r['head']}_score"] = r["label"], float(r["score"])
    return want


def _same(rows: list[dict], want: dict[str, dict]) -> None:
    assert [r["path"] for r in rows] == list(want)
    for r in rows:
        for key, value in want[r["path"]].items():
            assert r[key] == (pytest.approx(value, abs=1e-3) if isinstance(value, float) else value), key
        assert r["truncated"] is False


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_wide_file_is_one_row_per_file_with_each_heads_top_label(work, fmt, capsys):
    d, args = work
    want = _top_of_long(capsys, args, ["a.wav", "b.flac"])
    code, out, err = cli(capsys, "tag", "a.wav", "b.flac", *args, "--wide", "--out", f"tags.{fmt}", "--device", "cpu")
    assert code == 0, err
    assert out == ""
    wide = read_wide(d / f"tags.{fmt}")
    assert wide.heads == ["audioset", "openmic"] and list(wide.rows[0]) == WIDE
    _same(wide.rows, want)
    man = json.loads((d / f"tags.{fmt}.manifest.json").read_text())
    assert man["output"]["columns"] == WIDE and man["settings"]["wide"] is True
    if fmt == "parquet":
        schema = pq.read_table(d / "tags.parquet").schema
        assert [schema.field(c).type for c in ("openmic_label", "openmic_score", "truncated")] == [
            "string",
            "float",
            "bool",
        ]
    with pytest.raises(Exception, match="wide tags file"):
        read_tags(d / f"tags.{fmt}")  # the long reader (and `matpac report`) says what the file is


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_wide_to_stdout(work, fmt, capsys):
    _, args = work
    want = _top_of_long(capsys, args, ["a.wav", "b.flac"])
    code, out, err = cli(capsys, "tag", "a.wav", "b.flac", *args, "--wide", "-f", fmt, "--device", "cpu")
    assert code == 0, err
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert list(rows[0]) == WIDE
        rows = [{**r, "truncated": r["truncated"] == "1"} for r in rows]
        for r in rows:
            r.update({k: float(r[k]) for k in ("duration_s", "audioset_score", "openmic_score")})
    else:
        rows = [json.loads(line) for line in out.splitlines()]
    _same(rows, want)


def test_a_head_with_no_label_above_the_threshold_leaves_its_cells_empty(work, capsys):
    d, args = work
    code, _, err = cli(capsys, "tag", "a.wav", *args, "--wide", "--threshold", "1", "--out", "t.csv", "--device", "cpu")
    assert code == 0, err
    (row,) = read_wide(d / "t.csv").rows
    assert row["audioset_label"] is None and row["audioset_score"] is None and row["duration_s"] == 2.0
    assert row["openmic_label"] is None or row["openmic_score"] == 1.0  # a saturated probe keeps its label


def test_update_onto_a_wide_output_keeps_its_rows_and_a_long_run_onto_it_is_one_line(work, capsys):
    d, args = work
    run = lambda *more: cli(capsys, "tag", *more, *args, "--device", "cpu")  # noqa: E731
    code, _, err = run("a.wav", "b.flac", "--wide", "--out", "tags.csv")
    assert code == 0, err
    first = read_wide(d / "tags.csv").rows
    code, _, err = run("c.wav", "--wide", "--out", "tags.csv")
    assert code == 2 and "--update" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run("c.wav", "--wide", "--update", "--out", "tags.csv")
    assert code == 0, err
    rows = read_wide(d / "tags.csv").rows
    assert [r["path"] for r in rows] == ["a.wav", "b.flac", "c.wav"] and rows[:2] == first
    for more in (["--update"], []):  # long rows are not written into a wide file, nor a wide file read as long
        code, _, err = run("c.wav", *more, "--out", "tags.csv")
        assert code == 2 and "one row per file (--wide)" in err and "--force" in err, err
        assert len(err.strip().splitlines()) == 1
    code, _, err = run("a.wav", "--out", "long.csv")
    assert code == 0, err
    code, _, err = run("a.wav", "--wide", "--update", "--out", "long.csv")
    assert code == 2 and "long rows" in err and len(err.strip().splitlines()) == 1, err
    assert read_wide(d / "tags.csv").rows == rows


@pytest.mark.parametrize(
    ("more", "words"),
    [
        (["--segments"], "--wide writes one row per file and --segments"),
        (["--top-k", "3"], "--top-k 3: --wide keeps each head's top label"),
        (["--out", "t.csv", "--report", "r.html"], "without --wide"),
        (["--out", "-", "-f", "parquet"], "binary"),
    ],
)
def test_what_wide_refuses_is_one_line_before_a_model_loads(work, more, words, capsys):
    d, args = work
    code, out, err = cli(capsys, "tag", "a.wav", *args, "--wide", *more)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and not (d / "t.csv").exists()
