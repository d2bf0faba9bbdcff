"""Progress and interruption: files finish as they go, an interrupted run keeps what finished.

A file's result (and its library row) must follow its last chunk within about one batch, whatever
the batch size: its short last chunk must not wait for 15 other files' tails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import library_files, run_matpac, write_audio

HOP_S = 97_280 / 16_000  # audio one full chunk advances


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tracks")
    for i in range(20):
        write_audio(folder / f"t{i:02d}.wav", 30.0, seed=i)
    return folder


LONG_RUN = 20  # tracks of `long_run`


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    """20 short tracks whose last one waits to be decoded (`held`): the library commits every
    16 files, so a run is caught with files committed and one still to go, however fast the
    machine (once 48 tracks of 30 s: the slowest tests outside Ray)."""
    folder = tmp_path_factory.mktemp("long_run")
    for i in range(LONG_RUN):
        write_audio(folder / f"t{i:02d}.wav", 3.0, seed=i)
    return folder


def held(tmp_path: Path) -> dict:
    """The environment in which the last track of `long_run` is decoded only once `tmp_path/go`
    exists (the test-only hold hook, matpac_cli/pipeline/hooks.py): the run cannot end before
    it is stopped."""
    return {"MATPAC_TEST_HOOKS": "1", "MATPAC_TEST_HOLD_ON": f"t{LONG_RUN - 1:02d}.wav:{tmp_path / 'go'}"}


@pytest.mark.parametrize("workers", [1, 4])
def test_each_file_is_emitted_within_a_batch_of_its_audio(tiny, tracks, workers):
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.events import Listeners
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import discover

    predictor = Predictor.load(str(tiny), device="cpu", precision="fp32")
    encoded = [0.0]
    emitted: list[tuple[str, float]] = []
    run(
        RunOptions(batch_size=16, workers=workers),
        discover([str(tracks)]),
        [Plan(predictor)],
        Listeners(audio=lambda s: encoded.__setitem__(0, encoded[0] + s)),
        on_result=lambda r: emitted.append((r.item.name, encoded[0])),
    )
    assert len(emitted) == 20
    # two batches of audio (the one in hand, the one the tail rides with), plus the other files
    # decoding alongside it, whose chunks interleave with this one's
    slack = 2 * 16 * HOP_S + (workers - 1) * 30.0
    for i, (name, at) in enumerate(emitted):
        assert at <= 30.0 * (i + 1) + slack, (
            f"{name} came out after {at:.0f} s of audio were encoded; its own audio ends at {30.0 * (i + 1):.0f} s"
        )


def _stopped(tiny: Path, inputs: Path, out: Path, records: int, sig: int):
    """`matpac embed` stopped by `sig` once the library has `records` files, its last track held
    until then (`held`): (process, its stderr)."""
    args = [
        sys.executable,
        "-m",
        "matpac_cli",
        "embed",
        str(inputs),
        "--out",
        str(out),
        "--model",
        str(tiny),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--workers",
        "1",
    ]
    env = {**os.environ, **held(out.parent)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while library_files() < records and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {records} files were in the library"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_keeps_its_finished_files(tiny, long_run, tmp_path, sig):
    out = tmp_path / "emb.npy"
    proc, err = _stopped(tiny, long_run, out, 16, sig)
    kept = library_files()  # SIGINT and SIGTERM commit what was held; kill -9 loses only that
    assert 16 <= kept < LONG_RUN
    if sig != signal.SIGKILL:
        assert proc.returncode == (130 if sig == signal.SIGINT else 143)
        assert b"Traceback" not in err
        last = err.decode().strip().splitlines()[-1]
        word = "interrupted" if sig == signal.SIGINT else "terminated"
        assert last.startswith(f"matpac: {word} after ") and "kept in the library" in last and "resume" in last
        assert f"({kept} finished, 0 failed)" in last, last  # what it says is what the library has
    rerun = run_matpac(["embed", str(long_run), "--out", str(out), "--model", str(tiny), "--device", "cpu"])
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert f"{kept} reused".encode() in rerun.stderr, rerun.stderr.decode()


def test_summary_line_gives_counts_audio_time_rate_device_and_precision(tiny, tracks, tmp_path):
    import re

    out = tmp_path / "emb.npy"
    base = ["embed", str(tracks), "--out", str(out), "--model", str(tiny), "--device", "cpu"]
    first = run_matpac(base).stderr.decode().strip().splitlines()[-1]
    assert re.match(
        r"matpac: embedded 20 file\(s\): 20 done, 0 reused, 0 failed; 0\.17 h of audio computed in "
        r"\d+:\d\d:\d\d \([\d.]+x real time\) on cpu, fp32; 0\.00 h reused; wrote ",
        first,
    ), first
    again = run_matpac(base).stderr.decode().strip().splitlines()[-1]
    # the reused hours are their own figure: the rate covers only what was computed (none here)
    assert re.match(
        r"matpac: embedded 20 file\(s\): 0 done, 20 reused, 0 failed; nothing computed in "
        r"\d+:\d\d:\d\d on cpu, fp32; 0\.17 h reused \(20 from the library: 20 same path\); wrote ",
        again,
    ), again


def test_an_interrupted_run_and_its_resume_count_the_same_files(tiny, long_run, tmp_path):
    """Broken files are counted apart when the run stops; the resume reuses exactly the finished
    ones and fails the broken ones again."""
    import re
    import shutil

    folder = tmp_path / "in"
    shutil.copytree(long_run, folder)
    for i in range(2):
        (folder / f"a_broken{i}.wav").write_bytes(b"RIFF0000WAVEjunk")  # sorted first: fail before the stop
    out = tmp_path / "emb.npy"
    proc, err = _stopped(tiny, folder, out, 16, signal.SIGINT)
    last = err.decode().strip().splitlines()[-1]
    got = re.match(r"matpac: interrupted after (\d+) of 22 file\(s\) \((\d+) finished, (\d+) failed\);", last)
    assert got, last
    stopped, finished, failed = map(int, got.groups())
    assert failed == 2 and stopped == finished + failed and finished == library_files(), last
    rerun = run_matpac(["embed", str(folder), "--out", str(out), "--model", str(tiny), "--device", "cpu"])
    assert rerun.returncode == 1, rerun.stderr.decode()
    assert f"{LONG_RUN - finished} done, {finished} reused, 2 failed".encode() in rerun.stderr, rerun.stderr.decode()


def test_an_interrupt_keeps_its_exit_code_when_the_failures_file_cannot_be_moved_into_place(tiny, long_run, tmp_path):
    """The --failures list is moved into place in a `finally`: if that fails while Ctrl-C is on
    its way (a folder now stands at its name), it is a warning, and the run still ends 130."""
    out, failures = tmp_path / "emb.npy", tmp_path / "f.csv"
    args = [
        sys.executable,
        "-m",
        "matpac_cli",
        "embed",
        str(long_run),
        "--out",
        str(out),
        "--failures",
        str(failures),
        "--model",
        str(tiny),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **held(tmp_path)})
    deadline = time.monotonic() + 120
    while library_files() < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it was interrupted"
    failures.mkdir()  # os.replace(tmp, f.csv) now fails: a file cannot replace a folder
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "matpac: error:" not in text, text
    assert any(ln.startswith("matpac: warning: cannot write") and "f.csv" in ln for ln in text.splitlines()), text
    assert text.strip().splitlines()[-1].startswith("matpac: interrupted after "), text
    assert failures.is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".f.csv.tmp")]


def _bf16_in_hardware() -> bool:
    """Read here, apart from matpac's parser: the flags line of the first CPU."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return bool({"amx_bf16", "avx512_bf16"} & set(line.split(":", 1)[1].split()))
    return False


