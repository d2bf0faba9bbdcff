"""Files beside an output and the side outputs of a run (issue 20): planted symlinks are refused,
never followed; `--failures` and `--manifest` get `--out`'s rules; every file a run writes is
locked; a run that wrote nothing leaves nothing; argument and input checks come before any
model (and `--precision`/`--device` before torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_matpac, write_audio
from probes import openmic_probe

VICTIM = b"precious: not matpac's\n"


@pytest.fixture()
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def _clips(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        write_audio(folder / f"c{i}.wav", 0.5, seed=i)
    return folder


def _one_error(proc, code: int = 2) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matpac: error: "), err
    return lines[0]


# ------------------------------------------------------------- planted symlinks, end to end


@pytest.mark.parametrize("planted", [".e.npy.lock", ".e.csv.lock"])
def test_a_symlink_planted_beside_the_output_is_refused_and_its_target_kept(tmp_path, tiny, victim, planted):
    _clips(tmp_path / "clips")
    (tmp_path / planted).symlink_to(victim)
    proc = run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny)], cwd=tmp_path)
    line = _one_error(proc)
    assert planted in line and "symlink" in line, line
    assert victim.read_bytes() == VICTIM
    assert not (tmp_path / "e.npy").exists()


def test_a_tag_run_does_not_empty_the_target_of_a_planted_lock(tmp_path, tiny, victim):
    _clips(tmp_path / "clips")
    (tmp_path / ".tags.csv.lock").symlink_to(victim)
    proc = run_matpac(
        ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--out", "tags.csv"],
        cwd=tmp_path,
    )
    assert ".tags.csv.lock" in _one_error(proc)
    assert victim.read_bytes() == VICTIM


def test_a_lock_file_matpac_did_not_write_is_never_truncated(tmp_path, tiny, victim):
    """A hard link to someone's file at the lock's name: locked as it is, never emptied."""
    _clips(tmp_path / "clips")
    os.link(victim, tmp_path / ".e.npy.lock")
    (tmp_path / ".e.csv.lock").write_bytes(VICTIM)  # a plain file that is not a PID
    proc = run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_bytes() == VICTIM and (tmp_path / ".e.csv.lock").read_bytes() == VICTIM


# ------------------------------------------- PID-named files, at the function level (this PID)


def _planted(path: Path, victim: Path) -> Path:
    path.symlink_to(victim)
    return path


def _refused(call, victim: Path) -> None:
    from matpac_cli.errors import OutputError

    with pytest.raises(OutputError, match="symlink"):
        call()
    assert victim.read_bytes() == VICTIM


def test_a_temporary_name_planted_as_a_symlink_is_refused(tmp_path, victim):
    from matpac_cli.outputs import writers

    _planted(tmp_path / f".x.csv.tmp{os.getpid()}", victim)
    _refused(lambda: writers.write_csv(tmp_path / "x.csv", ["a"], [[1]]), victim)
    assert not (tmp_path / "x.csv").exists()


def test_a_probe_name_planted_as_a_symlink_is_refused(tmp_path, victim):
    from matpac_cli.outputs import writers

    _planted(tmp_path / f".x.csv.probe{os.getpid()}", victim)
    _refused(lambda: writers.ensure_writable(tmp_path / "x.csv"), victim)


def test_the_failures_temporary_planted_as_a_symlink_is_refused(tmp_path, victim):
    from matpac_cli.outputs import writers

    _planted(tmp_path / f".f.csv.tmp{os.getpid()}", victim)
    _refused(lambda: writers.FailureLog(tmp_path / "f.csv"), victim)


def test_a_stale_temporary_with_this_pid_is_replaced_not_written_through(tmp_path):
    """A plain file left at this PID's temporary name (a dead run, a recycled PID)."""
    from matpac_cli.outputs import writers

    stale = tmp_path / f".x.csv.tmp{os.getpid()}"
    other = tmp_path / "other"
    other.write_bytes(VICTIM)
    os.link(other, stale)
    writers.write_csv(tmp_path / "x.csv", ["a"], [[1]])
    assert (tmp_path / "x.csv").read_text() == "a\n1\n" and other.read_bytes() == VICTIM


