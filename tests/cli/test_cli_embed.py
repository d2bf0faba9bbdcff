"""`matpac embed` end to end: the real command in a subprocess on a generated folder, a tiny
(width 128, depth 2) checkpoint, and the slow reference for the numbers.

Tree (cwd = the test's tmp dir, input named `clips`):
    clips/b.wav                 1.0 s mono 16 kHz
    clips/a/c.wav               1.5 s stereo 44.1 kHz
    clips/a/deeper/d.flac       0.8 s mono 16 kHz
    clips/.x.wav                hidden: skipped
    clips/.cache/e.wav          hidden folder: skipped
    clips/notes.txt             not audio: ignored
Sorted as discovered: clips/a/c.wav, clips/a/deeper/d.flac, clips/b.wav (os.walk gives b.wav first).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli, run_matpac, write_audio
from reference import make_checkpoint, reference_embedding, reference_frames

NAMES = ["clips/a/c.wav", "clips/a/deeper/d.flac", "clips/b.wav"]
FACTS = {  # duration_s, sample_rate, channels as the CSV writes them
    "clips/a/c.wav": ("1.500", "44100", "2"),
    "clips/a/deeper/d.flac": ("0.800", "16000", "1"),
    "clips/b.wav": ("1.000", "16000", "1"),
}
E = 640  # 5 frequency rows x width 128
ATOL = 1e-3  # float32 production vs float64 reference; embeddings are O(1) after LayerNorm


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    clips = root / "clips"
    write_audio(clips / "b.wav", 1.0, seed=0)
    write_audio(clips / "a" / "c.wav", 1.5, sr=44100, channels=2, seed=1)
    write_audio(clips / "a" / "deeper" / "d.flac", 0.8, seed=2)
    write_audio(clips / ".x.wav", 1.0, seed=3)
    write_audio(clips / ".cache" / "e.wav", 1.0, seed=4)
    (clips / "notes.txt").write_text("not audio\n")
    return clips


@pytest.fixture()
def work(tmp_path, source_tree) -> Path:
    """A private copy of the tree: each test writes its own outputs and may add files."""
    shutil.copytree(source_tree, tmp_path / "clips")
    return tmp_path


@pytest.fixture(scope="module")
def expected(source_tree, sd608) -> dict[str, dict[str, np.ndarray]]:
    """Reference clip embeddings (last layer and layer 1) and frames, per discovered name."""
    out = {}
    for name in NAMES:
        wave, sr = sf.read(source_tree.parent / name, dtype="float32")
        out[name] = {
            "last": reference_embedding(sd608, wave, sr),
            "layer1": reference_embedding(sd608, wave, sr, layer=1),
            "frames": reference_frames(sd608, wave, sr),
        }
    return out


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def matpac(monkeypatch, capsys):
    """`matpac ARGS` in this process through the CLI entry point `main(argv)` (torch is already
    imported, so a run costs a fraction of a subprocess); cwd is the test's folder."""

    def run(work: Path, *args: str) -> Result:
        monkeypatch.chdir(work)
        return Result(*cli(capsys, *args))

    return run


def embed_args(ckpt: Path, *extra: str, inputs: tuple[str, ...] = ("clips",)) -> list[str]:
    return ["embed", *inputs, "--out", "emb.npy", "--model", str(ckpt), "--device", "cpu", *extra]


