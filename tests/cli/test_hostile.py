"""Hostile trees, full disks, races and damaged libraries (issue 10), through the real command.

Full and read-only disks are small tmpfs mounts, made only where the tests run as root (CI does)
and skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_matpac, write_audio
from probes import openmic_probe


@pytest.fixture()
def mount(tmp_path):
    """mount(size_kb, ro=False) -> a fresh tmpfs folder, unmounted afterwards."""
    made: list[Path] = []

    def make(size_kb: int, ro: bool = False) -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("tmpfs mounts need root")
        where = tmp_path / f"mnt{len(made)}"
        where.mkdir()
        opts = f"size={size_kb}k" + (",ro" if ro else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)]).returncode != 0:
            pytest.skip("cannot mount tmpfs here")
        made.append(where)
        return where

    yield make
    for where in made:
        subprocess.run(["umount", "-l", str(where)])


def _one_error_line(proc, code: int = 2) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("matpac: error")]
    assert len(lines) == 1, err
    return lines[0]


def _clips(folder: Path, n: int, seconds: float = 0.5) -> Path:
    for i in range(n):
        write_audio(folder / f"c{i:03d}.wav", seconds, seed=i)
    return folder


# -------------------------------------------------------------------- 1. names that are not UTF-8


def test_a_non_utf8_file_name_is_processed_and_written_as_its_bytes(tmp_path, tiny):
    """The odd name, a copy of c000.wav, gets c000's vector (the library finds it by its audio),
    and the library keys its path faithfully (bytes, not text) for the next run."""
    clips = _clips(tmp_path / "clips", 2)
    args = ["embed", "clips", "--out", "e.npy", "--model", str(tiny), "-q", "--failures", "f.csv"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0  # an earlier index, without the odd name
    odd = os.fsencode(clips) + b"/caf\xe9.wav"
    shutil.copy(clips / "c000.wav", os.fsdecode(odd))
    bad = os.fsencode(clips) + b"/\xff\xfebad.wav"
    with open(bad, "wb") as fh:
        fh.write(b"not audio")
    proc = run_matpac(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    index = (tmp_path / "e.csv").read_bytes().splitlines()
    names = [ln.split(b",")[1] for ln in index[1:]]
    assert sorted(names) == names and b"clips/caf\xe9.wav" in names
    matrix = np.load(tmp_path / "e.npy")
    assert len(matrix) == len(names) == 3
    row = names.index(b"clips/caf\xe9.wav")
    np.testing.assert_array_equal(matrix[row], matrix[names.index(b"clips/c000.wav")])
    assert b"clips/\xff\xfebad.wav" in (tmp_path / "f.csv").read_bytes()
    again = run_matpac(args, cwd=tmp_path)
    assert json.loads((tmp_path / "e.manifest.json").read_text())["counts"]["reused"] == 3, again.stderr


# -------------------------------------------------------------------- 2. symlink loops


def test_a_symlink_loop_is_named_and_skipped_and_the_run_goes_on(tmp_path, tiny):
    clips = _clips(tmp_path / "clips" / "sub", 2)
    os.symlink("..", clips / "up")
    os.symlink("l2.wav", clips / "l1.wav")
    os.symlink("l1.wav", clips / "l2.wav")
    proc = run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny)], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "clips/sub/up: symlink loop" in err and "clips/sub/l1.wav: symlink loop" in err, err
    assert "Traceback" not in err
    assert len(np.load(tmp_path / "e.npy")) == 2


# -------------------------------------------------------------------- 3. and 6. full and read-only disks


def test_disk_full_during_the_final_write_is_one_line_and_leaves_no_temp_file(tmp_path, tiny, mount):
    clips = _clips(tmp_path / "clips", 60)
    disk = mount(64)  # 60 x 640 float32 (150 KiB) do not fit
    proc = run_matpac(["embed", str(clips), "--out", str(disk / "e.npy"), "--model", str(tiny)])
    line = _one_error_line(proc)
    assert "No space left on device" in line and "e.npy" in line, line
    assert [p.name for p in disk.iterdir() if ".tmp" in p.name] == []
    assert not (disk / "e.npy").exists()


def test_a_library_on_a_full_disk_is_one_warning_and_the_output_is_whole(tmp_path, tiny, mount):
    """The library is a cache of work: a write it cannot make is said once, on one line (not
    Lance's Rust source locations), and the run still writes its whole output."""
    clips = _clips(tmp_path / "clips", 60)
    disk = mount(64)
    args = ["embed", str(clips), "--out", str(tmp_path / "e.npy"), "--model", str(tiny), "--library", str(disk / "L")]
    proc = run_matpac(args)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err and ".rs:" not in err, err
    warned = [ln for ln in err.splitlines() if ln.startswith("matpac: warning: library")]
    assert len(warned) == 1 and "No space left on device" in warned[0] and "goes on without it" in warned[0], err
    assert np.load(tmp_path / "e.npy").shape == (60, 640)


def test_a_read_only_disk_is_refused_before_the_model_loads(tmp_path, hub, mount):
    _clips(tmp_path / "clips", 1)
    disk = mount(64, ro=True)
    proc = run_matpac(["embed", "clips", "--out", str(disk / "e.npy")], cwd=tmp_path)
    line = _one_error_line(proc)
    assert "Read-only file system" in line, line
    assert hub.requests == []


def test_force_onto_a_folder_is_refused_before_any_compute(tmp_path, hub):
    _clips(tmp_path / "clips", 1)
    (tmp_path / "e.npy").mkdir()
    line = _one_error_line(run_matpac(["embed", "clips", "--out", "e.npy", "--force"], cwd=tmp_path))
    assert "e.npy" in line and "folder" in line
    assert hub.requests == []


def test_stale_temp_files_of_dead_runs_are_removed_on_start(tmp_path, tiny):
    _clips(tmp_path / "clips", 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".e.npy.tmp{dead.pid}"
    stale.write_bytes(b"\0" * 4096)
    mine = tmp_path / f".e.npy.tmp{os.getpid()}"  # a live PID: not ours to remove
    mine.write_bytes(b"x")
    assert run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path).returncode == 0
    assert not stale.exists() and mine.exists()


# -------------------------------------------------------------------- 4. and 5. non-finite results, nothing new


def test_finite_samples_of_1e18_are_a_named_input_error_not_nan_rows(tmp_path, tiny):
    _clips(tmp_path, 1)
    sf.write(tmp_path / "loud.wav", np.full(16000, 1e18, np.float32), 16000, subtype="FLOAT")
    proc = run_matpac(["embed", "c000.wav", "loud.wav", "--out", "e.npy", "--model", str(tiny)], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "loud.wav" in err and "NaN" in err, err
    matrix = np.load(tmp_path / "e.npy")
    assert matrix.shape[0] == 1 and np.isfinite(matrix).all()


def test_when_every_input_fails_the_old_output_is_not_reported_as_written(tmp_path, tiny):
    _clips(tmp_path / "clips", 2)
    args = ["--out", "e.npy", "--model", str(tiny)]
    assert run_matpac(["embed", "clips", *args, "-q"], cwd=tmp_path).returncode == 0
    before = (tmp_path / "e.npy").read_bytes()
    (tmp_path / "junk.wav").write_bytes(b"junk")
    proc = run_matpac(["embed", "junk.wav", *args], cwd=tmp_path)  # would drop the clips' rows: refused
    assert proc.returncode == 2 and "holds rows of 2 file(s)" in proc.stderr.decode()
    proc = run_matpac(["embed", "junk.wav", *args, "--update"], cwd=tmp_path)  # keeps them: nothing new to write
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "wrote nothing" in err and "left as it was" in err and "wrote e.npy" not in err, err
    assert (tmp_path / "e.npy").read_bytes() == before


# -------------------------------------------------------------------- 8. concurrent runs


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, tiny):
    _clips(tmp_path / "clips", 1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from matpac_cli.outputs import writers\n"
                "with writers.locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
            ),
            str(tmp_path / "e.npy"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"held\n"  # a run writing e.npy, as far as the lock goes
        second = run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny)], cwd=tmp_path)
        line = _one_error_line(second)
        assert f"another matpac is writing e.npy (pid {holder.pid})" in line, line
        assert not (tmp_path / "e.npy").exists()
    finally:
        holder.kill()
        holder.wait()
    # once the first is gone, the lock is free again
    assert run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path).returncode == 0


