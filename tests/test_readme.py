"""The README's commands, run as written (with the loopback server standing in for the internet)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

import reference as R
from conftest import REPO, write_audio
from test_heads import MUSIC, read_wave, serve_music_model, serve_probes


def _readme_block(marker: str) -> str:
    """The shell lines of the README example that follows `marker` (continuations joined)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(marker):]
    lines = [ln for ln in block.split("\n")[1:] if not ln.startswith("#")]
    out = []
    for line in lines:
        out.append(line)
        if not line.endswith("\\"):
            break
    return "\n".join(out)


def test_scripting_genre_histogram_works_as_written(hub, ckpts, tmp_path):
    music = tmp_path / "Music"
    for i in range(4):
        write_audio(music / f"album{i % 2}" / f"t{i}.flac", 2.0 + i, sr=44100, channels=2, seed=i)
    write_audio(music / "not_flac.wav", 1.0, seed=9)  # `find -name '*.flac'` leaves it out
    serve_music_model(hub, ckpts)
    probes = serve_probes(hub, "nested")
    command = _readme_block("# a genre histogram of a library")
    assert command.startswith("find ~/Music -name '*.flac' -print0 | matpac tag - --null --out -")
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True,
                          env={**__import__("os").environ, "HOME": str(tmp_path), "PATH": env_path})
    assert proc.returncode == 0, proc.stderr.decode()

    # expected: each file's top mtg_genre label, from the reference arithmetic, counted
    sd = R.make_checkpoint(width=128, depth=2, n_t=608, seed=1)
    labels = (REPO / "weights" / "labels" / "mtg_genre.txt").read_text().split()
    w = probes[(MUSIC, "mtg_genre")]
    top = []
    for path in sorted(music.rglob("*.flac")):
        emb = R.reference_embedding(sd, *read_wave(path))
        scores = R.reference_probe_scores(emb, w["probe.weight"].double().numpy(),
                                          w["probe.bias"].double().numpy(), "sigmoid")
        top.append(labels[int(np.argmax(scores))])
    got = Counter()
    for line in proc.stdout.decode().splitlines():
        count, label = re.match(r"\s*(\d+) (\S+)$", line).groups()
        got[label] = int(count)
    assert got == Counter(top)
