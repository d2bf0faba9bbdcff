"""`matpac search`: exact cosine neighbours over the memory-mapped index, audio queries embedded
with the index's own model, and near-duplicate pairs.

Numbers are checked against a plain float64 numpy cosine over the whole matrix, never against
the blocked code under test. The library is one tiny checkpoint and tones of distinct pitches,
with planted copies: the same tone re-encoded (44.1 kHz stereo FLAC) and the same bytes under
another name.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import cli, run_matpac

from matpac_cli.cli import main
from matpac_cli.jobs.similarity import exact_duplicates as duplicates
from matpac_cli.jobs.similarity import nearest

PITCHES = (200, 300, 450, 675, 1000, 1500, 2250, 3400)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 cosine of every row of `a` with every row of `b` (a zero row: 0, by convention)."""

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.where(n > 0, n, 1.0)

    return unit(a) @ unit(b).T


def tone(f: float, seconds: float = 2.5, sr: int = 16000) -> np.ndarray:
    """A tone with two harmonics, all under 7 kHz (a resampler's round trip keeps it whole)."""
    t = np.arange(int(seconds * sr)) / sr
    return sum(0.3 / h * np.sin(2 * np.pi * f * h * t) for h in (1, 2, 3) if f * h < 7000).astype(np.float32)


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def lib(tmp_path_factory, ckpts):
    """lib/: distinct tones, `copy450.flac` (tone450 re-encoded at 44.1 kHz, stereo) and
    `dup/tone1000.wav` (the same bytes as tone1000.wav); embedded once into emb.npy."""
    root = tmp_path_factory.mktemp("search")
    lib = root / "lib"
    (lib / "dup").mkdir(parents=True)
    for f in PITCHES:
        sf.write(lib / f"tone{f}.wav", tone(f), 16000)
    y = torchaudio.functional.resample(torch.from_numpy(tone(450)), 16000, 44100).numpy()
    sf.write(lib / "copy450.flac", np.stack([y, 0.999 * y], axis=1), 44100)
    shutil.copy(lib / "tone1000.wav", lib / "dup" / "tone1000.wav")
    (root / "outside").mkdir()
    shutil.copy(lib / "tone675.wav", root / "outside" / "query675.wav")  # not in the index
    model = shutil.copy(ckpts["tiny608"], root / "tiny608.pt")
    code = main(["embed", str(lib), "--out", str(root / "emb.npy"), "--model", str(model), "--quiet"])
    assert code == 0
    paths = [r["path"] for r in csv.DictReader(open(root / "emb.csv"))]
    return {
        "root": root,
        "lib": lib,
        "npy": root / "emb.npy",
        "paths": paths,
        "X": np.load(root / "emb.npy"),
        "model": model,
    }


# ------------------------------------------------------------------ the numerics, in blocks