# -------------------------------------------------------------------- 10. copied files


def test_same_size_and_mtime_but_other_audio_is_recomputed(tmp_path, tiny):
    clips = tmp_path / "clips"
    write_audio(clips / "a.wav", 1.0, seed=1)
    write_audio(tmp_path / "other.wav", 1.0, seed=2)
    args = ["embed", "clips", "--out", "e.npy", "--model", str(tiny), "-q"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    first = np.load(tmp_path / "e.npy")
    subprocess.run(["cp", "-p", str(tmp_path / "other.wav"), str(clips / "a.wav")], check=True)
    os.utime(
        clips / "a.wav", ns=(os.stat(tmp_path / "other.wav").st_atime_ns, os.stat(tmp_path / "other.wav").st_mtime_ns)
    )
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "e.manifest.json").read_text())["counts"]["computed"] == 1
    assert not np.allclose(np.load(tmp_path / "e.npy"), first)


# -------------------------------------------------------------------- tag: full stdout, odd names, locks


def test_tag_to_a_full_stdout_is_one_line_exit_2(tmp_path, tiny):
    _clips(tmp_path / "clips", 2)
    probe = openmic_probe(tmp_path)
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "matpac_cli", "tag", "clips", "--model", str(tiny), "--head", str(probe)],
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
        )
    line = _one_error_line(proc)
    assert "stdout" in line and "No space left on device" in line, line


