"""Resume from the library, whatever the spelling of the inputs; outputs rebuilt from it, never read
as embeddings; clear refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from conftest import run_matpac, write_audio


def _clips(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_audio(root / "clips" / f"c{i}.wav", 1.0 + i, seed=i)
    return root / "clips"


def _counts(folder: Path, name: str = "emb.manifest.json") -> dict:
    return json.loads((folder / name).read_text())["counts"]


def test_clips_dot_clips_and_absolute_clips_share_results(tmp_path, tiny):
    clips = _clips(tmp_path)
    base = ["--out", "emb.npy", "--model", str(tiny), "-q"]
    assert run_matpac(["embed", "clips", *base], cwd=tmp_path).returncode == 0
    for spelling in ("./clips", str(clips)):
        proc = run_matpac(["embed", spelling, *base], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert _counts(tmp_path) == {"computed": 0, "reused": 3, "failed": 0}, spelling
        rows = [r["path"] for r in csv.DictReader(open(tmp_path / "emb.csv"))]
        assert rows[0].startswith(spelling)  # rows still name the files as this run named them


def test_a_finished_output_keeps_nothing_beside_it_and_a_new_file_is_the_only_one_encoded(tmp_path, tiny):
    _clips(tmp_path)
    args = ["embed", "clips", "--out", "emb.npy", "--model", str(tiny), "-q", "--layer", "all"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    first = np.load(tmp_path / "emb.npy")
    assert not list(tmp_path.glob("emb.npy.*"))  # no journal, no lock, no temporary
    write_audio(tmp_path / "clips" / "c9.wav", 1.5, seed=9)  # one new file: the rest come from the library
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    assert _counts(tmp_path) == {"computed": 1, "reused": 3, "failed": 0}
    second = np.load(tmp_path / "emb.npy")
    np.testing.assert_array_equal(second[:3], first)
    assert second.shape[0] == 4


def test_a_replaced_matrix_is_never_read_as_embeddings(tmp_path, tiny):
    _clips(tmp_path)
    args = ["embed", "clips", "--out", "emb.npy", "--model", str(tiny), "-q"]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    good = np.load(tmp_path / "emb.npy")
    # someone swaps another matrix of the same shape in: the output is rebuilt from the library
    np.save(tmp_path / "other.npy", np.zeros_like(good))
    shutil.move(tmp_path / "other.npy", tmp_path / "emb.npy")
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    assert _counts(tmp_path) == {"computed": 0, "reused": 3, "failed": 0}
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), good, atol=1e-6)


def test_changed_settings_are_named_in_the_refusal(tmp_path, tiny):
    _clips(tmp_path, 1)
    base = ["embed", "clips", "--out", "emb.npy", "--model", str(tiny), "-q"]
    assert run_matpac(base, cwd=tmp_path).returncode == 0
    proc = run_matpac(base + ["--layer", "1"], cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "--layer" in err and "--force" in err and len(err.strip().splitlines()) == 1, err


def test_a_cut_wav_is_embedded_with_a_warning_and_marked_truncated(tmp_path, tiny):
    write_audio(tmp_path / "full.wav", 3.0, sr=44100, channels=2, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:20000])
    proc = run_matpac(["embed", "cut.wav", "full.wav", "--out", "emb.npy", "--model", str(tiny)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    warning = [ln for ln in err.splitlines() if "cut.wav" in ln]
    assert len(warning) == 1 and "132300" in warning[0] and "4989" in warning[0], err
    assert "full.wav" not in err.replace("wrote", "")
    rows = list(csv.DictReader(open(tmp_path / "emb.csv")))
    assert [(r["path"], r["truncated"]) for r in rows] == [("cut.wav", "1"), ("full.wav", "0")]
    assert json.loads((tmp_path / "emb.manifest.json").read_text())["truncated"] == ["cut.wav"]
