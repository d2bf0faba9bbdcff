"""The acceptance check of `matpac embed` at full size: a random ViT-B (768 wide, 12 blocks,
3840-d output) in the release layout, run through the real command, against the independent
slow reference of the spec (tests/reference.py), max abs difference <= 1e-4.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_matpac, write_audio
from reference import make_checkpoint, reference_embedding

pytestmark = pytest.mark.slow  # a ViT-B through the reference: minutes on a CPU

CASES = {  # name: (seconds or samples, sample rate, channels)
    "mono16k_3s.wav": (3.0, 16000, 1),
    "exact608frames.wav": (97_520, 16000, 1),
    "stereo44k_14s.flac": (14.0, 44100, 2),
    "stereo48k_6.5s.wav": (6.5, 48000, 2),
    "short22k_50ms.wav": (0.05, 22050, 1),
}


@pytest.fixture(scope="module")
def vitb(tmp_path_factory):
    d = tmp_path_factory.mktemp("vitb")
    sd = make_checkpoint(width=768, depth=12, n_t=608, seed=11)
    path = d / "matpac_full.pt"
    torch.save(sd, path)
    return sd, path


def test_full_size_embeddings_match_the_reference(tmp_path, vitb):
    sd, path = vitb
    for i, (name, (length, sr, ch)) in enumerate(CASES.items()):
        seconds = length / sr if isinstance(length, int) else length
        write_audio(tmp_path / "clips" / name, seconds, sr=sr, channels=ch, seed=i)
    proc = run_matpac(["embed", "clips", "--out", "emb.npy", "--model", str(path), "--batch-size", "4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (len(CASES), 3840) and emb.dtype == np.float32
    rows = list(csv.DictReader(open(tmp_path / "emb.csv")))
    assert [r["path"] for r in rows] == sorted(f"clips/{n}" for n in CASES)
    worst = 0.0
    for row in rows:
        wave, sr = sf.read(tmp_path / row["path"], dtype="float32")
        ref = reference_embedding(sd, wave, sr)
        diff = float(np.abs(ref - emb[int(row["row"])]).max())
        worst = max(worst, diff)
        assert diff <= 1e-4, (row["path"], diff)
    print(f"full-size max |matpac - reference| = {worst:.2e}")