def test_nearest_in_blocks_equals_a_numpy_cosine(tmp_path):
    """Blocks of 37 rows over a memory map give numpy's full cosine ranking: rows and scores,
    the excluded row left out, a zero row scoring 0, ties in row order."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 48)).astype(np.float32)
    X[7] = 0.0
    X[41] = X[40]  # an exact tie
    np.save(tmp_path / "m.npy", X)
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    Q = np.concatenate([X[[3, 40]], rng.standard_normal((3, 48)).astype(np.float32)])
    exclude = [3, None, None, None, None]
    got = nearest(mm, Q, 12, exclude, rows_per_block=37)
    want = cosine(Q, X)
    want[0, 3] = -np.inf
    for q, (r, s) in enumerate(got):
        order = np.lexsort((np.arange(len(X)), -want[q]))[:12]
        assert r.tolist() == order.tolist()
        np.testing.assert_allclose(s, want[q, order], atol=2e-6)
    assert 3 not in got[0][0] and got[1][0][:2].tolist() == [40, 41]
    every = nearest(mm, Q[:1], 0, [3], rows_per_block=64)[0]  # 0: every row but the excluded one
    assert len(every[0]) == 499 and every[1][every[0] == 7] == 0.0


def test_duplicates_in_blocks_equal_numpy_pairs(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 32)).astype(np.float32)
    for a, b in [(0, 299), (5, 6), (100, 250), (140, 141)]:  # near copies, across and within blocks
        X[b] = X[a] + 0.01 * rng.standard_normal(32).astype(np.float32)
    np.save(tmp_path / "m.npy", X)
    got = list(duplicates(np.load(tmp_path / "m.npy", mmap_mode="r"), 0.98, rows_per_block=23))
    sim = cosine(X, X)
    want = [(i, j) for i in range(len(X)) for j in range(i + 1, len(X)) if sim[i, j] >= 0.98]
    assert [(a, b) for a, b, _ in got] == want == [(0, 299), (5, 6), (100, 250), (140, 141)]
    np.testing.assert_allclose([s for _, _, s in got], [sim[i, j] for i, j in want], atol=2e-6)


# ------------------------------------------------------------------ the command


def test_reencoded_copy_is_the_top_neighbour(lib, capsys):
    """A path of the index as query: its re-encoded copy first, every score the numpy cosine of
    the two rows, the query itself left out (kept with --include-self, at 1.0)."""
    paths, X = lib["paths"], lib["X"]
    query = str(lib["lib"] / "tone450.wav")
    code, out, err = cli(capsys, "search", query, "--index", str(lib["npy"]), "--top-k", "4")
    assert code == 0, err
    got = rows(out)
    assert [r["rank"] for r in got] == ["1", "2", "3", "4"]
    assert got[0]["path"].endswith("copy450.flac") and float(got[0]["score"]) > 0.999
    assert all(r["query"] == query and not r["path"].endswith("/tone450.wav") for r in got)
    me = paths.index(query)
    sim = cosine(X[me], X)
    sim[me] = -np.inf
    assert [r["path"] for r in got] == [paths[i] for i in np.argsort(-sim, kind="stable")[:4]]
    np.testing.assert_allclose([float(r["score"]) for r in got], np.sort(sim)[::-1][:4], atol=1e-5)
    assert float(rows(out)[1]["score"]) < 0.95  # the other tones are not near
    code, out, _ = cli(capsys, "search", query, "--index", str(lib["npy"]), "-k", "3", "--include-self")
    kept = {r["path"]: float(r["score"]) for r in rows(out)[:2]}  # itself and its copy, both at 1.0
    assert set(kept) == {query, got[0]["path"]} and kept[query] == pytest.approx(1.0, abs=1e-5)


def test_audio_query_embedded_with_the_index_model(lib, capsys):
    """Files outside the index are embedded with the manifest's model: an exact copy of an indexed
    file scores 1.0 against that file's row, and the re-encoded copy's neighbour is the original."""
    X, paths = lib["X"], lib["paths"]
    outside = lib["root"] / "outside"
    y = torchaudio.functional.resample(torch.from_numpy(tone(1500)), 16000, 22050).numpy()
    sf.write(outside / "q1500.flac", np.stack([y, y], axis=1), 22050)
    again = f"{outside}/./query675.wav"  # the same file named twice: embedded once, answered twice
    code, out, err = cli(
        capsys, "search", str(outside), again, "--index", str(lib["npy"]), "-k", "2", "--format", "jsonl"
    )
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    top = {r["query"]: r for r in got if r["rank"] == 1}
    assert set(top) == {str(outside / "q1500.flac"), str(outside / "query675.wav"), again}
    assert top[again]["path"] == top[str(outside / "query675.wav")]["path"]
    assert top[str(outside / "query675.wav")]["path"] == str(lib["lib"] / "tone675.wav")
    assert top[str(outside / "query675.wav")]["score"] == pytest.approx(1.0, abs=1e-5)
    assert top[str(outside / "q1500.flac")]["path"] == str(lib["lib"] / "tone1500.wav")
    own = X[paths.index(str(lib["lib"] / "tone675.wav"))]
    second = [r for r in got if r["query"].endswith("query675.wav") and r["rank"] == 2][0]
    assert second["score"] == pytest.approx(float(cosine(own, X[paths.index(second["path"])])), abs=1e-5)
    assert "3 embedded" in err


def test_duplicates_finds_the_planted_copies_only(lib, capsys):
    code, out, err = cli(capsys, "search", "--index", str(lib["npy"]), "--duplicates", "--threshold", "0.98")
    assert code == 0, err
    got = rows(out)
    pairs = {frozenset(Path(p).relative_to(lib["lib"]).as_posix() for p in (r["path_a"], r["path_b"])) for r in got}
    assert pairs == {frozenset({"tone450.wav", "copy450.flac"}), frozenset({"tone1000.wav", "dup/tone1000.wav"})}
    assert len(got) == 2  # each pair once
    X, paths = lib["X"], lib["paths"]
    for r in got:
        assert float(r["score"]) == pytest.approx(
            float(cosine(X[paths.index(r["path_a"])], X[paths.index(r["path_b"])])), abs=1e-5
        )
    assert "2 pair(s)" in err


def test_threshold_keeps_only_close_neighbours(lib, capsys):
    code, out, _ = cli(
        capsys, "search", str(lib["lib"] / "tone450.wav"), "--index", str(lib["npy"]), "--threshold", "0.98"
    )
    assert code == 0 and [r["path"] for r in rows(out)] == [str(lib["lib"] / "copy450.flac")]


def test_layer_of_an_all_layers_index(lib, tmp_path, capsys):
    """An `--layer all` index is searched on the layer asked for, and an audio query is embedded
    at that layer (it scores 1.0 against its own row there). The index is made without the
    library, which would otherwise hand the query tone675's stored layer instead of encoding it."""
    npy = tmp_path / "all.npy"
    args = ["embed", str(lib["lib"]), "--out", str(npy), "--model", str(lib["model"]), "--layer", "all"]
    assert main([*args, "-q", "--no-library"]) == 0
    X1 = np.load(npy)[:, 0, :]
    query = lib["root"] / "outside" / "query675.wav"
    code, out, err = cli(capsys, "search", str(query), "--index", str(npy), "--layer", "1", "-k", "3")
    assert code == 0, err
    got = rows(out)
    sim = cosine(X1[lib["paths"].index(str(lib["lib"] / "tone675.wav"))], X1)
    assert got[0]["path"].endswith("tone675.wav") and float(got[0]["score"]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose([float(r["score"]) for r in got], np.sort(sim)[::-1][:3], atol=1e-5)
    code, _, err = cli(capsys, "search", str(query), "--index", str(npy), "--layer", "7")
    assert code == 2 and "holds layers 1..2" in err


# ------------------------------------------------------------------ refusals, in one line


def test_unknown_query_fails_alone(lib, capsys):
    code, out, err = cli(
        capsys, "search", "nowhere.wav", str(lib["lib"] / "tone200.wav"), "--index", str(lib["npy"]), "-k", "1"
    )
    assert code == 1
    assert "nowhere.wav: not a path in" in err and len(rows(out)) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duplicates", "x.wav"], "give no QUERY"),
        ([], "give at least one QUERY"),
        (["x.wav", "--top-k", "-1"], "--top-k -1"),
        (["x.wav", "--threshold", "1.5"], "between -1 and 1"),
        (["x.wav", "--out", "n.txt"], "is not supported"),
    ],
)
def test_bad_options_are_one_line(lib, capsys, args, message):
    code, _, err = cli(capsys, "search", "--index", str(lib["npy"]), *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_index_and_model_problems_are_one_line(lib, tmp_path, capsys):
    query = str(lib["root"] / "outside" / "query675.wav")
    (tmp_path / "emb.parquet").write_bytes(b"PAR1")  # not a Parquet file, only its magic bytes
    code, _, err = cli(capsys, "search", query, "--index", str(tmp_path / "emb.parquet"))
    assert code == 2 and "emb.parquet: not a readable Parquet file" in err and err.count("\n") == 1
    other = tmp_path / "other.pt"
    other.write_bytes(lib["model"].read_bytes() + b"\0")
    code, _, err = cli(capsys, "search", query, "--index", str(lib["npy"]), "--model", str(other))
    assert code == 2 and "sha256" in err and "tiny608.pt" in err and err.count("\n") == 1
    for name in ("emb.npy", "emb.csv"):  # an index whose manifest is gone: path queries still work
        shutil.copy(lib["root"] / name, tmp_path / name)
    code, _, err = cli(capsys, "search", query, "--index", str(tmp_path / "emb.npy"))
    assert code == 2 and "give it with --model" in err
    code, out, _ = cli(capsys, "search", lib["paths"][0], "--index", str(tmp_path / "emb.npy"), "-k", "1")
    assert code == 0 and len(rows(out)) == 1
    (tmp_path / "taken.csv").write_text("mine\n")
    code, _, err = cli(
        capsys, "search", lib["paths"][0], "--index", str(lib["npy"]), "--out", str(tmp_path / "taken.csv")
    )
    assert code == 2 and "use --force" in err and (tmp_path / "taken.csv").read_text() == "mine\n"


def test_search_subprocess_end_to_end(lib, tmp_path):
    """The real `matpac` program: an audio query and a path query, to a JSON Lines file."""
    out = tmp_path / "near.jsonl"
    query = str(lib["root"] / "outside" / "query675.wav")
    proc = run_matpac(["search", query, lib["paths"][0], "--index", str(lib["npy"]), "-k", "3", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr.decode()
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["query"], r["rank"]) for r in got] == [(query, k) for k in (1, 2, 3)] + [
        (lib["paths"][0], k) for k in (1, 2, 3)
    ]
    assert got[0]["path"].endswith("tone675.wav")
    assert proc.stdout == b"" and b"2 queries: 2 searched (1 embedded, 1 found in the index), 0 failed" in proc.stderr


def test_readme_examples_work_as_written(hub, ckpts, tmp_path, monkeypatch, capsys):
    """Every line of README's "Find similar tracks" block, in-process with its exact words, the
    default model (matpac-plus) served from the loopback release host."""
    import shlex

    from conftest import REPO
    from probes import RELEASE_GENERAL

    hub.add_release_file(RELEASE_GENERAL, ckpts["tiny608"].read_bytes())
    music = _mkdir(tmp_path / "music")
    for f in PITCHES[:4]:
        sf.write(music / f"t{f}.wav", tone(f), 16000)
    sf.write(tmp_path / "music" / "song.flac", tone(1500), 16000)
    y = torchaudio.functional.resample(torch.from_numpy(tone(1500)), 16000, 48000).numpy()
    sf.write(tmp_path / "music" / "song_48k.wav", np.stack([y, y], axis=1), 48000)  # a planted re-encode
    shutil.copy(tmp_path / "music" / "t300.wav", tmp_path / "new.wav")
    sf.write(_mkdir(tmp_path / "inbox") / "x.wav", tone(2250), 16000)
    text = (REPO / "README.md").read_text()
    start = text.index("```bash\n", text.index("## Find similar tracks")) + len("```bash\n")
    lines = [ln for ln in text[start : text.index("```", start)].splitlines() if ln.strip()]
    assert len(lines) == 4
    monkeypatch.chdir(tmp_path)
    out = []
    for line in lines:
        code, stdout, err = cli(capsys, *shlex.split(line, comments=True)[1:])
        assert code == 0, f"{line}\n{err}"
        out.append(stdout)
    near = rows(out[1])
    assert len(near) == 5 and near[0]["path"] == "./music/song_48k.wav"  # 6 files, the query left out
    found = [json.loads(x) for x in out[2].splitlines()]
    assert [(r["query"], r["rank"]) for r in found] == [("new.wav", k) for k in (1, 2, 3)] + [
        ("./inbox/x.wav", k) for k in (1, 2, 3)
    ]
    assert found[0]["path"] == "./music/t300.wav" and found[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [(r["path_a"], r["path_b"]) for r in rows((tmp_path / "dups.csv").read_text())] == [
        ("./music/song.flac", "./music/song_48k.wav")
    ]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_path_queries_load_no_torch(lib):
    """Queries already in the index need no model: the command answers without importing torch
    (0.5 s instead of 2.5 s of start-up)."""
    import subprocess
    import sys

    code = (
        "import sys; from matpac_cli.cli import main; "
        f"rc = main(['search', {lib['paths'][0]!r}, '--index', {str(lib['npy'])!r}, '-k', '2', '-q']); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(rows(proc.stdout.decode())) == 2
