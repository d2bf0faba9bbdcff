"""The README's commands, run as written (with the loopback server standing in for the internet)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import reference as R
import torch
from conftest import REPO, cli, read_wave, write_audio
from probes import (
    GENERAL,
    MUSIC,
    RELEASE_AS,
    RELEASE_GENERAL,
    RELEASE_PROBES,
    entry_name,
    probe_tensors,
    serve_music_model,
    serve_probes,
    torch_bytes,
    zip_bytes,
)


def _readme_block(marker: str) -> str:
    """The shell lines of the README example that follows `marker` (continuations joined)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(marker) :]
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
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        capture_output=True,
        env={**__import__("os").environ, "HOME": str(tmp_path), "PATH": env_path},
    )
    assert proc.returncode == 0, proc.stderr.decode()

    # expected: each file's top mtg_genre label, from the reference arithmetic, counted
    sd = R.make_checkpoint(width=128, depth=2, n_t=608, seed=1)
    labels = (REPO / "weights" / "labels" / "mtg_genre.txt").read_text().split()
    w = probes[(MUSIC, "mtg_genre")]
    top = []
    for path in sorted(music.rglob("*.flac")):
        emb = R.reference_embedding(sd, *read_wave(path))
        scores = R.reference_probe_scores(
            emb, w["probe.weight"].double().numpy(), w["probe.bias"].double().numpy(), "sigmoid"
        )
        top.append(labels[int(np.argmax(scores))].rsplit("---", 1)[-1].replace("_", " "))  # the plain name
    got = Counter()
    for line in proc.stdout.decode().splitlines():
        count, label = re.match(r"\s*(\d+) (.+)$", line).groups()
        got[label] = int(count)
    assert got == Counter(top)


def _fenced_block(marker: str, lang: str) -> str:
    """The first fenced `lang` block after `marker` in README.md, verbatim (fences excluded)."""
    text = (REPO / "README.md").read_text()
    fence = f"```{lang}\n"
    start = text.index(fence, text.index(marker)) + len(fence)
    return text[start : text.index("```", start)]


def test_python_api_example_runs_as_written(hub, tmp_path, monkeypatch, capsys):
    """The README's Python block, executed verbatim: it loads the default model from the (fake) Hub,
    embeds an array read with soundfile, then runs `embed` over ./clips."""
    # Full depth (12 layers) so the example's layers=(6, 12) exist; narrow (64 wide) so it is quick.
    sd = R.make_checkpoint(width=64, depth=12, n_t=608, seed=3)
    dim = 5 * 64
    hub.add_hub_file("auriankelen/matpac_general_audio", "model.safetensors", _safetensors(sd))
    clips = tmp_path / "clips"
    write_audio(clips / "a.wav", 7.0, sr=44100, channels=2, seed=1)  # stereo, resampled, 2 chunks
    write_audio(clips / "sub" / "b.flac", 3.0, seed=2)  # mono 16 kHz, 1 chunk
    monkeypatch.chdir(tmp_path)
    _cpu(monkeypatch)

    code = _fenced_block("## Python API", "python")
    assert 'Predictor.load("matpac-plus"' in code and "sf.read(" in code
    assert "from matpac_cli import " in code and "from matpac_cli." not in code  # the public API only
    ns: dict = {"__name__": "__main__"}
    exec(compile(code, "README.md (Python API)", "exec"), ns)

    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"({dim},) (2, {dim})"
    assert printed[1] == "2 files embedded"
    assert hub.count("GET", "model.safetensors") == 1  # the default model came from the Hub

    wave, sr = read_wave(clips / "a.wav")
    assert np.allclose(ns["vec"], R.reference_embedding(sd, wave, sr), atol=1e-4)
    assert np.allclose(ns["layers"][0], R.reference_embedding(sd, wave, sr, layer=6), atol=1e-4)
    assert np.allclose(ns["layers"][1], ns["vec"], atol=1e-6)

    X = np.load(tmp_path / "emb.npy")
    index = (tmp_path / "emb.csv").read_text().splitlines()
    assert X.shape == (2, dim) and index[0].startswith("row,path,")
    paths = [line.split(",")[1] for line in index[1:]]
    assert [Path(p).name for p in paths] == ["a.wav", "b.flac"]
    assert np.allclose(X[0], ns["vec"], atol=1e-5)
    assert np.allclose(X[1], R.reference_embedding(sd, *read_wave(clips / "sub" / "b.flac")), atol=1e-4)


# ------------------------------------------------------------------ the other README blocks, line by line