# ------------------------------------------------------ --failures and --manifest: --out's rules


def test_failures_or_manifest_naming_an_input_are_refused_even_with_force(tmp_path, tiny):
    clips = _clips(tmp_path / "clips")
    before = (clips / "c1.wav").read_bytes()
    base = ["--model", str(tiny), "--force"]
    line = _one_error(
        run_matpac(["embed", "clips", "--out", "e.npy", "--failures", "clips/c1.wav", *base], cwd=tmp_path)
    )
    assert "--failures clips/c1.wav is an input" in line, line
    line = _one_error(
        run_matpac(
            [
                "tag",
                "clips",
                "--head",
                str(openmic_probe(tmp_path)),
                "--out",
                "t.csv",
                "--manifest",
                "clips/c1.wav",
                *base,
            ],
            cwd=tmp_path,
        )
    )
    assert "--manifest clips/c1.wav is an input" in line, line
    assert (clips / "c1.wav").read_bytes() == before
    weights = tiny.read_bytes()  # files named by options are inputs too
    line = _one_error(run_matpac(["embed", "clips", "--out", "e.npy", "--failures", str(tiny), *base], cwd=tmp_path))
    assert f"--failures {tiny} is an input" in line, line
    assert tiny.read_bytes() == weights
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "t.csv").exists()


def test_an_input_under_another_name_is_refused_and_the_walk_s_files_are_asked_no_stat(tmp_path, tiny, monkeypatch):
    """A walked file is compared by its stat only where it could be an output under another name
    (a hard link, a folder seen through a link or a mount: the same file name); the others are
    asked nothing (a stat each cost 0.3 s at 100,000 files)."""
    from matpac_cli.outputs import rules
    from matpac_cli.pipeline import discovery

    clips = _clips(tmp_path / "clips", 3)
    os.link(clips / "c1.wav", tmp_path / "hard.txt")
    (tmp_path / "view").symlink_to(clips)
    base = ["--model", str(tiny), "--force"]
    for named in ("hard.txt", "view/c1.wav"):
        line = _one_error(run_matpac(["embed", "clips", "--out", "e.npy", "--failures", named, *base], cwd=tmp_path))
        assert f"--failures {named} is an input of this run (clips/c1.wav)" in line, line
    items = discovery.discover([str(clips)])
    asked, stat = [], os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: asked.append(str(p)) or stat(p, *a, **k))
    (tmp_path / "e.npy").write_bytes(b"x")
    rules.check_not_inputs({"--out": tmp_path / "e.npy"}, items)
    assert asked == [str(tmp_path / "e.npy")], asked
    for named in ("C1.WAV", "ce\u0301.wav"):  # the name of a walked file as a case- or form-folding disk has it
        (clips / "c\u00e9.wav").write_bytes((clips / "c0.wav").read_bytes())
        (tmp_path / named).write_bytes(b"x")
        walked = discovery.discover([str(clips)])
        asked.clear()
        rules.check_not_inputs({"--failures": tmp_path / named}, walked)
        assert len(asked) == 2, asked  # the output, and the walked file it could be there


@pytest.mark.parametrize(
    "args, said",
    [
        (["--out", "t.csv", "--manifest", "t.csv"], "--manifest t.csv is also --out"),
        (["--out", "t.csv", "--failures", "t.csv"], "--failures t.csv is also --out"),
        (["--out", "t.csv", "--failures", "t.csv.manifest.json"], "is also the manifest of --out"),
        (["--manifest", "m.json", "--failures", "m.json"], "--failures m.json is also --manifest"),
    ],
)
def test_two_outputs_of_one_run_never_share_a_path(tmp_path, tiny, args, said):
    _clips(tmp_path / "clips")
    proc = run_matpac(
        ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--force", *args], cwd=tmp_path
    )
    assert said in _one_error(proc)
    assert not list(tmp_path.glob("t.csv*")) and not (tmp_path / "m.json").exists()


