"""The library end to end: real `matpac` runs on real files and a real Lance library (conftest gives
each test a fresh $MATPAC_LIBRARY). A second run over files the library knows encodes nothing,
however they were renamed, moved, touched or re-tagged, and writes the same outputs; an edit of
the audio recomputes that file only; `tag` after `embed` runs no encoder; a killed run loses and
duplicates nothing; two runs at once both finish; a library that cannot be used is one line.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, ffmpeg, retag, run_matpac, write_audio

from matpac_cli import EmbedConfig, Listeners, Predictor, TagConfig, discover, embed, tag
from matpac_cli.jobs.tag import Group, build_heads


def music(folder: Path, n: int = 4, seconds: float = 2.0) -> Path:
    """`n` files in three formats (WAV, FLAC, MP3 by ffmpeg), one in a subfolder."""
    for i in range(n):
        fmt = ("wav", "flac", "mp3")[i % 3]
        dst = folder / "music" / ("sub" if i == 1 else "") / f"t{i}.{fmt}"
        if fmt == "wav":
            write_audio(dst, seconds, sr=22050, seed=i)
        else:
            ffmpeg(write_audio(folder / "src" / f"t{i}.wav", seconds, sr=22050, seed=i), dst)
    shutil.rmtree(folder / "src", ignore_errors=True)
    return folder / "music"


def embed_cli(inputs: list[Path], out: Path, model: Path, *extra: str) -> tuple[dict[str, np.ndarray], str]:
    """A real `matpac embed`: ({file name: its row}, stderr)."""
    proc = run_matpac(["embed", *map(str, inputs), "--out", str(out), "--model", str(model), "--device", "cpu", *extra])
    assert proc.returncode == 0, proc.stderr.decode()
    matrix = np.load(out)
    paths = [row["path"] for row in csv.DictReader(out.with_suffix(".csv").open())]
    return {Path(p).name: matrix[i] for i, p in enumerate(paths)}, proc.stderr.decode()


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def counts(err: str) -> tuple[int, int, dict[str, int]]:
    """(done, reused, {how: files}) from the summary line."""
    m = re.search(r"(\d+) done, (\d+) reused", err)
    how = re.search(r"from the library: ([^)]*)\)", err)
    hows = [part.split(" ", 1) for part in how[1].split(", ")] if how else []
    return int(m[1]), int(m[2]), {name: int(n) for n, name in hows}


def clip_keys(library: Path) -> Counter:
    """(key, model, front end, layer) -> rows in the library's clips table."""
    t = lance.dataset(str(library / "clips.lance")).to_table(columns=["key", "model", "frontend", "layer"])
    return Counter(zip(*(t[c].to_pylist() for c in t.column_names)))


# ------------------------------------------------------------------------------------ what leaves the audio alone


def test_touch_chmod_retag_rename_encode_nothing_and_an_edit_one_file(tmp_path, tiny):
    folder = music(tmp_path)
    first, err = embed_cli([folder], tmp_path / "e1.npy", tiny)
    assert counts(err)[:2] == (4, 0)

    os.utime(folder / "t0.wav", ns=(1, 10**18))  # touch
    os.chmod(folder / "sub" / "t1.flac", 0o600)
    retag(folder / "t2.mp3", "Retagged")
    again, err = embed_cli([folder], tmp_path / "e2.npy", tiny)
    assert counts(err) == (0, 4, {"retagged": 2, "same path": 2}), err
    assert same(again, first)

    renamed = folder.rename(tmp_path / "renamed")
    (renamed / "moved").mkdir()
    (renamed / "t3.wav").rename(renamed / "moved" / "t3.wav")
    moved, err = embed_cli([renamed], tmp_path / "e3.npy", tiny)
    assert counts(err) == (0, 4, {"moved": 4}), err
    assert same(moved, first)

    wave, sr = sf.read(renamed / "t0.wav", dtype="int16")
    wave[1000] += 300  # one sample
    sf.write(renamed / "t0.wav", wave, sr, subtype="PCM_16")
    edited, err = embed_cli([renamed], tmp_path / "e4.npy", tiny)
    assert counts(err) == (1, 3, {"same path": 3}), err
    assert not np.array_equal(edited["t0.wav"], moved["t0.wav"])
    del edited["t0.wav"], moved["t0.wav"]
    assert same(edited, moved)


def test_no_library_writes_nothing(tmp_path, tiny):
    folder = music(tmp_path, n=2)
    library = Path(os.environ["MATPAC_LIBRARY"])
    embed_cli([folder], tmp_path / "e.npy", tiny, "--no-library")
    assert not library.exists()
    embed_cli([folder], tmp_path / "f.npy", tiny, "--library", str(tmp_path / "mine"))
    assert not library.exists() and (tmp_path / "mine" / "clips.lance").is_dir()


# ------------------------------------------------------------------------------------ tag after embed