# Not run: the install lines (they need PyPI), `python -m pytest` (this suite), the benchmark
# (a full-size ViT-B) and the citation.


def _bash_lines(marker: str) -> list[str]:
    """The command lines of the fenced bash block after `marker` (comment-only lines dropped)."""
    block = _fenced_block(marker, "bash")
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """One README line in bash, as a user's shell runs it (the venv's `matpac` first on PATH)."""
    env = {**os.environ, "HOME": str(cwd), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"], cwd=cwd, env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, f"{command}\n{proc.stderr.decode()}"
    return proc


def _matpac(capsys, line: str) -> str:
    """A README line that is a single `matpac` command, run in-process with exactly its words
    (one torch import for the whole test instead of one per line); returns its stdout."""
    words = shlex.split(line, comments=True)
    assert words[0] == "matpac", line
    rc, out, err = cli(capsys, *words[1:])
    assert rc == 0, f"{line}\n{err}"
    return out


def _cpu(monkeypatch) -> None:
    """`--device auto` stays on the CPU (fp32), so numbers compare with the reference everywhere."""
    import matpac_cli.inference.predictor as predictor

    monkeypatch.setattr(predictor, "pick_device", lambda name="auto": "cpu")


def _safetensors(sd: dict) -> bytes:
    from safetensors.torch import save as st_save

    return st_save({k: v.contiguous() for k, v in sd.items()})


def test_embeddings_examples_work_as_written(hub, tmp_path, monkeypatch, capsys):
    """Every line of the Embeddings block, each on its own (outputs removed in between), and the
    numpy/pandas snippet on the first line's output. One checkpoint stands behind every model name."""
    sd = R.make_checkpoint(width=64, depth=12, n_t=608, seed=3)  # 12 layers for --layer all
    dim = 5 * 64
    hub.add_hub_file("auriankelen/matpac_general_audio", "model.safetensors", _safetensors(sd))  # default
    hub.add_release_file("Initial_release/matpac_10_2048.pt", torch_bytes(sd))  # --model matpac
    hub.add_hub_file("auriankelen/matpac_music", "model.safetensors", _safetensors(sd))  # hf:...@main
    torch.save(sd, tmp_path / "my_checkpoint.pt")
    write_audio(tmp_path / "clips" / "x.wav", 3.0, seed=1)
    write_audio(tmp_path / "clips" / "sub" / "y.flac", 7.0, sr=44100, channels=2, seed=2)
    write_audio(tmp_path / "a.wav", 2.0, seed=3)
    write_audio(tmp_path / "b.flac", 1.5, sr=22050, seed=4)

    lines = _bash_lines("## Embeddings")
    assert len(lines) == 6 and all(ln.startswith("matpac embed ") for ln in lines)
    monkeypatch.chdir(tmp_path)
    _cpu(monkeypatch)
    results = {}
    for line in lines:
        shutil.rmtree(tmp_path / "frames", ignore_errors=True)
        for old in tmp_path.glob("emb.*"):
            old.unlink()
        _matpac(capsys, line)
        results[line] = np.load(tmp_path / "emb.npy")
        assert (tmp_path / "emb.csv").exists() and (tmp_path / "emb.manifest.json").exists()
        if "--frames" in line:
            assert sorted(
                p.relative_to(tmp_path / "frames").as_posix() for p in (tmp_path / "frames").rglob("*.npy")
            ) == ["clips/sub/y.flac.npy", "clips/x.wav.npy"]
        if line == lines[0]:  # the section's Python snippet reads what the first line wrote
            index_rows = (tmp_path / "emb.csv").read_text().splitlines()[1:]
            snippet = _fenced_block("## Embeddings", "python")
            ns: dict = {}
            exec(compile(snippet, "README.md (Embeddings)", "exec"), ns)
            assert ns["X"].shape == (2, dim) and list(ns["index"].path) == [r.split(",")[1] for r in index_rows]

    clips = [results[ln] for ln in lines if "./clips" in ln]
    assert len(clips) == 5
    for got in clips:  # one checkpoint behind every name: the same numbers
        assert got.shape == (2, dim)
        assert np.allclose(got, clips[0], atol=1e-5)
    y = read_wave(tmp_path / "clips" / "sub" / "y.flac")
    assert np.allclose(clips[0][0], R.reference_embedding(sd, *y), atol=1e-4)  # sorted: sub/y.flac first
    layered = results[next(ln for ln in lines if "--layer all" in ln)]
    assert layered.shape == (2, 12, dim)


def _serve_probe_zip(hub, heads: dict[str, tuple[str, ...]]) -> None:
    """A probe zip (nested layout) with random heads of the right class counts."""
    from matpac_cli.checkpoints.registry import load_registry

    registry = load_registry()
    entries = {}
    for fi, (folder, tasks) in enumerate(heads.items()):
        for ti, task in enumerate(tasks):
            classes = len(registry.head(task).labels())
            entries[entry_name("nested", folder, task)] = torch_bytes(probe_tensors(classes, seed=100 * fi + ti))
    hub.add_release_file(RELEASE_PROBES, zip_bytes(entries))


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_tags_and_scripting_examples_work_as_written(hub, ckpts, tmp_path, monkeypatch, capsys):
    """Every line of the Tags block, then the two Scripting lines the histogram test leaves out."""
    serve_music_model(hub, ckpts)  # matpac-plus-music, the default for tag
    hub.add_release_file(RELEASE_GENERAL, ckpts["tiny608"].read_bytes())  # matpac-plus
    hub.add_release_file(RELEASE_AS, ckpts["tiny992_as"].read_bytes())  # matpac-plus-audioset (events)
    _serve_probe_zip(hub, {MUSIC: ("mtg_genre", "mtg_mood", "mtg_instrument"), GENERAL: ("fsd50k", "esc50")})
    for i in range(2):
        write_audio(tmp_path / "music" / f"m{i}.flac", 2.0 + i, sr=44100, channels=2, seed=i)
        write_audio(tmp_path / "fx" / f"f{i}.wav", 1.5 + i, seed=10 + i)
        write_audio(tmp_path / "mix" / f"x{i}.wav", 2.5, seed=20 + i)
    write_audio(tmp_path / "song.flac", 13.0, seed=5)  # three 608-frame segments, the last one short

    lines = _bash_lines("## Tags")
    assert len(lines) == 8
    monkeypatch.chdir(tmp_path)
    out = {line.split("#")[0].strip(): _matpac(capsys, line) for line in lines}

    rows = _csv(out["matpac tag ./music"])
    assert Counter(r["head"] for r in rows) == {"mtg_genre": 10, "mtg_mood": 10, "mtg_instrument": 10}
    all_scores = _csv((tmp_path / "tags.csv").read_text())
    assert out["matpac tag ./music --out tags.csv --top-k 0"] == ""
    assert Counter(r["head"] for r in all_scores) == {"mtg_genre": 2 * 87, "mtg_mood": 2 * 56, "mtg_instrument": 2 * 40}
    thresholded = _csv(out["matpac tag ./music --head genre --threshold 0.3"])
    assert thresholded and all(r["head"] == "mtg_genre" for r in thresholded)
    assert all(float(r["score"]) >= 0.3 if r["rank"] != "0" else r["score"] == r["label"] == "" for r in thresholded)
    jsonl = [json.loads(ln) for ln in out["matpac tag ./fx --head sounds --head esc50 --format jsonl"].splitlines()]
    assert Counter(r["head"] for r in jsonl) == {"fsd50k": 10, "esc50": 10}
    events = _csv(out["matpac tag ./fx --head events"])
    assert Counter(r["head"] for r in events) == {"audioset": 10}
    segments = _csv(out["matpac tag song.flac --head genre --segments"])
    # one row set per 608-frame chunk: 6.08 s apart, 6.095 s long; the 0.835 s tail joins the one before
    times = sorted({(float(r["start_s"]), float(r["end_s"])) for r in segments if r["start_s"]})
    assert times == [(0.0, 6.095), (6.08, 12.995)]
    mixed = _csv(out["matpac tag ./mix --head genre --head matpac-plus:esc50"])
    assert Counter(r["head"] for r in mixed) == {"mtg_genre": 10, "esc50": 10}
    assert len(out["matpac models labels genre"].split()) >= 87

    jq_line = next(ln for ln in _bash_lines("## Scripting") if "| jq " in ln and "mtg_mood" in ln)
    moods = _sh(jq_line, tmp_path).stdout.decode().splitlines()
    expected = sum(1 for r in all_scores if r["head"] == "mtg_mood" and float(r["score"]) >= 0.5)
    assert len(moods) == expected and all(ln.startswith("./music/m") and "\t" in ln for ln in moods)

    playlist_line = next(ln for ln in _bash_lines("## Scripting") if "playlist" in ln)
    (tmp_path / "playlist.txt").write_text("music/m1.flac\nfx/f0.wav\n")
    _sh(playlist_line, tmp_path)
    assert np.load(tmp_path / "playlist.npy").shape == (2, 5 * 128)