def test_embed_failures_on_its_own_index_is_refused(tmp_path, tiny):
    _clips(tmp_path / "clips")
    proc = run_matpac(["embed", "clips", "--out", "e.npy", "--failures", "e.csv", "--model", str(tiny)], cwd=tmp_path)
    assert "--failures e.csv is also the row index of --out" in _one_error(proc)


def test_a_failures_or_manifest_file_matpac_did_not_write_needs_force(tmp_path, tiny):
    clips = _clips(tmp_path / "clips")
    (clips / "broken.wav").write_bytes(b"not audio")
    for name in ("notes.csv", "m.json"):
        (tmp_path / name).write_bytes(VICTIM)
    tag = ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--out", "t.csv"]
    line = _one_error(run_matpac([*tag, "--failures", "notes.csv"], cwd=tmp_path))
    assert "--failures notes.csv exists and was not written by matpac" in line, line
    line = _one_error(run_matpac([*tag, "--manifest", "m.json"], cwd=tmp_path))
    assert "--manifest m.json exists and was not written by matpac" in line, line
    assert (tmp_path / "notes.csv").read_bytes() == VICTIM and (tmp_path / "m.json").read_bytes() == VICTIM
    # files matpac wrote are replaced by the next run; --force replaces the others
    (tmp_path / "notes.csv").unlink()
    assert run_matpac([*tag, "--failures", "notes.csv", "-q"], cwd=tmp_path).returncode == 1
    assert run_matpac([*tag, "--failures", "notes.csv", "-q"], cwd=tmp_path).returncode == 1
    lines = (tmp_path / "notes.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == "path,reason" and lines[1].startswith("clips/broken.wav,"), lines
    assert run_matpac([*tag, "--manifest", "m.json", "--force", "-q"], cwd=tmp_path).returncode == 1
    assert b"matpac_version" in (tmp_path / "m.json").read_bytes()
    assert run_matpac([*tag, "--manifest", "m.json", "-q"], cwd=tmp_path).returncode == 1  # its own: replaced
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_a_manifest_is_matpacs_by_the_rule_every_reader_uses(tmp_path, tiny):
    """`matpac_version` alone does not make a file matpac's: one that `search`/`report` would
    refuse as a manifest (a key of the wrong type) is not replaced without --force."""
    _clips(tmp_path / "clips")
    forged = b'{"matpac_version": "1", "models": "not a list", "notes": "precious"}'
    (tmp_path / "m.json").write_bytes(forged)
    tag = ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--out", "t.csv"]
    line = _one_error(run_matpac([*tag, "--manifest", "m.json"], cwd=tmp_path))
    assert "--manifest m.json exists and was not written by matpac" in line, line
    assert (tmp_path / "m.json").read_bytes() == forged


# --------------------------------------------------------- every file a run writes is locked


def _hold(path: Path) -> subprocess.Popen:
    """Another process holding matpac's lock on `path`, as a running matpac would."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from matpac_cli.outputs import writers\n"
                "with writers.locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
            ),
            str(path),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout.readline() == b"held\n"
    return holder


def test_tag_out_x_csv_is_refused_while_embed_out_x_npy_runs(tmp_path, tiny):
    """`embed --out x.npy` writes x.csv: holding x.npy's files (as that embed does) refuses the tag."""
    _clips(tmp_path / "clips")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from matpac_cli.outputs import naming, writers\n"
                "paths = naming.embed_outputs(Path(sys.argv[1]))\n"
                "with writers.locked(*naming.written(paths)):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
            str(tmp_path / "x.npy"),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        proc = run_matpac(
            ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--out", "x.csv"],
            cwd=tmp_path,
        )
        line = _one_error(proc)
        assert f"another matpac is writing x.csv (pid {holder.pid})" in line, line
        # .npy and .parquet share x.manifest.json
        proc = run_matpac(["embed", "clips", "--model", str(tiny), "--out", "x.parquet"], cwd=tmp_path)
        assert f"another matpac is writing x.manifest.json (pid {holder.pid})" in _one_error(proc)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.parquet").exists()


def test_two_real_runs_sharing_a_failures_file_the_second_is_refused(tmp_path, tiny):
    _clips(tmp_path / "clips")
    holder = _hold(tmp_path / "f.csv")
    try:
        proc = run_matpac(
            ["embed", "clips", "--out", "e.npy", "--model", str(tiny), "--failures", "f.csv"], cwd=tmp_path
        )
        assert f"another matpac is writing f.csv (pid {holder.pid})" in _one_error(proc)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------- a run that wrote nothing


def test_a_run_that_wrote_nothing_leaves_nothing_beside_it(tmp_path, tiny):
    (tmp_path / "junk.wav").write_bytes(b"junk")
    proc = run_matpac(["embed", "junk.wav", "--out", "e.npy", "--model", str(tiny)], cwd=tmp_path)
    assert proc.returncode == 1 and b"wrote nothing" in proc.stderr, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["hf_home", "junk.wav"] or sorted(os.listdir(tmp_path)) == ["junk.wav"]


def test_a_finished_run_leaves_no_lock_files(tmp_path, tiny):
    """Like git's index.lock: every `.NAME.lock` goes when the run ends, whatever it wrote."""
    _clips(tmp_path / "clips")
    (tmp_path / "junk.wav").write_bytes(b"junk")
    proc = run_matpac(
        ["embed", "clips", "junk.wav", "--out", "e.npy", "--failures", "f.csv", "--model", str(tiny), "-q"],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == [], left
    assert (tmp_path / "e.npy").exists() and (tmp_path / "f.csv").exists()


# ------------------------------------------------------------- checks before any model


def test_a_missing_input_is_said_before_the_default_model_is_fetched(tmp_path):
    """No --model: the registry model would be downloaded from the (closed) endpoint first."""
    for args in (["embed", "./clips", "--out", "e.npy"], ["tag", "./clips", "--out", "t.csv"]):
        line = _one_error(run_matpac(args, cwd=tmp_path))
        assert line == "matpac: error: ./clips does not exist", line
    assert os.listdir(tmp_path) in ([], ["hf_home"])


def test_tag_says_a_missing_input_before_it_reads_a_model_file_or_looks_for_the_probes(tmp_path):
    """A local --model is hashed and checked for a MATPAC++ encoder, and offline the probe zip is
    looked for: both after the inputs are found."""
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for args, env in ((["--model", "junk.pt"], None), ([], {"HF_HUB_OFFLINE": "1"})):
        line = _one_error(run_matpac(["tag", "./clips", "--out", "t.csv", *args], env=env, cwd=tmp_path))
        assert line == "matpac: error: ./clips does not exist", line


def test_a_second_writer_is_refused_before_the_model_loads(tmp_path):
    """The default model cannot be fetched here: the lock's refusal comes first."""
    _clips(tmp_path / "clips")
    holder = _hold(tmp_path / "e.npy")
    try:
        line = _one_error(run_matpac(["embed", "clips", "--out", "e.npy"], cwd=tmp_path))
        assert f"another matpac is writing e.npy (pid {holder.pid})" in line, line
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("args, env", [(["--model", "junk.pt"], None), ([], {"HF_HUB_OFFLINE": "1"})])
def test_tag_refuses_a_second_writer_before_it_reads_a_model_file_or_looks_for_the_probes(tmp_path, args, env):
    _clips(tmp_path / "clips")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    holder = _hold(tmp_path / "t.csv")
    try:
        line = _one_error(run_matpac(["tag", "clips", "--out", "t.csv", *args], env=env, cwd=tmp_path))
        assert f"another matpac is writing t.csv (pid {holder.pid})" in line, line
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("args", [["--precision", "fp8"], ["--device", "gpu"], ["--device", "cuda:x"]])
@pytest.mark.parametrize(
    "command",
    [
        ["embed", "a.wav", "--out", "e.npy"],
        ["tag", "a.wav"],
        ["train", "lib", "--out", "h.safetensors"],
        ["search", "a.wav", "--index", "e.npy"],
    ],
)
def test_a_bad_precision_or_device_is_refused_before_torch_is_imported(tmp_path, command, args):
    script = (
        "import sys\nfrom matpac_cli.cli import main\ncode = main(sys.argv[1:])\nprint(code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *command, *args],
        cwd=tmp_path,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.decode().split() == ["2", "False"], (proc.stdout, proc.stderr)
    assert proc.stderr.decode().startswith(f"matpac: error: {args[0]} {args[1]}: expected"), proc.stderr


def test_train_and_search_never_write_failures_over_an_input(tmp_path):
    """The labels, their audio and the index searched are inputs: refused before anything loads."""
    for label in ("a", "b"):
        _clips(tmp_path / "lib" / label, 4)
    before = (tmp_path / "lib" / "a" / "c1.wav").read_bytes()
    line = _one_error(
        run_matpac(["train", "lib", "--out", "h.safetensors", "--failures", "lib/a/c1.wav", "--force"], cwd=tmp_path)
    )
    assert "--failures lib/a/c1.wav is an input" in line, line
    assert (tmp_path / "lib" / "a" / "c1.wav").read_bytes() == before
    line = _one_error(run_matpac(["train", "lib", "--out", "h.safetensors", "--failures", "h.emb.csv"], cwd=tmp_path))
    assert "--failures h.emb.csv is also its row index" in line, line
    (tmp_path / "e.csv").write_bytes(VICTIM)
    line = _one_error(run_matpac(["search", "lib/a/c0.wav", "--index", "e.npy", "--failures", "e.csv"], cwd=tmp_path))
    assert "--failures e.csv is an input" in line, line
    assert (tmp_path / "e.csv").read_bytes() == VICTIM


@pytest.fixture()
def indexed(tmp_path, tiny) -> Path:
    """lib/c0.wav .. c3.wav embedded as e.npy (+ e.csv) and as a folder of Parquet shards."""
    _clips(tmp_path / "lib", 4)
    for out in ("e.npy", "one.parquet"):
        proc = run_matpac(["embed", "lib", "--out", out, "--model", str(tiny), "-q"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
    (tmp_path / "shards.parquet").mkdir()
    (tmp_path / "one.parquet").rename(tmp_path / "shards.parquet" / "part-0.parquet")
    (tmp_path / "one.manifest.json").rename(tmp_path / "shards.manifest.json")
    return tmp_path


def test_search_queries_read_from_stdin_are_inputs_even_with_force(indexed):
    before = (indexed / "lib" / "c0.wav").read_bytes()
    for listed in (b"lib/c0.wav\n", b"lib\n"):  # the file itself, or a folder holding it
        proc = run_matpac(
            ["search", "-", "--index", "e.npy", "--failures", "lib/c0.wav", "--force"], input=listed, cwd=indexed
        )
        assert "--failures lib/c0.wav is an input" in _one_error(proc)
        assert (indexed / "lib" / "c0.wav").read_bytes() == before
    proc = run_matpac(["search", "-", "--index", "e.npy", "-k", "1"], input=b"lib/c0.wav\nlib/c1.wav\n", cwd=indexed)
    assert proc.returncode == 0, proc.stderr.decode()  # the queries read early are still searched
    assert [ln.split(",")[0] for ln in proc.stdout.decode().splitlines()[1:]] == ["lib/c0.wav", "lib/c1.wav"]


def test_a_shard_of_a_parquet_index_is_an_input_of_search_and_train(indexed):
    shard = indexed / "shards.parquet" / "part-0.parquet"
    before = shard.read_bytes()
    line = _one_error(
        run_matpac(
            [
                "search",
                "lib/c0.wav",
                "--index",
                "shards.parquet",
                "--failures",
                "shards.parquet/part-0.parquet",
                "--force",
            ],
            cwd=indexed,
        )
    )
    assert "--failures shards.parquet/part-0.parquet is an input" in line, line
    (indexed / "labels.csv").write_text("path,label\n" + "".join(f"lib/c{i}.wav,{'ab'[i // 2]}\n" for i in range(4)))
    line = _one_error(
        run_matpac(
            [
                "train",
                "labels.csv",
                "--embeddings",
                "shards.parquet",
                "--out",
                "h.safetensors",
                "--failures",
                "shards.parquet/part-0.parquet",
                "--force",
            ],
            cwd=indexed,
        )
    )
    assert "--failures shards.parquet/part-0.parquet is an input" in line, line
    assert shard.read_bytes() == before
    proc = run_matpac(["search", "lib/c0.wav", "--index", "shards.parquet", "-k", "1"], cwd=indexed)
    assert proc.returncode == 0 and proc.stdout.decode().count("\n") == 2, proc.stderr.decode()  # still an index


# ------------------------------------------------------------- what the summary says was written


def test_the_summary_names_every_file_written_and_rows_sent_to_stdout(tmp_path, tiny):
    """--failures and --frames are outputs too; rows on stdout are not 'nothing'."""
    _clips(tmp_path / "clips")
    (tmp_path / "junk.wav").write_bytes(b"junk")
    proc = run_matpac(
        ["embed", "clips", "junk.wav", "--out", "e.npy", "--failures", "f.csv", "--frames", "fr", "--model", str(tiny)],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.decode().strip().splitlines()[-1]
    assert last.endswith("; wrote e.npy, e.csv, e.manifest.json, fr, f.csv"), last
    proc = run_matpac(["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().strip().splitlines()[-1].endswith("; wrote rows to stdout"), proc.stderr
    assert proc.stdout.decode().startswith("path,head,label")


def test_a_csv_beside_an_npy_is_named_as_its_row_index(tmp_path, tiny):
    """`tag --out e.csv` beside `e.npy`: not 'exists', but whose index it is and what --force would do."""
    _clips(tmp_path / "clips")
    assert run_matpac(["embed", "clips", "--out", "e.npy", "--model", str(tiny), "-q"], cwd=tmp_path).returncode == 0
    before = (tmp_path / "e.csv").read_bytes()
    line = _one_error(
        run_matpac(
            ["tag", "clips", "--model", str(tiny), "--head", str(openmic_probe(tmp_path)), "--out", "e.csv"],
            cwd=tmp_path,
        )
    )
    assert "e.csv is the row index of e.npy" in line and "--force would replace it" in line, line
    assert (tmp_path / "e.csv").read_bytes() == before


def test_a_link_named_on_the_command_line_is_said_as_the_folder_walk_says_it(tmp_path, tiny):
    """A broken link or a loop given by name: the same reason as inside a folder, and alone it is
    refused before the model loads, as a missing path is."""
    _clips(tmp_path / "clips")
    (tmp_path / "broken.wav").symlink_to(tmp_path / "gone.wav")
    (tmp_path / "self.wav").symlink_to(tmp_path / "self.wav")
    line = _one_error(run_matpac(["embed", "broken.wav", "--out", "e.npy", "--model", "no-such.pt"], cwd=tmp_path))
    assert line == "matpac: error: broken.wav: broken symlink (its target does not exist)", line
    proc = run_matpac(["embed", "clips", "self.wav", "gone.wav", "--out", "e.npy", "--model", str(tiny)], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "matpac: skipped self.wav: symlink loop" in err and "matpac: skipped gone.wav: does not exist" in err, err
