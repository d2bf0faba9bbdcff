"""`matpac library info|prune|export`, and the library as the index of `search` and `train`: each
run end to end from the real command on a real Lance library made by a real `matpac embed`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_matpac, write_audio
from probes import probe_tensors

SECONDS = (3.0, 4.0, 5.0, 3.5)


@pytest.fixture
def made(tiny, tmp_path):
    """Four files in `a/`, embedded (every layer) into `emb.npy` and the library `L`."""
    for i, s in enumerate(SECONDS):
        write_audio(tmp_path / "a" / f"f{i}.wav", s, seed=i)
    proc = run_matpac(
        [
            "embed",
            "a",
            "--model",
            str(tiny),
            "--out",
            "emb.npy",
            "--layer",
            "all",
            "--library",
            "L",
            "--device",
            "cpu",
            "-q",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path


def lib(d: Path, *args: str):
    return run_matpac(["library", *args, "--library", "L"], cwd=d)


def info(d: Path) -> dict:
    proc = lib(d, "info", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_info_counts_rows_models_layers_and_missing_paths(made, tiny):
    from matpac_cli.checkpoints.downloads import sha256_of

    got = info(made)
    assert (got["rows"], got["files"], got["paths"], got["missing"]) == (8, 4, 4, 0)
    (model,) = got["models"]
    assert model["sha256"] == sha256_of(tiny) and model["layers"] == [1, 2]
    assert model["settings"][0]["files"] == 4 and got["bytes"] > 0
    (made / "a" / "f1.wav").unlink()
    assert info(made)["missing"] == 1
    text = lib(made, "info").stdout.decode()
    assert "1 missing on disk" in text and sha256_of(tiny)[:12] in text


def test_export_is_embed_output_exactly(made):
    proc = lib(made, "export", "--out", "x.npy")
    assert proc.returncode == 0, proc.stderr.decode()
    emb, x = np.load(made / "emb.npy"), np.load(made / "x.npy")
    np.testing.assert_allclose(x, emb[:, -1], atol=1e-6)
    with open(made / "emb.csv") as a, open(made / "x.csv") as b:
        ours, theirs = list(csv.reader(a)), list(csv.reader(b))
    assert ours[0] == theirs[0]  # the same columns as `embed`'s index
    assert [r[2:] for r in ours[1:]] == [r[2:] for r in theirs[1:]]
    assert [r[1] for r in theirs[1:]] == sorted(str((made / r[1]).resolve()) for r in ours[1:])
    assert lib(made, "export", "--out", "x1.parquet", "--layer", "1").returncode == 0
    from matpac_cli.outputs.readers import read_embeddings

    got = read_embeddings(made / "x1.parquet")
    np.testing.assert_allclose(got.matrix, emb[:, 0], atol=1e-6)
    (made / "a" / "f0.wav").unlink()
    proc = lib(made, "export", "--out", "x.npy", "--force")
    assert proc.returncode == 0 and "1 paths not on disk skipped" in proc.stderr.decode()
    assert np.load(made / "x.npy").shape == (3, emb.shape[-1])
    again = lib(made, "export", "--out", "x.npy")
    assert again.returncode == 2 and "--force" in again.stderr.decode() and b"Traceback" not in again.stderr
    manifest = (made / "x.manifest.json").read_bytes()
    for force in ([], ["--force"]):  # x.parquet would take x.npy's manifest: x.npy could not resume
        proc = lib(made, "export", "--out", "x.parquet", *force)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "x.manifest.json is the manifest of" in err and err.count("\n") == 1, err
        assert "--force" not in err and "give --out another name than x.parquet" in err, err
        assert (made / "x.manifest.json").read_bytes() == manifest and not (made / "x.parquet").exists()


def test_prune_dry_run_then_yes_only_inside_the_library(made):
    (made / "a" / "f2.wav").unlink()
    before = sorted(p.name for p in made.iterdir())
    dry = lib(made, "prune")
    assert dry.returncode == 0 and "would drop 1 files" in dry.stderr.decode() and "--yes" in dry.stderr.decode()
    assert info(made)["rows"] == 8
    done = lib(made, "prune", "--yes")
    assert done.returncode == 0 and "dropped 1 files" in done.stderr.decode()
    got = info(made)
    assert (got["rows"], got["paths"], got["missing"]) == (6, 3, 0)
    assert sorted(p.name for p in made.iterdir()) == before  # nothing outside the library touched
    assert len(list((made / "a").iterdir())) == 3


def test_prune_a_model(made, tiny):
    assert "would drop 4 files" in lib(made, "prune", "--model", str(tiny)).stderr.decode()
    assert lib(made, "prune", "--model", "0" * 12, "--yes").returncode == 2
    assert lib(made, "prune", "--model", str(tiny), "--yes").returncode == 0
    assert info(made)["rows"] == 0


def test_search_a_library_finds_a_moved_file_by_its_audio(made):
    shutil.move(made / "a" / "f1.wav", made / "moved.wav")
    proc = run_matpac(["search", "moved.wav", "--index", "L", "--top-k", "5"], cwd=made)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(0 embedded, 1 found in the index)" in proc.stderr.decode()  # no encoder ran
    rows = list(csv.DictReader(proc.stdout.decode().splitlines()))
    assert len(rows) == 3 and all("f1.wav" not in r["path"] for r in rows)  # the index: files on disk
    emb = np.load(made / "emb.npy")[:, -1]
    from matpac_cli.jobs.similarity import nearest

    order, _ = nearest(np.delete(emb, 1, 0), emb[1:2], 3)[0]
    assert [Path(r["path"]).name for r in rows] == [["f0.wav", "f2.wav", "f3.wav"][i] for i in order]


def test_train_on_a_library(made, tiny):
    for cls, files in (("x", ("f0", "f1")), ("y", ("f2", "f3"))):
        (made / "lab" / cls).mkdir(parents=True)
        for f in files:
            shutil.move(made / "a" / f"{f}.wav", made / "lab" / cls / f"{f}.wav")  # moved: found by audio
    unnamed = run_matpac(["train", "lab", "--embeddings", "L", "--out", "h.safetensors"], cwd=made)
    assert unnamed.returncode == 2 and "--model" in unnamed.stderr.decode()
    assert len(unnamed.stderr.decode().strip().splitlines()) == 1
    proc = run_matpac(
        ["train", "lab", "--embeddings", "L", "--model", str(tiny), "--out", "h.safetensors", "--folds", "2"],
        cwd=made,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert (made / "h.safetensors").is_file()


def test_report_maps_a_library_by_path_and_by_audio(made, tiny, monkeypatch):
    import torch

    torch.save(probe_tensors(87, seed=1, width=np.load(made / "emb.npy").shape[-1]), made / "mtg_genre.pth")
    (made / "b").mkdir()
    shutil.move(made / "a" / "f1.wav", made / "b" / "f1.wav")  # a path the library never saw
    tag = ["tag", "a", "b", "--model", str(tiny), "--head", "./mtg_genre.pth", "--out", "tags.csv", "--no-library"]
    proc = run_matpac([*tag, "--device", "cpu", "-q"], cwd=made)
    assert proc.returncode == 0, proc.stderr.decode()
    from matpac_cli import build_report

    monkeypatch.chdir(made)
    report = build_report("tags.csv", "r.html", embeddings="L")
    assert report.files == 4 and not any("not in" in n for n in report.notes), report.notes


def test_setting_from_parts_is_the_plans(predictor):
    from matpac_cli.config import FRONT_END
    from matpac_cli.library.key import Setting
    from matpac_cli.pipeline.assemble import Plan

    parts = Setting.of_parts(predictor.resolved.sha256, FRONT_END, predictor.dims.n_t, "fp32")
    assert Setting.of(Plan(predictor)) == parts
    assert Setting.of_parts(predictor.resolved.sha256, FRONT_END, predictor.dims.n_t, "bf16") != parts


def test_a_path_whose_audio_was_replaced_is_never_given_its_old_embedding(made):
    """The library knew a/f1.wav by its stat and key; new audio written over it (another length)
    must not be exported, nor found as itself, with the old file's vector (it was, with "0
    embedded": the view trusted the stored key without a look at the disk)."""
    old = np.load(made / "emb.npy")[:, -1]
    write_audio(made / "a" / "f1.wav", 6.0, seed=42)  # same path, new audio
    proc = lib(made, "export", "--out", "x.npy")
    assert proc.returncode == 0, proc.stderr.decode()
    with open(made / "x.csv") as fh:
        names = [row["path"] for row in csv.DictReader(fh)]
    assert str((made / "a" / "f1.wav").resolve()) not in names and len(names) == 3
    for row in np.load(made / "x.npy"):
        assert min(np.abs(row - o).max() for o in old) < 1e-6  # every exported row is a file's own


