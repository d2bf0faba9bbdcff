"""Hostile text in file names and labels (issue 20): spreadsheet formulas in CSV, carriage returns
that split CSV rows, and terminal escape sequences, through the real command.

One library per module: files whose names begin with `=HYPERLINK(...)`, `+`, `-`, `@` and `'`,
names holding `\\r`, `\\n` and ESC/BEL sequences, and a head trained on it whose labels are a
formula and an escape sequence. CSV cells that would be formulas are `'`-prefixed and quoted;
matpac's own readers (report, search, train --embeddings) get the exact text back; Parquet and
JSON Lines keep it exact; stderr, and stdout on a terminal, show control characters as escapes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import read_terminal, run_matpac, write_audio
from reference import make_checkpoint

FORMULAS = ['=HYPERLINK("http:evil","click").wav', "+plus.wav", "-minus.wav", "@at.wav", "'quote.wav"]
CONTROL = ["a\rb.wav", "c\nd.wav", "\x1b]0;title\x07\x1b[2Jscreen.wav"]
NAMES = FORMULAS + CONTROL + ["plain1.wav", "plain2.wav"]
LABELS = ['=HYPERLINK("http://evil","x")', "\x1b]0;pwned\x07\x1b[2Jred"]  # the trained head's classes
RAW = (b"\x1b", b"\x07")  # bytes that must never reach a terminal


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> dict:
    """The library, embedded (.npy and .parquet), and a head trained on it with hostile labels."""
    root = tmp_path_factory.mktemp("text")
    model = root / "tiny.pt"
    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=3), model)
    lib = root / "lib"
    for i, name in enumerate(NAMES):
        write_audio(lib / name, 0.6, seed=i % 2 * 3)  # two kinds of sound, for the two classes
    with open(lib / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("path", "label"), *((n, LABELS[i % 2]) for i, n in enumerate(NAMES))])
    listed = "\0".join(NAMES).encode()
    for out in ("emb.npy", "pq.parquet"):
        proc = run_matpac(["embed", "-", "--null", "--out", out, "--model", str(model), "-q"], input=listed, cwd=lib)
        assert proc.returncode == 0, proc.stderr.decode()
    proc = run_matpac(
        ["train", "labels.csv", "--embeddings", "emb.npy", "--out", "head.safetensors", "--lr", "1e-3", "-q"], cwd=lib
    )
    assert proc.returncode == 0, proc.stderr.decode()  # train --embeddings matched every escaped path
    return {
        "dir": lib,
        "model": model,
        "listed": listed,
        "tag": ["tag", "-", "--null", "--model", str(model), "--head", "head.safetensors", "--top-k", "1"],
    }


def _csv_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _escaped(text: str) -> str:
    return "'" + text if text[:1] in "=+-@'" else text


# ------------------------------------------------------------------ formulas and carriage returns


def test_the_row_index_quotes_formulas_and_carriage_returns_and_reads_back_exactly(lib):
    d = lib["dir"]
    raw = (d / "emb.csv").read_bytes().decode()
    assert '"\'=HYPERLINK(""http:evil"",""click"").wav"' in raw and '"a\rb.wav"' in raw
    paths = [row[1] for row in _csv_cells(d / "emb.csv")[1:]]
    assert sorted(paths) == sorted(_escaped(n) for n in NAMES)
    frame = pd.read_csv(d / "emb.csv")
    assert len(frame) == len(NAMES) and sorted(frame["path"]) == sorted(paths)  # no row split by \r
    assert sorted(pq.read_table(d / "pq.parquet", columns=["path"]).column("path").to_pylist()) == sorted(NAMES)
    from matpac_cli.outputs.readers import read_embeddings

    assert sorted(read_embeddings(d / "emb.npy").paths) == sorted(NAMES)


def test_tag_rows_escape_formula_labels_and_paths_in_csv_only_and_report_reads_them(lib):
    d = lib["dir"]
    proc = run_matpac(lib["tag"] + ["--out", "tags.csv", "--report", "r.html", "-q"], input=lib["listed"], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode()  # --report read the CSV back, \r and all
    rows = _csv_cells(d / "tags.csv")
    header, body = rows[0], rows[1:]
    got = {r[header.index("path")]: r[header.index("label")] for r in body}
    assert sorted(got) == sorted(_escaped(n) for n in NAMES)
    assert set(got.values()) <= {_escaped(LABELS[0]), LABELS[1]} and _escaped(LABELS[0]) in got.values()
    assert all(float(r[header.index("score")]) == float(r[header.index("score")]) for r in body)  # numbers
    frame = pd.read_csv(d / "tags.csv")
    assert len(frame) == len(NAMES) and frame["score"].dtype.kind == "f"
    for fmt in ("jsonl", "parquet"):
        proc = run_matpac(lib["tag"] + ["--out", f"tags.{fmt}", "-q"], input=lib["listed"], cwd=d)
        assert proc.returncode == 0, proc.stderr.decode()
    jsonl = [json.loads(ln) for ln in (d / "tags.jsonl").read_text(encoding="utf-8").splitlines()]
    table = pq.read_table(d / "tags.parquet").to_pylist()
    for rows in (jsonl, table):
        assert sorted(r["path"] for r in rows) == sorted(NAMES) and {r["label"] for r in rows} <= set(LABELS)
    from matpac_cli.outputs.tag_readers import read_tags

    back = read_tags(d / "tags.csv").rows
    assert [(r["path"], r["label"]) for r in back] == [(r["path"], r["label"]) for r in jsonl]
    assert [r["score"] for r in back] == pytest.approx([r["score"] for r in jsonl], abs=1e-6)
    for tags, emb in (("tags.csv", "pq.parquet"), ("tags.parquet", "emb.npy")):  # each CSV against exact text
        proc = run_matpac(["report", tags, "--embeddings", emb, "--out", "r2.html", "--force"], cwd=d)
        assert proc.returncode == 0, proc.stderr.decode()
        page = (d / "r2.html").read_text(encoding="utf-8")
        assert "file(s) are not in" not in page and "are not in the tags:" not in page  # every file matched


def test_search_reads_escaped_paths_back_and_escapes_its_own_csv(lib):
    d = lib["dir"]
    queries = ['=HYPERLINK("http:evil","click").wav', "@at.wav", "a\rb.wav"]
    proc = run_matpac(["search", "--index", "emb.npy", "--top-k", "2", "--out", "s.jsonl", "--", *queries], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "0 embedded" in proc.stderr.decode()  # every query was found in the index by its path
    rows = [json.loads(ln) for ln in (d / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["query"] for r in rows} == set(queries) and {r["path"] for r in rows} <= set(NAMES)
    proc = run_matpac(["search", "--index", "emb.npy", "--top-k", "2", "--", *queries], cwd=d)
    assert proc.returncode == 0, proc.stderr.decode()
    frame = pd.read_csv(io.StringIO(proc.stdout.decode()))
    assert len(frame) == 6 and set(frame["query"]) == {_escaped(q) for q in queries}


def test_a_leading_quote_matpac_did_not_write_is_kept(lib, tmp_path):
    """A row index written before the spreadsheet rule (or by hand) names `'quote.wav` with one
    `'`: only a `'` the writer could have put (before = + - @ tab CR LF or ') comes off."""
    from matpac_cli.outputs.safetext import from_spreadsheet

    assert [from_spreadsheet(c) for c in ("'=x", "''x", "'x", "'\tx", "'", 5)] == ["=x", "'x", "'x", "\tx", "'", 5]
    shutil.copy(lib["dir"] / "emb.npy", tmp_path / "emb.npy")
    shutil.copy(lib["dir"] / "emb.manifest.json", tmp_path / "emb.manifest.json")
    old = (lib["dir"] / "emb.csv").read_text(encoding="utf-8").replace(",\"''quote.wav\",", ",'quote.wav,")
    assert ",'quote.wav," in old
    (tmp_path / "emb.csv").write_text(old, encoding="utf-8")
    proc = run_matpac(["search", "'quote.wav", "--index", "emb.npy", "-k", "1", "--format", "jsonl"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()  # found by its exact name (no audio file here)
    assert "0 embedded" in proc.stderr.decode() and json.loads(proc.stdout)["query"] == "'quote.wav"


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is not installed")
def test_libreoffice_opens_the_index_with_no_formula_and_one_row_per_file(lib, tmp_path):
    shutil.copy(lib["dir"] / "emb.csv", tmp_path / "emb.csv")
    proc = subprocess.run(
        ["soffice", "--headless", "--convert-to", "fods", "emb.csv"],
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        timeout=180,
    )
    assert proc.returncode == 0 and (tmp_path / "emb.fods").exists(), proc.stderr
    sheet = (tmp_path / "emb.fods").read_text(encoding="utf-8")
    assert "table:formula" not in sheet  # =HYPERLINK(...), +, -, @ are all text
    assert len(re.findall(r"<table:table-row[ >]", sheet)) == 1 + len(NAMES)  # no row split by \r or \n
    assert 'office:value-type="float"' in sheet  # numbers are still numbers


# ------------------------------------------------------------------ terminals


def _on_a_terminal(args: list[str], cwd: Path, stdin: bytes) -> tuple[int, bytes, bytes]:
    """The real command with stdout on a pseudo-terminal (stdin and stderr are pipes)."""
    main, sub = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "matpac_cli", *args], cwd=cwd, stdin=subprocess.PIPE, stdout=sub, stderr=subprocess.PIPE
    )
    os.close(sub)
    proc.stdin.write(stdin)
    proc.stdin.close()
    out = read_terminal(main)
    err = proc.stderr.read()
    return proc.wait(timeout=300), out, err


def test_stdout_on_a_terminal_shows_escapes_and_a_pipe_gets_the_exact_bytes(lib):
    d = lib["dir"]
    code, out, err = _on_a_terminal(lib["tag"], d, lib["listed"])
    assert code == 0, err.decode()
    assert not any(b in out for b in RAW), out
    text = out.decode()
    assert "\\x1b]0;title\\x07\\x1b[2Jscreen.wav" in text and "a\\rb.wav" in text and "c\\nd.wav" in text
    assert "\\x1b]0;pwned\\x07\\x1b[2Jred" in text  # a label from the head, too
    assert "'=HYPERLINK" in text
    piped = run_matpac(lib["tag"], input=lib["listed"], cwd=d)
    assert piped.returncode == 0, piped.stderr.decode()
    assert b"\x1b]0;title\x07\x1b[2Jscreen.wav" in piped.stdout and LABELS[1].encode() in piped.stdout
    code, out, err = _on_a_terminal(lib["tag"] + ["--format", "jsonl"], d, lib["listed"])
    assert code == 0 and not any(b in out for b in RAW), out


def test_a_failing_file_named_with_escapes_is_shown_escaped_on_stderr(lib, tmp_path):
    bad, formula = "\x1b]0;title\x07\x1b[2Jbad.wav", "=HYPERLINK(1)bad.wav"
    for name in (bad, formula):
        (tmp_path / name).write_bytes(b"not audio at all")
    write_audio(tmp_path / "good.wav", 0.5)
    args = ["embed", bad, formula, "good.wav", "--out", "e.npy", "--model", str(lib["model"]), "--failures", "f.csv"]
    proc = run_matpac(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert not any(b in proc.stderr for b in RAW), proc.stderr
    assert b"\\x1b]0;title\\x07\\x1b[2Jbad.wav" in proc.stderr
    failed = [row[0] for row in _csv_cells(tmp_path / "f.csv")[1:]]
    assert failed == [bad, "'" + formula]  # the exact name, a formula made text
    for args in (
        ["search", "--index", bad + ".npy", "x.wav"],  # matpac's own one-line error
        ["tag", "x.wav", "--top-k", bad],
        ["tag", "--" + bad],
    ):  # typer's usage errors
        proc = run_matpac(args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert not any(b in proc.stderr for b in RAW), proc.stderr


def test_models_labels_of_a_hostile_head_shows_escapes_on_a_terminal_and_exact_labels_into_a_pipe(lib):
    d = lib["dir"]
    code, out, err = _on_a_terminal(["models", "labels", "head.safetensors"], d, b"")
    assert code == 0, err.decode()
    assert not any(b in out for b in RAW), out
    assert "\\x1b]0;pwned\\x07\\x1b[2Jred" in out.decode()
    piped = run_matpac(["models", "labels", "head.safetensors"], cwd=d)
    assert piped.returncode == 0, piped.stderr.decode()
    assert sorted(piped.stdout.decode().splitlines()) == sorted(LABELS)  # the exact bytes


def test_the_row_index_is_read_as_columns_and_anything_unusual_row_by_row(tmp_path, monkeypatch):
    """A `.npy` output's index is read by Arrow's CSV reader (a re-run at 100,000 rows: 0.28 s row
    by row, 0.1 s so), with the cells as matpac wrote them: a `'` off a formula, quotes, commas,
    line breaks, an empty duration; a file it cannot read so (a name that is not UTF-8, a short
    line, a half-written tail past a pending count) is read row by row, with the same rows."""
    from matpac_cli.outputs import readers

    path = tmp_path / "emb.csv"
    body = (
        "row,path,duration_s,sample_rate,channels,truncated\n"
        "0,'=SUM(A1).wav,1.5,16000,1,0\n"
        '1,"a,""b""\r\nc.wav",,44100,2,1\n'
        "\n"
        "2,'plain.wav,2.25,8000,1,\n"
    )
    path.write_bytes(body.encode())
    taken = []
    fast = readers._arrow_index
    monkeypatch.setattr(readers, "_arrow_index", lambda *a: taken.append(fast(*a)) or taken[-1])
    rows = readers.read_index(path)
    assert taken[-1] is not None  # the columnar read
    assert [r["path"] for r in rows] == ["=SUM(A1).wav", 'a,"b"\r\nc.wav', "'plain.wav"]
    assert rows[1]["duration_s"] != rows[1]["duration_s"] and rows[2]["duration_s"] == 2.25  # empty: NaN
    assert [(r["row"], r["sample_rate"], r["channels"], r["truncated"]) for r in rows] == [
        (0, 16000, 1, False),
        (1, 44100, 2, True),
        (2, 8000, 1, False),
    ]
    first = ["=SUM(A1).wav", 'a,"b"\r\nc.wav']
    for odd, rows_asked, paths in (
        (body.encode().replace(b"plain", b"pl\xffin"), None, [*first, "'pl\udcffin.wav"]),  # not UTF-8: bytes kept
        (body.encode() + b"3,short.wav\n", None, [*first, "'plain.wav", "short.wav"]),  # a short line
        (body.encode() + b'3,"half-writ', 3, [*first, "'plain.wav"]),  # a killed run's tail, past the count
    ):
        path.write_bytes(odd)
        got = readers.read_index(path, rows_asked)
        assert taken[-1] is None and [r["path"] for r in got] == paths, odd  # read row by row
    path.write_bytes(body.replace("2,'plain", "5,'plain").encode())
    with pytest.raises(Exception, match="rows are not numbered"):
        readers.read_index(path)