def read_index(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def ok(r) -> str:
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == 0, err
    return err


# ---------------------------------------------------------------------------------------- outputs


def test_embed_folder_writes_matrix_index_and_manifest(work, ckpts, expected):
    """The real command in a subprocess, as a shell runs it."""
    err = ok(run_matpac(embed_args(ckpts["tiny608"]), cwd=work))
    assert "embedded 3 file(s)" in err

    emb = np.load(work / "emb.npy")
    assert emb.shape == (3, E) and emb.dtype == np.float32

    with open(work / "emb.csv", newline="") as fh:
        assert fh.readline().strip() == "row,path,duration_s,sample_rate,channels,truncated"
    rows = read_index(work / "emb.csv")
    assert [r["path"] for r in rows] == NAMES
    assert [int(r["row"]) for r in rows] == [0, 1, 2]
    for r in rows:
        assert (r["duration_s"], r["sample_rate"], r["channels"]) == FACTS[r["path"]]
    for i, name in enumerate(NAMES):  # row i is the file the index names, by the reference
        np.testing.assert_allclose(emb[i], expected[name]["last"], atol=ATOL, err_msg=name)

    m = json.loads((work / "emb.manifest.json").read_text())
    assert m["models"][0]["sha256"] == hashlib.sha256(ckpts["tiny608"].read_bytes()).hexdigest()
    assert m["models"][0]["geometry"]["width"] == 128 and m["models"][0]["geometry"]["depth"] == 2
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["python"]
    assert m["counts"] == {"computed": 3, "reused": 0, "failed": 0}
    import matpac_cli

    assert m["matpac_version"] == matpac_cli.__version__


def test_layer_all_gives_every_layer(matpac, work, ckpts, expected):
    ok(matpac(work, *embed_args(ckpts["tiny608"], "--layer", "all")))
    emb = np.load(work / "emb.npy")
    assert emb.shape == (3, 2, E) and emb.dtype == np.float32
    for i, name in enumerate(NAMES):
        np.testing.assert_allclose(emb[i, 0], expected[name]["layer1"], atol=ATOL, err_msg=name)
        np.testing.assert_allclose(emb[i, 1], expected[name]["last"], atol=ATOL, err_msg=name)


def test_frames_mirror_the_input_tree(matpac, work, ckpts, expected):
    ok(matpac(work, *embed_args(ckpts["tiny608"], "--frames", "fr")))
    written = sorted(p.relative_to(work / "fr").as_posix() for p in (work / "fr").rglob("*") if p.is_file())
    assert written == [".matpac-frames"] + [n + ".npy" for n in NAMES]  # and the record of what matpac wrote
    emb = np.load(work / "emb.npy")
    for i, name in enumerate(NAMES):
        frames = np.load(work / "fr" / (name + ".npy"))
        ref = expected[name]["frames"]
        assert frames.dtype == np.float32 and frames.shape == ref.shape  # one 640-d vector per 160 ms
        np.testing.assert_allclose(frames, ref, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(frames.mean(axis=0), emb[i], atol=1e-5)


def test_ext_filter_and_paths_as_named(matpac, work, ckpts):
    absolute = str(work / "clips")
    ok(matpac(work, *embed_args(ckpts["tiny608"], "--ext", "wav", inputs=(absolute,))))
    rows = read_index(work / "emb.csv")
    assert [r["path"] for r in rows] == [f"{absolute}/a/c.wav", f"{absolute}/b.wav"]
    assert np.load(work / "emb.npy").shape == (2, E)


def test_broken_input_is_skipped_exit_1_and_listed(matpac, work, ckpts):
    (work / "clips" / "a" / "broken.wav").write_bytes(b"RIFF\0\0\0\0garbage")
    r = matpac(work, *embed_args(ckpts["tiny608"], "--failures", "failed.csv"))
    assert r.returncode == 1
    assert "clips/a/broken.wav" in r.stderr
    assert [row["path"] for row in read_index(work / "emb.csv")] == NAMES
    assert [row["path"] for row in read_index(work / "failed.csv")] == ["clips/a/broken.wav"]


# ---------------------------------------------------------------------------------------- resume, overwrite


def test_rerun_reuses_and_new_file_is_the_only_one_computed(matpac, work, ckpts):
    ok(matpac(work, *embed_args(ckpts["tiny608"])))
    first = (work / "emb.npy").read_bytes(), (work / "emb.manifest.json").read_bytes()
    first_rows = dict(zip(NAMES, np.load(work / "emb.npy")))

    err = ok(matpac(work, *embed_args(ckpts["tiny608"])))
    assert "3 reused" in err
    # nothing new: the output is left as it was, its manifest (the first run's counts) too
    assert ((work / "emb.npy").read_bytes(), (work / "emb.manifest.json").read_bytes()) == first

    write_audio(work / "clips" / "a" / "aa.wav", 0.7, seed=7)  # sorts first
    err = ok(matpac(work, *embed_args(ckpts["tiny608"])))
    assert "embedded 4 file(s)" in err and "3 reused" in err
    assert json.loads((work / "emb.manifest.json").read_text())["counts"] == {"computed": 1, "reused": 3, "failed": 0}
    paths = [r["path"] for r in read_index(work / "emb.csv")]
    assert paths == ["clips/a/aa.wav", *NAMES]
    emb = np.load(work / "emb.npy")
    assert emb.shape == (4, E)
    for i, name in enumerate(paths[1:], start=1):
        np.testing.assert_array_equal(emb[i], first_rows[name])


def test_foreign_npy_is_refused_then_replaced_with_force(matpac, work, ckpts):
    np.save(work / "emb.npy", np.arange(5.0))
    before = (work / "emb.npy").read_bytes()
    r = matpac(work, *embed_args(ckpts["tiny608"]))
    assert r.returncode == 2
    assert "--force" in r.stderr
    assert (work / "emb.npy").read_bytes() == before
    assert not (work / "emb.csv").exists()

    ok(matpac(work, *embed_args(ckpts["tiny608"], "--force")))
    assert np.load(work / "emb.npy").shape == (3, E)


def test_output_of_another_model_is_refused(matpac, work, ckpts, tmp_path):
    ok(matpac(work, *embed_args(ckpts["tiny608"])))
    before = (work / "emb.npy").read_bytes()
    other = tmp_path / "other.pt"
    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=5), other)
    r = matpac(work, *embed_args(other))
    assert r.returncode == 2 and "--force" in r.stderr
    assert (work / "emb.npy").read_bytes() == before