def test_the_summary_names_bf16_where_the_cpu_computes_it_in_hardware(tiny, tmp_path):
    """Said after a run long enough for its speed to matter (10 minutes of audio computed)."""
    write_audio(tmp_path / "a.wav", 600.0, seed=1)
    write_audio(tmp_path / "short" / "b.wav", 1.0, seed=2)
    short = run_matpac(["embed", str(tmp_path / "short"), "--model", str(tiny), "--out", str(tmp_path / "s.npy")])
    assert "computes bf16 in hardware" not in short.stderr.decode(), short.stderr.decode()
    base = ["embed", str(tmp_path / "a.wav"), "--model", str(tiny), "--device", "cpu", "--no-library"]
    fp32 = run_matpac([*base, "--out", str(tmp_path / "a.npy")]).stderr.decode().strip().splitlines()[-1]
    bf16 = run_matpac([*base, "--out", str(tmp_path / "b.npy"), "--precision", "bf16"]).stderr.decode()
    said = "this CPU computes bf16 in hardware: `--precision bf16` ran"
    assert (said in fp32) == _bf16_in_hardware(), fp32
    assert said not in bf16 and "on cpu, bf16" in bf16, bf16  # said only where it would change something


def test_the_bar_sizes_only_the_files_the_run_encodes(tmp_path):
    """The bar's total is the library's durations of the files it hands on plus the headers of
    the files the run encodes: a file heard of as reused is never probed (a re-run over 100,000
    files the library holds read every header again). Here the library says 5 s of a file whose
    header says 2 s: only 5 + 3 is the total where it was not probed."""
    from matpac_cli.cli._reporter import Reporter
    from matpac_cli.pipeline.discovery import Item

    held, new = (
        write_audio(tmp_path / f"{n}.wav", s, seed=i) for i, (n, s) in enumerate([("held", 2.0), ("new", 3.0)])
    )
    items = [Item(str(held), held), Item(str(new), new)]
    reporter = Reporter(True, items)
    reporter.unsized = list(items)  # as with a bar on a terminal (a test's stderr is none)
    reporter.reused(items[0], 5.0)
    reporter.encoding(items[1:])
    deadline = time.monotonic() + 30
    while reporter.total_s is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reporter.total_s == pytest.approx(8.0, abs=0.01)
    reporter.encoding(items)  # sized once: nothing more is probed
    assert reporter.unsized is None


def test_the_bar_sizes_every_input_of_a_run_without_a_library(tmp_path):
    """A run that never says which files it encodes (no library) sizes every input at its first
    news of one."""
    from matpac_cli.cli._reporter import Reporter
    from matpac_cli.pipeline.discovery import Item

    items = [Item(str(p), p) for p in (write_audio(tmp_path / f"{i}.wav", 1.0 + i, seed=i) for i in range(2))]
    reporter = Reporter(True, items)
    reporter.unsized = list(items)
    assert reporter.total_s is None
    reporter.audio(0.5)
    deadline = time.monotonic() + 30
    while reporter.total_s is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reporter.total_s == pytest.approx(3.0, abs=0.01)
