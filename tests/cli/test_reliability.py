"""Reliability and pipelines, through the real `matpac` command in subprocesses.

Bad inputs are named and skipped, exit status tells the truth, a SIGKILLed run resumes without
recomputing finished files, stdin path lists and stdout output work, m4a decodes in-process.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import library_files, run_matpac, write_audio, write_m4a

SR = 16000


def _wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _patched_header(offset: int, fmt: str, value: int, extra: tuple[int, str, int] | None = None) -> bytes:
    """A valid 16-bit WAV with one header field overwritten."""
    data = bytearray(_wav_bytes((0.1 * np.ones(SR)).astype(np.float32), subtype="PCM_16"))
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    if extra:
        off, f, v = extra
        data[off : off + struct.calcsize(f)] = struct.pack(f, v)
    return bytes(data)


def make_bad_corpus(folder: Path) -> list[str]:
    """Write 13 kinds of bad input; return their file names."""
    good = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    nan, inf = good.copy(), good.copy()
    nan[100], inf[200] = np.nan, np.inf
    bad = {
        "empty.wav": b"",
        "truncated_header.wav": _wav_bytes(good)[:20],
        "garbage.flac": np.random.default_rng(1).bytes(5000),
        "text_as.mp3": b"this is not audio\n" * 100,
        "header_only.wav": _wav_bytes(np.zeros(0, np.float32)),
        "nan.wav": _wav_bytes(nan),
        "inf.wav": _wav_bytes(inf),
        "short_10ms.wav": _wav_bytes(good[:160]),
        "absurd_rate.wav": _patched_header(24, "<I", 3_000_000, (28, "<I", 6_000_000)),
        "rate_1hz.wav": _patched_header(24, "<I", 1, (28, "<I", 2)),
        "zero_channels.wav": _patched_header(22, "<H", 0),
        "garbage.ogg": b"OggS" + np.random.default_rng(2).bytes(3000),
        "noise.aiff": np.random.default_rng(3).bytes(64),
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return sorted(bad)


@pytest.mark.parametrize("workers", [None, "4"])
def test_bad_inputs_are_named_skipped_and_counted(tmp_path, tiny, workers):
    """Also with four files decoding at once: the same messages, and rows in input order."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    bad = make_bad_corpus(corpus)
    write_audio(corpus / "good_a.wav", 1.0, seed=1)
    write_audio(corpus / "good_b.flac", 2.5, sr=44100, channels=2, seed=2)
    proc = run_matpac(
        [
            "embed",
            "corpus",
            "missing.wav",
            "--out",
            "emb.npy",
            "--model",
            str(tiny),
            "--failures",
            "failed.csv",
            *(["--workers", workers] if workers else []),
        ],
        cwd=tmp_path,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    # every bad file named on a line of its own, with a reason after the name
    for name in bad + ["missing.wav"]:
        lines = [ln for ln in stderr.splitlines() if f"{name}: " in ln]
        assert len(lines) == 1, (name, stderr)
        assert len(lines[0].split(f"{name}: ", 1)[1]) > 5
    assert "2 file(s)" in stderr and f"{len(bad) + 1} failed" in stderr
    index = list(csv.DictReader(open(tmp_path / "emb.csv")))
    assert [r["path"] for r in index] == ["corpus/good_a.wav", "corpus/good_b.flac"]
    assert np.load(tmp_path / "emb.npy").shape == (2, 640)
    failed = list(csv.DictReader(open(tmp_path / "failed.csv")))
    assert sorted(r["path"] for r in failed) == sorted([f"corpus/{n}" for n in bad] + ["missing.wav"])
    assert all(r["reason"] for r in failed)
    manifest = json.loads((tmp_path / "emb.manifest.json").read_text())
    assert manifest["counts"] == {"computed": 2, "reused": 0, "failed": len(bad) + 1}


def test_all_good_exits_zero_and_usage_error_exits_two(tmp_path, tiny):
    write_audio(tmp_path / "a.wav", 0.5)
    ok = run_matpac(["embed", "a.wav", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == b"" and ok.stdout == b""
    usage = run_matpac(["embed", "a.wav", "--out", "e.txt", "--model", str(tiny)], cwd=tmp_path)
    assert usage.returncode == 2 and b".npy" in usage.stderr
    model = run_matpac(["embed", "a.wav", "--out", "e.npy", "--model", "no-such-model"], cwd=tmp_path)
    assert model.returncode == 2 and b"matpac-plus" in model.stderr


def test_missing_weights_offline_exit_two_with_fetch_command(tmp_path):
    write_audio(tmp_path / "a.wav", 0.5)
    proc = run_matpac(
        ["embed", "a.wav", "--out", "e.npy", "--model", "matpac"],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 2
    assert b"matpac models download matpac" in proc.stderr


def test_sigkill_then_rerun_resumes_without_recomputing(tmp_path, tiny):
    """The killed run's last file waits to be decoded (the test-only hold hook) until it is
    killed, so short files catch it mid-run on any machine (once 40 files of 30 s, 5 runs: the
    longest test outside Ray by far)."""
    folder = tmp_path / "many"
    n_files = 20
    for i in range(n_files):
        write_audio(folder / f"f{i:02d}.wav", 3.0 + 0.1 * i, seed=i)
    args = ["embed", "many", "--out", "emb.npy", "--model", str(tiny), "--batch-size", "1", "-q"]
    clean = run_matpac(args[:3] + ["clean.npy"] + args[4:] + ["--no-library"], cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr

    env = dict(os.environ, OMP_NUM_THREADS="1", MATPAC_TEST_HOOKS="1", MATPAC_TEST_HOLD_ON=f"f19.wav:{tmp_path / 'go'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matpac_cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and library_files() < 5:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = library_files()
    assert 5 <= done_before < n_files
    assert not (tmp_path / "emb.npy").exists()  # nothing half-written in place of the output

    again = run_matpac(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    counts = json.loads((tmp_path / "emb.manifest.json").read_text())["counts"]
    assert counts["reused"] >= done_before  # nothing committed is lost ...
    assert counts["computed"] == n_files - counts["reused"]
    assert library_files() == n_files  # ... and nothing is stored twice
    assert _clip_rows() == n_files
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), np.load(tmp_path / "clean.npy"), atol=1e-5)
    assert (tmp_path / "emb.csv").read_text() == (tmp_path / "clean.csv").read_text()

    # a third run recomputes nothing and leaves the output as it was; --force replaces the output,
    # still from the library
    before = {p.name: p.read_bytes() for p in tmp_path.glob("emb.*")}
    third = run_matpac(args[:-1], cwd=tmp_path)  # not -q: its summary says so
    assert f"0 done, {n_files} reused, 0 failed".encode() in third.stderr and b"wrote nothing" in third.stderr, (
        third.stderr
    )
    assert {p.name: p.read_bytes() for p in tmp_path.glob("emb.*")} == before
    forced = run_matpac(args + ["--force"], cwd=tmp_path)
    assert json.loads((tmp_path / "emb.manifest.json").read_text())["counts"]["reused"] == n_files, forced.stderr


def test_changed_file_is_recomputed(tmp_path, tiny):
    write_audio(tmp_path / "d" / "a.wav", 1.0, seed=1)
    write_audio(tmp_path / "d" / "b.wav", 1.0, seed=2)
    args = ["embed", "d", "--out", "emb.npy", "--model", str(tiny), "-q"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    first = np.load(tmp_path / "emb.npy")
    write_audio(tmp_path / "d" / "b.wav", 2.0, seed=5)  # same path, new content
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    counts = json.loads((tmp_path / "emb.manifest.json").read_text())["counts"]
    assert counts == {"computed": 1, "reused": 1, "failed": 0}
    second = np.load(tmp_path / "emb.npy")
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.allclose(first[1], second[1])


def test_paths_from_stdin_newline_and_nul(tmp_path, tiny):
    names = ["x y.wav", "sub/z.wav"]
    for i, name in enumerate(names):
        write_audio(tmp_path / name, 0.6, seed=i)
    base = ["embed", "-", "--model", str(tiny), "-q", "--out"]
    nl = run_matpac(base + ["nl.npy"], input="\n".join(names).encode() + b"\n", cwd=tmp_path)
    nul = run_matpac(base + ["nul.npy", "--null"], input=b"\0".join(n.encode() for n in names) + b"\0", cwd=tmp_path)
    assert nl.returncode == 0 and nul.returncode == 0, (nl.stderr, nul.stderr)
    rows = [r["path"] for r in csv.DictReader(open(tmp_path / "nul.csv"))]
    assert rows == names  # a stdin list keeps its order (sorting is for folders)
    np.testing.assert_array_equal(np.load(tmp_path / "nl.npy"), np.load(tmp_path / "nul.npy"))


def test_tag_stdout_is_only_data_and_pipes(tmp_path, tiny):
    """`find -print0 | matpac tag - --null --out -` with a local probe file, parsed from stdout."""
    for i in range(3):
        write_audio(tmp_path / "music" / f"t{i}.flac", 1.5, sr=44100, channels=2, seed=i)
    (tmp_path / "music" / "broken.wav").write_bytes(b"RIFF....")
    probe = {"probe.weight": torch.randn(20, 640) * 0.05, "probe.bias": torch.zeros(20)}
    torch.save(probe, tmp_path / "openmic.pth")
    script = (
        f"find music -type f -print0 | {sys.executable} -m matpac_cli tag - --null --out - "
        f"--model {tiny} --head ./openmic.pth --top-k 2"
    )
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True)
    assert proc.returncode == 1, proc.stderr  # broken.wav failed, the rest landed
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert sorted({r["path"] for r in rows}) == [f"music/t{i}.flac" for i in range(3)]
    assert all(r["head"] == "openmic" for r in rows) and len(rows) == 6
    assert b"music/broken.wav" in proc.stderr and b"broken.wav" not in proc.stdout


def test_tag_to_file_resumes(tmp_path, tiny):
    for i in range(3):
        write_audio(tmp_path / "m" / f"t{i}.wav", 1.0, seed=i)
    torch.save({"weight": torch.randn(20, 640) * 0.05, "bias": torch.zeros(20)}, tmp_path / "openmic.pth")
    args = ["tag", "m", "--model", str(tiny), "--head", "./openmic.pth", "--out", "tags.csv", "--top-k", "0"]
    first = run_matpac(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    text = (tmp_path / "tags.csv").read_text()
    assert len(text.splitlines()) == 1 + 3 * 20
    second = run_matpac(args, cwd=tmp_path)
    assert b"3 reused" in second.stderr, second.stderr
    assert (tmp_path / "tags.csv").read_text() == text
    manifest = json.loads((tmp_path / "tags.csv.manifest.json").read_text())
    assert manifest["heads"][0]["name"] == "openmic" and manifest["counts"]["reused"] == 3


NO_FFMPEG = {"PATH": str(Path(sys.executable).parent)}  # python, but no ffmpeg or ffprobe on PATH


def test_m4a_embeds_in_process_quietly(tmp_path, tiny):
    """m4a needs no ffmpeg program (PyAV decodes it in-process), and -q prints nothing at all."""
    write_m4a(tmp_path / "song.m4a", 3.0, sr=44100, channels=2, seed=4)
    write_m4a(tmp_path / "mono.m4a", 2.0, sr=22050, channels=1, seed=5)
    proc = run_matpac(
        ["embed", "song.m4a", "mono.m4a", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path, env=NO_FFMPEG
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"", proc.stderr  # -q: nothing at all, no library warning either
    index = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [(r["path"], r["sample_rate"], r["channels"]) for r in index] == [
        ("song.m4a", "44100", "2"),
        ("mono.m4a", "22050", "1"),
    ]
    assert abs(float(index[0]["duration_s"]) - 3.0) < 0.1
    assert np.load(tmp_path / "e.npy").shape == (2, 640)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (the reference decoder)")
def test_m4a_embeds_as_the_ffmpeg_program_decodes_it(tmp_path, tiny):
    write_m4a(tmp_path / "song.m4a", 3.0, sr=44100, channels=2, seed=4)
    # what the ffmpeg program decodes, as a float WAV: matpac must give the same embedding for both
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "song.m4a"), "-c:a", "pcm_f32le", str(tmp_path / "decoded.wav")],
        check=True,
    )
    proc = run_matpac(["embed", "song.m4a", "decoded.wav", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    emb = np.load(tmp_path / "e.npy")
    assert [r["path"] for r in csv.DictReader(open(tmp_path / "e.csv"))] == ["song.m4a", "decoded.wav"]
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)


def test_garbage_m4a_is_one_line_with_the_decoders_reason(tmp_path, tiny):
    (tmp_path / "song.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(100))
    (tmp_path / "noise.m4a").write_bytes(np.random.default_rng(7).bytes(4000))
    proc = run_matpac(
        ["embed", "song.m4a", "noise.m4a", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path, env=NO_FFMPEG
    )
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 2, lines  # -q: one line per file, no decoder log around them
    for name, line in zip(("song.m4a", "noise.m4a"), lines):
        assert line.endswith(f"{name}: cannot decode: Invalid data found when processing input"), line


def _clip_rows() -> int:
    import lance

    return lance.dataset(os.path.join(os.environ["MATPAC_LIBRARY"], "clips.lance")).count_rows()


def test_a_torn_library_write_is_ignored_and_the_run_goes_on(tmp_path, tiny):
    """kill -9 in the middle of a library commit leaves a data file no version names (Lance
    commits a version only once its files are whole): the next run reads past it, reuses every
    committed file, and stores nothing twice."""
    for i in range(3):
        write_audio(tmp_path / "d" / f"f{i}.wav", 1.0, seed=i)
    args = ["embed", "d", "--out", "emb.npy", "--model", str(tiny), "-q"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    clean = np.load(tmp_path / "emb.npy")
    data = os.path.join(os.environ["MATPAC_LIBRARY"], "clips.lance", "data")
    whole = sorted(os.listdir(data))[0]
    with open(os.path.join(data, whole), "rb") as src, open(os.path.join(data, "torn-" + whole), "wb") as dst:
        dst.write(src.read()[:-1000])  # a fragment cut short, as a killed writer leaves it
    (tmp_path / "emb.npy").unlink()
    again = run_matpac(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    counts = json.loads((tmp_path / "emb.manifest.json").read_text())["counts"]
    assert counts == {"computed": 0, "reused": 3, "failed": 0}
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), clean, atol=1e-6)
    assert _clip_rows() == 3