def test_unrelated_csv_next_to_out_is_not_overwritten_silently(matpac, work, ckpts):
    (work / "emb.csv").write_text("id,label\n1,mine\n")
    r = matpac(work, *embed_args(ckpts["tiny608"]))
    assert r.returncode == 2 or (work / "emb.csv").read_text() == "id,label\n1,mine\n"


# ---------------------------------------------------------------------------------------- other commands


def test_models_list_shows_registry_models_and_heads():
    from matpac_cli.checkpoints.registry import load_registry

    r = run_matpac(["models", "list"], env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    reg = load_registry()
    for name, m in reg.models.items():
        assert name in out
        if m.hub:
            assert m.hub in out
    for name in reg.heads:
        assert name in out
    assert "unconfirmed" in out and "sigmoid" in out and "softmax" in out


def test_help_is_instant_without_torch():
    code = (
        "import sys; from matpac_cli.cli import main; "
        "assert 'torch' not in sys.modules, 'import'; "
        "rc = [main([*a, '--help']) for a in ([], ['embed'], ['tag'], ['models'])]; "
        "assert rc == [0, 0, 0, 0], rc; "
        "assert 'torch' not in sys.modules, 'help'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert "--out" in r.stdout.decode() and "--layer" in r.stdout.decode()


def test_python_m_matpac_cli_help():
    r = run_matpac(["--help"])
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "Usage" in out and all(cmd in out for cmd in ("embed", "tag", "models"))


@pytest.mark.parametrize(
    "args, says",
    [
        ([], "Usage"),
        (["embed", "clips"], "--out"),
        (["embed", "clips", "--out", "e.npy", "--bogus"], "--bogus"),
        (["embed", "clips", "--out", "e.npy", "--batch-size", "many"], "--batch-size"),
    ],
)
def test_usage_errors_are_a_message_and_exit_2(tmp_path, args, says):
    r = run_matpac(args, cwd=tmp_path)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode in ((0, 2) if not args else (2,)), out
    assert says in out
    assert "Traceback" not in out


def test_the_same_file_named_twice_gives_one_row(tmp_path, monkeypatch):
    from matpac_cli.pipeline.discovery import discover

    write_audio(tmp_path / "d" / "a.wav", 0.5)
    monkeypatch.chdir(tmp_path)
    items = discover(["d/a.wav", "./d/a.wav", "d"])
    assert [i.name for i in items] == ["d/a.wav"]  # the first naming wins