def test_a_fifo_among_the_inputs_is_named_and_the_run_ends(tiny, tmp_path):
    """The library's key read a FIFO's bytes and blocked for ever (SIGTERM could not end it);
    now it is left to the engine, which names it as it always did."""
    import os

    write_audio(tmp_path / "odd" / "a.wav", 2.0, seed=1)
    os.mkfifo(tmp_path / "odd" / "fifo.wav")
    proc = run_matpac(
        ["embed", "odd", "--model", str(tiny), "--out", "e.npy", "--library", "L", "-q"], cwd=tmp_path, timeout=120
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "fifo.wav" in err and "Traceback" not in err, err
    assert np.load(tmp_path / "e.npy").shape[0] == 1


def test_a_moved_file_found_by_its_audio_keeps_its_own_facts(made):
    """A row added for a file found by its key took the first row's duration and rate (another
    file's), and with no file of the library on disk the index was empty and `report` failed."""
    from matpac_cli.jobs.library import as_named, library_embeddings

    (made / "b").mkdir()
    shutil.move(made / "a" / "f2.wav", made / "b" / "f2.wav")  # 5.0 s; a/f0.wav (the first row) is 3.0 s
    emb = as_named(library_embeddings(made / "L"), [str(made / "b" / "f2.wav")])
    (row,) = [r for r in emb.index if r["path"] == str(made / "b" / "f2.wav")]
    assert row["duration_s"] == pytest.approx(SECONDS[2])
    for f in (made / "a").iterdir():
        f.unlink()
    (row,) = as_named(library_embeddings(made / "L"), [str(made / "b" / "f2.wav")]).index
    assert row["duration_s"] == pytest.approx(SECONDS[2]) and row["sample_rate"] == 16000


def test_a_query_new_to_a_library_index_is_kept_in_that_library(made, tiny):
    """`search q.wav --index L` encoded the query into the default library, not L (and `search`
    had no `--library`): a second search of it encoded again. Now L keeps it, and a second search
    finds it there; `--no-library` keeps nothing."""
    write_audio(made / "q.wav", 2.5, seed=77)
    search = ["search", "--index", "L", "--top-k", "2", "--model", str(tiny)]
    first = run_matpac([*search, "q.wav"], cwd=made)
    assert first.returncode == 0 and "(1 embedded" in first.stderr.decode(), first.stderr.decode()
    assert info(made)["paths"] == 5
    again = run_matpac([*search, "q.wav"], cwd=made)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert "(0 embedded, 1 found in the index)" in again.stderr.decode()  # L had it
    write_audio(made / "s.wav", 2.5, seed=79)
    elsewhere = run_matpac([*search, "s.wav", "--library", "L2"], cwd=made)
    assert elsewhere.returncode == 0 and (made / "L2" / "clips.lance").is_dir()  # `--library` keeps it there
    assert info(made)["paths"] == 5
    write_audio(made / "r.wav", 2.5, seed=78)
    off = run_matpac([*search, "r.wav", "--no-library"], cwd=made)
    assert off.returncode == 0 and info(made)["paths"] == 5


def test_a_folder_that_is_not_a_library_is_said_so(made, tiny):
    """`library info --library a` (a music folder) reported an empty library of the folder's size,
    and a file given as the library was "no such folder"."""
    for args in (["info"], ["prune", "--yes"]):
        proc = run_matpac(["library", *args, "--library", "a"], cwd=made)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "not a library" in err and err.count("\n") == 1, err
    assert len(list((made / "a").iterdir())) == 4  # prune touched nothing there
    proc = run_matpac(["library", "info", "--library", str(tiny)], cwd=made)
    assert proc.returncode == 2 and "not a folder" in proc.stderr.decode()


def test_an_output_made_without_the_library_is_encoded_once_more_then_never(tiny, tmp_path):
    """An output is never read as embeddings (only the library is): one made with `--no-library`
    (or before the library) is encoded once more into the library, and from then on `tag` and
    `embed` take it from there."""
    for i in range(3):
        write_audio(tmp_path / "m" / f"s{i}.wav", 2.0 + i, seed=i)
    embed = ["embed", "m", "--model", str(tiny), "--out", "e.npy", "-q"]
    assert run_matpac([*embed, "--no-library"], cwd=tmp_path).returncode == 0
    assert not list(tmp_path.glob("e.npy.*"))  # nothing kept beside the output
    again = run_matpac([*embed[:-1], "--no-library"], cwd=tmp_path)
    assert again.returncode == 0 and "3 done, 0 reused" in again.stderr.decode(), again.stderr.decode()
    again = run_matpac([*embed[:-1], "--library", "L"], cwd=tmp_path)
    assert again.returncode == 0 and "3 done, 0 reused" in again.stderr.decode(), again.stderr.decode()
    again = run_matpac([*embed[:-1], "--library", "L"], cwd=tmp_path)
    assert again.returncode == 0 and "0 done, 3 reused" in again.stderr.decode(), again.stderr.decode()
    import torch

    torch.save(probe_tensors(20, seed=4, width=np.load(tmp_path / "e.npy").shape[-1]), tmp_path / "openmic.pth")
    tag = ["tag", "m", "--model", str(tiny), "--head", "./openmic.pth", "--out", "t.csv", "--library", "L"]
    proc = run_matpac(tag, cwd=tmp_path)
    assert proc.returncode == 0 and "0 done, 3 reused" in proc.stderr.decode(), proc.stderr.decode()
    assert "3 from the library" in proc.stderr.decode()