def test_tag_writes_a_non_utf8_name_as_its_bytes_in_csv_and_escaped_in_jsonl(tmp_path, tiny):
    clips = _clips(tmp_path / "clips", 1)
    shutil.copy(clips / "c000.wav", os.fsdecode(os.fsencode(clips) + b"/caf\xe9.wav"))
    probe = openmic_probe(tmp_path)
    base = ["tag", "clips", "--model", str(tiny), "--head", str(probe), "--top-k", "1", "-q"]
    out = run_matpac(base, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert b"clips/caf\xe9.wav," in out.stdout
    assert run_matpac(base + ["--out", "t.jsonl"], cwd=tmp_path).returncode == 0
    paths = [json.loads(ln)["path"] for ln in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert b"clips/caf\xe9.wav" in [os.fsencode(p) for p in paths]


def test_a_second_tag_run_on_the_same_output_is_refused(tmp_path, tiny):
    from matpac_cli.outputs import writers

    _clips(tmp_path / "clips", 1)
    with writers.locked(tmp_path / "t.csv"):  # this process holds it, as a running matpac would
        proc = run_matpac(
            ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--out", "t.csv"],
            cwd=tmp_path,
        )
    line = _one_error_line(proc)
    assert f"another matpac is writing t.csv (pid {os.getpid()})" in line, line


def test_a_probe_replaced_in_place_means_new_scores(tmp_path, tiny):
    _clips(tmp_path / "clips", 2)
    probe = openmic_probe(tmp_path)
    args = ["tag", "clips", "--model", str(tiny), "--head", str(probe), "--out", "t.csv", "-q"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    before = (tmp_path / "t.csv").read_text()
    g = torch.Generator().manual_seed(7)
    torch.save({"weight": torch.randn(20, 640, generator=g), "bias": torch.randn(20, generator=g)}, probe)
    proc = run_matpac(args, cwd=tmp_path)
    assert proc.returncode == 2 and b"--head" in proc.stderr, proc.stderr  # refused, naming what changed
    assert run_matpac(args + ["--force"], cwd=tmp_path).returncode == 0
    assert (tmp_path / "t.csv").read_text() != before
