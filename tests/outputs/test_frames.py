"""`embed --frames` (issue 20): every input gets its own frames file, named in the index with the
seconds between its frames, whatever its name (`../x`, `/tmp/x`, `x/../y`, a folder called `__`,
a name too long to mirror), through the real command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
from conftest import REPO, run_matpac, write_audio


def test_each_input_has_its_own_frames_file_named_in_the_index(tmp_path, ckpts):
    work = tmp_path / "work"
    names = [
        "clips/x.wav",
        "../x.wav",
        str(tmp_path / "tmp" / "x.wav"),
        "tmp/x.wav",
        "__/x.wav",
        "_up/x.wav",
        "clips/sub/../y.wav",
        "clips/" + "n" * 251 + ".wav",
    ]
    for seed, name in enumerate(names):  # every file sounds different, so a clobbered file shows
        write_audio(work / name if not os.path.isabs(name) else tmp_path / name, 0.7 + 0.1 * seed, seed=seed)
    (work / "clips" / "sub").mkdir(exist_ok=True)
    proc = run_matpac(
        ["embed", *names, "--out", "e.npy", "--frames", "fr", "--model", str(ckpts["tiny608"]), "-q"], cwd=work
    )
    assert proc.returncode == 0, proc.stderr
    with open(work / "e.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    assert [r["path"] for r in index] == names
    assert all(r["frame_s"] == "0.16" for r in index)
    frames = [r["frames"] for r in index]
    assert len(set(frames)) == len(names)  # one file each, none shared
    X = np.load(work / "e.npy")
    for row, name in zip(index, names):
        path = work / "fr" / row["frames"]
        assert path.resolve().is_relative_to((work / "fr").resolve()), row["frames"]
        f = np.load(path)
        seconds = float(row["duration_s"])
        assert len(f) == -(-int(seconds * 100 - 1.5) // 16), (name, f.shape)  # one row per 160 ms
        np.testing.assert_allclose(f.mean(axis=0), X[int(row["row"])], atol=1e-5, err_msg=name)
    assert frames[1] == "_up/x.wav.npy" and frames[2].startswith("_root/") and frames[3] == "tmp/x.wav.npy"
    assert frames[4] == "___/x.wav.npy" and frames[5] == "__up/x.wav.npy" and frames[7].startswith("_long/")
    output = json.loads((work / "e.manifest.json").read_text())["output"]
    assert output["frames"] == {"folder": "fr", "column": "frames", "frame_s": 0.16, "window_s": 0.175}
    search = run_matpac(["search", "clips/x.wav", "--index", "e.npy", "-k", "1"], cwd=work)
    assert search.returncode == 0, search.stderr  # readers take the index with its new columns
    again = run_matpac(
        ["embed", *names, "--out", "e.npy", "--frames", "fr", "--model", str(ckpts["tiny608"])], cwd=work
    )
    assert again.returncode == 0 and "8 reused" in again.stderr.decode(), again.stderr


def test_parquet_output_names_the_frames_files_too(tmp_path, ckpts):
    write_audio(tmp_path / "a" / "x.wav", 0.5, seed=1)
    write_audio(tmp_path / "b" / "x.wav", 0.5, seed=2)
    proc = run_matpac(
        ["embed", "a", "b", "--out", "e.parquet", "--frames", "fr", "--model", str(ckpts["tiny608"]), "-q"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column("frames").to_pylist() == ["a/x.wav.npy", "b/x.wav.npy"]
    assert all((tmp_path / "fr" / f).is_file() for f in table.column("frames").to_pylist())


def test_a_frames_folder_that_cannot_be_written_is_named_in_one_line(tmp_path, ckpts):
    """The error names the --frames folder, not the probe file matpac tried in it (a user's report:
    `cannot write rom/fr/probe.npy`)."""
    write_audio(tmp_path / "a.wav", 0.5, seed=1)
    (tmp_path / "notes.txt").write_text("a file in the way")
    args = ["embed", "a.wav", "--frames", "notes.txt/fr", "--out", "e.npy", "--model", str(ckpts["tiny608"])]
    proc = run_matpac(args, cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("matpac: error: cannot write into notes.txt/fr: notes.txt is not a folder"), err
    assert not (tmp_path / "e.npy").exists()


def test_a_frames_file_matpac_did_not_write_needs_force(tmp_path, ckpts):
    """A file already at an input's frames name is replaced only when this --out names it (an
    earlier run wrote it), even once the audio changed; a file of the user's, or one another
    output's runs wrote, needs --force."""
    write_audio(tmp_path / "a.wav", 0.5, seed=1)
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "a.wav.npy").write_bytes(b"precious: not matpac's")
    args = ["embed", "a.wav", "--frames", "fr", "--model", str(ckpts["tiny608"]), "-q"]
    proc = run_matpac([*args, "--out", "e.npy"], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("matpac: error: --frames: fr/a.wav.npy exists and is not a frames file of e.npy"), err
    assert (tmp_path / "fr" / "a.wav.npy").read_bytes() == b"precious: not matpac's"
    assert run_matpac([*args, "--out", "e.npy", "--force"], cwd=tmp_path).returncode == 0
    first = np.load(tmp_path / "fr" / "a.wav.npy")
    write_audio(tmp_path / "a.wav", 0.7, seed=2)  # changed: computed again, its own frames replaced
    assert run_matpac([*args, "--out", "e.npy"], cwd=tmp_path).returncode == 0
    assert np.load(tmp_path / "fr" / "a.wav.npy").shape != first.shape
    proc = run_matpac([*args, "--out", "other.npy"], cwd=tmp_path)  # another output's frames
    assert proc.returncode == 2 and "fr/a.wav.npy exists" in proc.stderr.decode(), proc.stderr


def test_an_interrupted_frames_run_resumes_without_force(tmp_path, ckpts):
    """A run killed after writing some frames files, before its output: the re-run knows those
    files for its own (the frames folder's record says which output they were written for), takes
    their files from the library, and another output's run still may not replace them."""
    for i in range(2):
        write_audio(tmp_path / f"a{i}.wav", 0.5, seed=i)
    args = ["embed", "a0.wav", "a1.wav", "--frames", "fr", "--model", str(ckpts["tiny608"])]
    assert run_matpac([*args, "--out", "e.npy", "-q"], cwd=tmp_path).returncode == 0
    for name in ("e.npy", "e.csv", "e.manifest.json"):  # as if killed before the output was written
        (tmp_path / name).unlink()
    again = run_matpac([*args, "--out", "e.npy"], cwd=tmp_path)
    assert again.returncode == 0 and "0 done, 2 reused" in again.stderr.decode(), again.stderr
    other = run_matpac([*args, "--out", "other.npy"], cwd=tmp_path)
    assert other.returncode == 2 and "fr/a0.wav.npy exists" in other.stderr.decode(), other.stderr


def test_two_runs_never_write_one_frames_folder_at_once(tmp_path, ckpts):
    write_audio(tmp_path / "a.wav", 0.5, seed=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from matpac_cli.outputs import writers\n"
                "with writers.locked(Path('fr') / 'frames'):\n    print('held', flush=True); time.sleep(60)"
            ),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        proc = run_matpac(
            ["embed", "a.wav", "--out", "e.npy", "--frames", "fr", "--model", str(ckpts["tiny608"])], cwd=tmp_path
        )
        err = proc.stderr.decode()
        assert proc.returncode == 2 and f"another matpac is writing fr/frames (pid {holder.pid})" in err, err
        assert not (tmp_path / "e.npy").exists() and not (tmp_path / "fr" / "a.wav.npy").exists()
    finally:
        holder.kill()
        holder.wait()
