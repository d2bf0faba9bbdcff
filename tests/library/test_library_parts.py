"""A library holding parts of what a run needs, from the real command on a real Lance library:
a file encoded again for the part it lacked (a layer, its segments) stores that part only, and
a reader of the library (`search --index`, `library export`) never leaves files out in silence,
neither those that lack the layer read nor those stored under another front-end setting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pytest
import torch
from conftest import run_matpac, write_audio
from probes import probe_tensors


def parts_stored(library: Path, table: str = "clips") -> Counter:
    """(key, model, front end[, layer]) -> rows of `table`, read with Lance itself."""
    columns = ["key", "model", "frontend"] + (["layer"] if table == "clips" else [])
    t = lance.dataset(str(library / f"{table}.lance")).to_table(columns=columns).to_pydict()
    return Counter(zip(*(t[c] for c in columns)))


def matpac(d: Path, *args: str):
    proc = run_matpac([*map(str, args), "--device", "cpu"] if args[0] != "library" else list(args), cwd=d)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.fixture
def folders(tmp_path):
    """`a/` (three files) and `b/` (two), of different lengths."""
    for i in range(5):
        write_audio(tmp_path / ("a" if i < 3 else "b") / f"f{i}.wav", 2.0 + i / 2, seed=i)
    return tmp_path


def test_a_file_encoded_again_for_a_part_it_lacked_stores_that_part_only(folders, tiny):
    """`embed` then `tag --segments` (segments lacking) then `embed --layer all` (layer 1
    lacking): each encoded the files again and stored every clip layer again, two rows per
    (key, model, front end, layer)."""
    d = folders
    matpac(d, "embed", "a", "--model", tiny, "--out", "e.npy", "--library", "L", "-q")
    torch.save(probe_tensors(20, seed=4, width=np.load(d / "e.npy").shape[-1]), d / "openmic.pth")
    tag = ["tag", "a", "--model", tiny, "--head", "./openmic.pth", "--library", "L", "--segments"]
    first = matpac(d, *tag, "--out", "t1.csv")
    assert "3 done" in first.stderr.decode(), first.stderr.decode()  # no segments stored: encoded
    assert set(parts_stored(d / "L").values()) == {1} and len(parts_stored(d / "L")) == 3
    assert set(parts_stored(d / "L", "segments").values()) == {1} and len(parts_stored(d / "L", "segments")) == 3

    matpac(d, "embed", "a", "--model", tiny, "--out", "all.npy", "--layer", "all", "--library", "L", "-q")
    assert set(parts_stored(d / "L").values()) == {1} and len(parts_stored(d / "L")) == 6
    again = matpac(d, *tag, "--out", "t2.csv")
    assert "0 done, 3 reused" in again.stderr.decode(), again.stderr.decode()
    assert set(parts_stored(d / "L", "segments").values()) == {1}

    info = json.loads(matpac(d, "library", "info", "--library", "L", "--json").stdout)
    assert (info["rows"], info["files"]) == (6, 3)
    (setting,) = info["models"][0]["settings"]
    assert (setting["files"], setting["segments"]) == (3, 3)
    from matpac_cli.library import views

    (held,) = views.held(d / "L")
    for layer in (1, 2):
        v = views.view(d / "L", held.setting, layer)
        assert len(v.paths) == len(set(v.keys)) == 3 and v.matrix.shape[0] == 3


def warnings_of(proc) -> list[str]:
    return [line for line in proc.stderr.decode().splitlines() if line.startswith("matpac: warning:")]


def test_last_read_from_a_library_says_the_files_without_that_layer(folders, tiny):
    """`a/` embedded at layer 1 only, `b/` at the last (2): reading `last` left `a/` out of the
    export and of the search index, and said nothing."""
    d = folders
    matpac(d, "embed", "a", "--model", tiny, "--out", "a.npy", "--layer", "1", "--library", "L", "-q")
    matpac(d, "embed", "b", "--model", tiny, "--out", "b.npy", "--library", "L", "-q")
    export = matpac(d, "library", "export", "--out", "x.npy", "--library", "L")
    assert np.load(d / "x.npy").shape[0] == 2
    (line,) = warnings_of(export)
    assert "3 file(s) on disk hold no layer 2" in line and "--layer 1 reads 3 of them" in line, line
    search = matpac(d, "search", "b/f3.wav", "--index", "L", "--top-k", "5")
    assert warnings_of(search) == [line] and search.stdout.decode().count("\n") == 2  # header + f4

    one = matpac(d, "library", "export", "--out", "y.npy", "--library", "L", "--layer", "1")
    assert np.load(d / "y.npy").shape[0] == 3 and warnings_of(one) == [
        "matpac: warning: 2 file(s) on disk hold no layer 1 embedding of this model and are left out "
        "(--layer 2 reads 2 of them)"
    ]


def test_a_model_held_under_two_front_end_settings_says_which_was_read(folders, tiny):
    """fp32 runs over `a/`, a bf16 run over `b/`: the export read the fp32 setting (most files)
    and left `b/` out in silence."""
    d = folders
    matpac(d, "embed", "a", "--model", tiny, "--out", "a.npy", "--library", "L", "-q")
    matpac(d, "embed", "b", "--model", tiny, "--out", "b.npy", "--library", "L", "--precision", "bf16", "-q")
    info = json.loads(matpac(d, "library", "info", "--library", "L", "--json").stdout)
    settings = {s["files"]: s["frontend"] for s in info["models"][0]["settings"]}
    assert sorted(settings) == [2, 3]
    export = matpac(d, "library", "export", "--out", "x.npy", "--library", "L")
    assert np.load(d / "x.npy").shape[0] == 3
    (line,) = warnings_of(export)
    assert f"read the front-end setting {settings[3]} of this model (3 files, the most)" in line, line
    assert f"{settings[2]}: 2 file(s), 2 of them on disk and not read" in line, line