def tag_run(items, group, library, segments=False) -> tuple[str, float]:
    """Tag through the Python API: (CSV rows, seconds of audio the encoder ran on)."""
    encoded = []
    out = io.StringIO()
    config = TagConfig(top_k=0, segments=segments, library=library)
    tag(items, [group], config, None, out, events=Listeners(audio=encoded.append))
    return out.getvalue(), sum(encoded)


def test_tag_after_embed_runs_no_encoder(tmp_path, ckpts):
    folder = music(tmp_path, n=3, seconds=7.0)
    library = tmp_path / "lib"
    items = discover([str(folder)])
    model = Predictor.load(str(ckpts["tiny992_as"]), device="cpu", precision="fp32")
    group = Group(str(ckpts["tiny992_as"]), build_heads(["events"], model, None, False), model)

    encoded = []
    summary = embed(items, model, EmbedConfig(out=tmp_path / "e.npy", library=library), Listeners(audio=encoded.append))
    assert summary.done == 3 and sum(encoded) > 20

    rows, seconds = tag_run(items, group, library)
    plain, plain_seconds = tag_run(items, group, False)
    assert seconds == 0 and plain_seconds > 20
    assert rows == plain  # the same scores, to the last printed digit

    rows, seconds = tag_run(items, group, library, segments=True)
    plain, _ = tag_run(items, group, False, segments=True)
    assert seconds > 20 and rows == plain  # plain `embed` stored no segments: encoded once more
    again, seconds = tag_run(items, group, library, segments=True)
    assert seconds == 0 and again == plain


# ------------------------------------------------------------------------------------ kill -9, two at once


def start_embed(inputs: list[Path], out: Path, model: Path, hold: str | None = None) -> subprocess.Popen:
    """`matpac embed` in the background; `hold`: a file-name ending whose decoding waits until
    it is killed (the test-only hold hook), so that short files catch the run mid-way."""
    args = ["embed", *map(str, inputs), "--out", str(out), "--model", str(model), "--device", "cpu"]
    args += ["--batch-size", "1", "--workers", "1", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if hold:
        env.update(MATPAC_TEST_HOOKS="1", MATPAC_TEST_HOLD_ON=f"{hold}:{out.parent / 'go'}")
    return subprocess.Popen([sys.executable, "-m", "matpac_cli", *args], env=env, stderr=subprocess.PIPE)


def test_kill_9_mid_run_loses_and_duplicates_nothing(tmp_path, tiny):
    folder = tmp_path / "many"
    for i in range(20):
        write_audio(folder / f"f{i:02d}.wav", 6.0, seed=i)
    library = Path(os.environ["MATPAC_LIBRARY"])
    proc = start_embed([folder], tmp_path / "killed.npy", tiny, hold="f19.wav")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (library / "clips.lance").is_dir() and clip_keys(library):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before anything was stored: was its last file held?"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = len(clip_keys(library))
    assert 0 < stored < 20

    rerun, err = embed_cli([folder], tmp_path / "rerun.npy", tiny, "--batch-size", "1", "--workers", "1")
    assert counts(err)[:2] == (20 - stored, stored), err
    assert set(clip_keys(library).values()) == {1} and len(clip_keys(library)) == 20
    clean, _ = embed_cli([folder], tmp_path / "clean.npy", tiny, "--no-library", "--batch-size", "1", "--workers", "1")
    assert same(rerun, clean, atol=1e-6)


def test_two_runs_at_once_on_one_library(tmp_path, tiny):
    for i in range(12):
        write_audio(tmp_path / ("a", "b", "both")[i % 3] / f"f{i:02d}.wav", 20.0, seed=i)
    a = start_embed([tmp_path / "a", tmp_path / "both"], tmp_path / "a.npy", tiny)
    b = start_embed([tmp_path / "b", tmp_path / "both"], tmp_path / "b.npy", tiny)
    for proc in (a, b):
        assert proc.wait(timeout=240) == 0, proc.stderr.read().decode()
    folders = [tmp_path / "a", tmp_path / "b", tmp_path / "both"]
    _, err = embed_cli(folders, tmp_path / "all.npy", tiny)
    assert counts(err)[:2] == (0, 12), err


# ------------------------------------------------------------------------------------ a library that cannot be used


@pytest.mark.parametrize("where", ["a file", "under a file", "proc"])
def test_an_unusable_library_is_one_line_before_the_model(tmp_path, where):
    (tmp_path / "file").write_text("x")
    place = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "lib", "proc": Path("/proc/matpac")}
    folder = music(tmp_path, n=1)
    for command in (["embed", str(folder), "--out", str(tmp_path / "e.npy")], ["tag", str(folder)]):
        proc = run_matpac([*command, "--model", str(tmp_path / "missing.pt"), "--library", str(place[where])])
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert err.count("\n") == 1 and "library" in err and "--library" in err and "Traceback" not in err
        assert "missing.pt" not in err  # the model was not looked at yet
