"""`matpac tag` as a user runs it: defaults, --top-k, --threshold, output formats and files,
--segments, and heads that need two encoders.

Expected scores come from tests/reference.py; weights are served by the loopback FakeServer (or
are local files). Shared helpers live in probes.py and conftest.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import reference as R
import torch
from conftest import cli, load_sd, read_terminal, read_wave, run_matpac, write_audio
from probes import (
    DEFAULT_HEADS,
    GENERAL,
    MUSIC,
    RELEASE_AS,
    RELEASE_GENERAL,
    SPEC_HEADS,
    TAG_COLUMNS,
    TOL,
    assert_scores,
    by_file_head,
    expected_probe,
    parse_csv,
    probe_tensors,
    serve_music_model,
    serve_probes,
    tag_labels,
)


@pytest.fixture()
def music_release(hub, ckpts) -> dict:
    """matpac-plus-music (tiny608) and the probe zip on the loopback release server."""
    serve_music_model(hub, ckpts)
    return serve_probes(hub, "nested")


@pytest.fixture()
def openmic(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """A local ./openmic.pth probe in the working directory."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    sd = probe_tensors(20, seed=21)
    torch.save(sd, d / "openmic.pth")
    return d, sd


def expected_default(ref608: dict, probes: dict) -> dict[tuple[str, str], np.ndarray]:
    return {
        (f, h): expected_probe(emb, probes[(MUSIC, h)], SPEC_HEADS[h][1])
        for f, emb in ref608.items()
        for h in DEFAULT_HEADS
    }


def assert_top(rows: list[dict], labels: list[str], expected: np.ndarray, k: int) -> None:
    """Rows are the k best labels of the reference scores, best first, ranks 1..k."""
    assert len(rows) == k
    order = np.argsort(-expected, kind="stable")[:k]
    assert [r["label"] for r in rows] == [labels[i] for i in order]
    assert_scores(rows, labels, expected, all_labels=False)


# ------------------------------------------------------------------------------------ defaults, stdout


def test_default_run_prints_only_csv_top5_on_stdout(music_release, music_dir, ref608):
    """A shell user's `matpac tag DIR > tags.csv`: stdout is exactly the CSV, top 5 per head."""
    proc = run_matpac(["tag", str(music_dir), "--device", "cpu"], timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert reader.fieldnames == TAG_COLUMNS
    assert len(text.splitlines()) == len(rows) + 1  # nothing but header and rows
    expected = expected_default(ref608, music_release)
    groups = by_file_head(rows)
    assert set(groups) == set(expected)
    for key, group in groups.items():
        assert_top(group, tag_labels(SPEC_HEADS[key[1]][2]), expected[key], 5)
    assert "tagged 2 file(s)" in proc.stderr.decode()


def test_top_k_3(music_release, music_dir, ref608, capsys):
    rc, out, err = cli(capsys, "tag", music_dir, "--top-k", "3", "--device", "cpu")
    assert rc == 0, err
    expected = expected_default(ref608, music_release)
    groups = by_file_head(parse_csv(out))
    assert set(groups) == set(expected)
    for key, group in groups.items():
        assert_top(group, tag_labels(SPEC_HEADS[key[1]][2]), expected[key], 3)


def test_threshold_keeps_labels_at_or_above(music_release, music_dir, ref608, capsys):
    rc, out, err = cli(capsys, "tag", music_dir, "--threshold", "0.5", "--device", "cpu")
    assert rc == 0, err
    expected = expected_default(ref608, music_release)
    groups = by_file_head(parse_csv(out))
    kept = dropped = 0
    for key, exp in expected.items():
        labels = tag_labels(SPEC_HEADS[key[1]][2])
        rows = groups.get(key, [])
        got = {r["label"] for r in rows}
        assert all(float(r["score"]) >= 0.5 for r in rows)
        sure_in = {labels[i] for i in np.flatnonzero(exp >= 0.5 + TOL)}
        sure_out = {labels[i] for i in np.flatnonzero(exp < 0.5 - TOL)}
        assert sure_in <= got and not (got & sure_out)
        if rows:
            assert_scores(rows, labels, exp, all_labels=False)
        kept, dropped = kept + len(sure_in), dropped + len(sure_out)
    assert kept > 15 and dropped > 15  # the test data has labels on both sides of 0.5

    # with --top-k as well: at most k, still all above the threshold
    rc, out, err = cli(capsys, "tag", music_dir, "--threshold", "0.5", "--top-k", "2", "--device", "cpu")
    assert rc == 0, err
    for key, rows in by_file_head(parse_csv(out)).items():
        exp = expected[key]
        assert len(rows) == min(2, int((exp >= 0.5).sum()))
        assert all(float(r["score"]) >= 0.5 for r in rows)
        assert_top(rows, tag_labels(SPEC_HEADS[key[1]][2]), exp, len(rows))


def test_same_head_twice_is_refused(music_release, music_dir, capsys):
    rc, out, err = cli(capsys, "tag", music_dir, "--head", "genre", "--head", "mtg_genre", "--device", "cpu")
    assert rc == 2
    assert "mtg_genre" in err
    assert out == ""


# ------------------------------------------------------------------------------------ formats and files


def test_jsonl_format(music_release, music_dir, ref608, capsys):
    rc, out, err = cli(capsys, "tag", music_dir, "--format", "jsonl", "--top-k", "2", "--device", "cpu")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(set(r) == set(TAG_COLUMNS) for r in rows)
    assert all(isinstance(r["score"], float) and isinstance(r["rank"], int) for r in rows)
    expected = expected_default(ref608, music_release)
    groups = by_file_head(rows)
    assert set(groups) == set(expected)
    for key, group in groups.items():
        assert_top(group, tag_labels(SPEC_HEADS[key[1]][2]), expected[key], 2)


def test_out_file_csv(music_release, music_dir, ref608, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "tag", music_dir, "--out", "tags.csv", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    assert out == ""  # rows go to the file only
    with open(tmp_path / "tags.csv", newline="", encoding="utf-8") as fh:
        rows = parse_csv(fh.read())
    assert len(rows) == 2 * (87 + 56 + 40)
    expected = expected_default(ref608, music_release)
    for key, group in by_file_head(rows).items():
        assert_scores(group, tag_labels(SPEC_HEADS[key[1]][2]), expected[key])
    manifest = json.loads((tmp_path / "tags.csv.manifest.json").read_text())
    assert manifest  # a provenance record next to the output
    assert "tags.csv" in err

    # the same command with another --top-k reuses the scores and rewrites the file
    rc, out, err = cli(capsys, "tag", music_dir, "--out", "tags.csv", "--top-k", "1", "--device", "cpu")
    assert rc == 0, err
    assert "reused" in err
    with open(tmp_path / "tags.csv", newline="", encoding="utf-8") as fh:
        groups = by_file_head(parse_csv(fh.read()))
    assert set(groups) == set(expected)
    for key, group in groups.items():
        assert_top(group, tag_labels(SPEC_HEADS[key[1]][2]), expected[key], 1)


def test_out_file_reads_with_pandas(music_release, music_dir, ref608, tmp_path, monkeypatch, capsys):
    pd = pytest.importorskip("pandas")
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "tag", music_dir, "--out", "tags.csv", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    df = pd.read_csv(tmp_path / "tags.csv")
    assert list(df.columns) == TAG_COLUMNS
    assert len(df) == 2 * (87 + 56 + 40)
    assert df["score"].dtype.kind == "f" and df["rank"].dtype.kind == "i"
    expected = expected_default(ref608, music_release)
    for row in df.itertuples():
        key = (Path(row.path).name, row.head)
        labels = tag_labels(SPEC_HEADS[row.head][2])
        assert abs(row.score - expected[key][labels.index(row.label)]) <= TOL


# ------------------------------------------------------------------------------------ segments


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    return write_audio(tmp_path_factory.mktemp("long") / "long.wav", 14.0, seed=3)


def chunk_embeddings(sd: dict, path: Path) -> list[np.ndarray]:
    """Reference embedding of each encoder chunk alone (mean of its time columns)."""
    out = []
    for chunk in R.reference_chunks(sd, *read_wave(path)):
        n_cols = chunk.shape[1] // R.PATCH
        cols = R.tokens_to_columns(R.encode_chunk(sd, chunk), n_cols).numpy()
        out.append(cols.mean(axis=0))
    return out


def test_segments_rows_per_encoder_chunk(ckpts, long_file, openmic, capsys):
    _, probe = openmic
    sd = load_sd(ckpts["tiny608"])
    rc, out, err = cli(
        capsys,
        "tag",
        long_file,
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--segments",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    reader = csv.DictReader(io.StringIO(out))
    rows = list(reader)
    assert reader.fieldnames == TAG_COLUMNS + ["start_s", "end_s"]
    labels = tag_labels("openmic.txt")
    clip = [r for r in rows if r["start_s"] == "" and r["end_s"] == ""]
    assert_scores(clip, labels, expected_probe(R.reference_embedding(sd, *read_wave(long_file)), probe, "sigmoid"))

    seg_rows: dict[tuple[float, float], list[dict]] = {}
    for r in rows:
        if r["start_s"] != "":
            seg_rows.setdefault((float(r["start_s"]), float(r["end_s"])), []).append(r)
    spans = sorted(seg_rows)
    # 14 s = 1398 frames: chunks of 608 frames start at 0, 6.08, 12.16 s; the last ends at 14 s
    assert len(spans) == 3
    for (start, end), (want_start, want_end) in zip(spans, [(0.0, 6.08), (6.08, 12.16), (12.16, 14.0)]):
        assert abs(start - want_start) <= 0.021 and abs(end - want_end) <= 0.021
    for span, emb in zip(spans, chunk_embeddings(sd, long_file)):
        assert len(seg_rows[span]) == 20
        assert_scores(seg_rows[span], labels, expected_probe(emb, probe, "sigmoid"))

    # the same in JSON Lines: clip rows carry null times
    rc, out, err = cli(
        capsys,
        "tag",
        long_file,
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--segments",
        "--format",
        "jsonl",
        "--top-k",
        "1",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["start_s"], r["end_s"]) for r in rows][0] == (None, None)
    times = [(r["start_s"], r["end_s"]) for r in rows[1:]]
    assert len(times) == 3 and all(abs(a - b[0]) <= 0.021 for a, b in zip([t[0] for t in times], spans))


# ------------------------------------------------------------------------------------ two encoders


@pytest.fixture()
def encoder_spy(monkeypatch) -> dict:
    """Counts model loads and the encoder chunks each loaded model runs."""
    from matpac_cli.inference.predictor import Predictor

    seen: dict = {"loads": [], "chunks": {}}
    orig_load, orig_launch = Predictor.load.__func__, Predictor.launch

    def load(cls, model, *args, **kwargs):
        seen["loads"].append(str(getattr(model, "name", model)))  # a local file comes resolved
        return orig_load(cls, model, *args, **kwargs)

    def launch(self, chunks, layers, **kwargs):
        name = str(self.resolved.name)
        seen["chunks"][name] = seen["chunks"].get(name, 0) + len(chunks)
        return orig_launch(self, chunks, layers, **kwargs)

    monkeypatch.setattr(Predictor, "load", classmethod(load))
    monkeypatch.setattr(Predictor, "launch", launch)
    return seen


def n_chunks(sd: dict, folder: Path) -> int:
    return sum(
        len(R.reference_chunks(sd, *read_wave(p))) for p in sorted(folder.rglob("*")) if p.suffix in (".wav", ".flac")
    )


def test_model_head_qualifier_runs_two_encoders_once(ckpts, music_dir, ref608, openmic, encoder_spy, capsys):
    """`--model tiny.pt --head ./openmic.pth --head tiny992_as.pt:events`."""
    _, probe = openmic
    sd_as = load_sd(ckpts["tiny992_as"])
    as_model = str(ckpts["tiny992_as"])
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir,
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--head",
        f"{as_model}:events",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert "2 encoders" in err and "once" in err
    assert sorted(encoder_spy["loads"]) == sorted([str(ckpts["tiny608"]), as_model])
    # every file went through each encoder exactly once: chunk counts of a single pass
    assert encoder_spy["chunks"] == {
        str(ckpts["tiny608"]): n_chunks(load_sd(ckpts["tiny608"]), music_dir),
        as_model: n_chunks(sd_as, music_dir),
    }
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {(f, h) for f in ("a.wav", "b.flac") for h in ("openmic", "audioset")}
    for p in (music_dir / "a.wav", music_dir / "sub" / "b.flac"):
        assert_scores(
            groups[(p.name, "openmic")], tag_labels("openmic.txt"), expected_probe(ref608[p.name], probe, "sigmoid")
        )
        assert_scores(
            groups[(p.name, "audioset")], tag_labels("audioset.txt"), R.reference_audioset_scores(sd_as, *read_wave(p))
        )


@pytest.mark.parametrize("events", ["events", "matpac-plus-audioset:audioset"])
def test_genre_and_events_use_two_registry_encoders(hub, ckpts, music_dir, ref608, encoder_spy, capsys, events):
    """Default model + `--head genre --head events`: the AudioSet head comes from its own checkpoint."""
    serve_music_model(hub, ckpts)
    probes = serve_probes(hub)
    hub.add_release_file(RELEASE_AS, ckpts["tiny992_as"].read_bytes())
    sd_as = load_sd(ckpts["tiny992_as"])
    rc, out, err = cli(capsys, "tag", music_dir, "--head", "genre", "--head", events, "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    assert "2 encoders" in err and "matpac-plus-music" in err and "matpac-plus-audioset" in err
    assert sorted(encoder_spy["loads"]) == ["matpac-plus-audioset", "matpac-plus-music"]
    assert encoder_spy["chunks"] == {
        "matpac-plus-music": n_chunks(load_sd(ckpts["tiny608"]), music_dir),
        "matpac-plus-audioset": n_chunks(sd_as, music_dir),
    }
    assert hub.count("GET", "matpac_plus_music_6s_2048_enconly.pt") == 1
    assert hub.count("GET", "matpac_plus_as_48_1_map_enc_and_head.pt") == 1
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {(f, h) for f in ("a.wav", "b.flac") for h in ("mtg_genre", "audioset")}
    for p in (music_dir / "a.wav", music_dir / "sub" / "b.flac"):
        assert_scores(
            groups[(p.name, "mtg_genre")],
            tag_labels("mtg_genre.txt"),
            expected_probe(ref608[p.name], probes[(MUSIC, "mtg_genre")], "sigmoid"),
        )
        assert_scores(
            groups[(p.name, "audioset")], tag_labels("audioset.txt"), R.reference_audioset_scores(sd_as, *read_wave(p))
        )


def test_events_alone_needs_only_the_audioset_model(hub, ckpts, music_dir, encoder_spy, capsys):
    hub.add_release_file(RELEASE_AS, ckpts["tiny992_as"].read_bytes())
    sd_as = load_sd(ckpts["tiny992_as"])
    rc, out, err = cli(capsys, "tag", music_dir / "a.wav", "--head", "events", "--top-k", "3", "--device", "cpu")
    assert rc == 0, err
    assert "encoders" not in err
    assert encoder_spy["loads"] == ["matpac-plus-audioset"]
    assert hub.count(contains="music") == 0 and hub.count(contains="Probes") == 0
    rows = by_file_head(parse_csv(out))[("a.wav", "audioset")]
    assert_top(rows, tag_labels("audioset.txt"), R.reference_audioset_scores(sd_as, *read_wave(music_dir / "a.wav")), 3)


def test_hf_model_qualifier_with_revision(hub, ckpts, music_dir, ref608, openmic, encoder_spy, capsys):
    """`--head hf:OWNER/REPO@REV:audioset`: the last colon separates the head from the model."""
    _, probe = openmic
    hub.add_hub_file("acme/as-port", "model.pt", ckpts["tiny992_as"].read_bytes(), revision="v1")
    sd_as = load_sd(ckpts["tiny992_as"])
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--head",
        "hf:acme/as-port@v1:audioset",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert "2 encoders" in err
    assert sorted(encoder_spy["loads"]) == sorted([str(ckpts["tiny608"]), "hf:acme/as-port@v1"])
    groups = by_file_head(parse_csv(out))
    assert_scores(
        groups[("a.wav", "openmic")], tag_labels("openmic.txt"), expected_probe(ref608["a.wav"], probe, "sigmoid")
    )
    assert_scores(
        groups[("a.wav", "audioset")],
        tag_labels("audioset.txt"),
        R.reference_audioset_scores(sd_as, *read_wave(music_dir / "a.wav")),
    )


def reference_audioset_chunk_scores(sd: dict, path: Path) -> list[np.ndarray]:
    """AudioSet head on each 992-frame chunk alone: mean of its tokens, BatchNorm eval, linear, sigmoid."""
    out = []
    rm, rv = sd["head_norm.running_mean"].double(), sd["head_norm.running_var"].double()
    w, b = sd["head.weight"].double(), sd["head.bias"].double()
    for chunk in R.reference_chunks(sd, *read_wave(path)):
        pooled = R.encode_chunk(sd, chunk).mean(dim=0)  # mean over frequency rows and columns
        out.append(R._sigmoid_np((((pooled - rm) / torch.sqrt(rv + R.BN_EPS)) @ w.T + b).numpy()))
    return out


@pytest.mark.parametrize("first", ["openmic", "audioset"])
def test_segments_with_two_encoders_use_each_encoders_chunks(ckpts, long_file, openmic, capsys, first):
    """608-frame and 992-frame encoders cut a 14 s file differently: 3 and 2 segments.

    (Regression: only the first encoder's chunk times were kept: wrong times, or an IndexError.)
    """
    _, probe = openmic
    sd, sd_as = load_sd(ckpts["tiny608"]), load_sd(ckpts["tiny992_as"])
    heads = ["./openmic.pth", f"{ckpts['tiny992_as']}:audioset"]
    if first == "audioset":
        heads.reverse()
    rc, out, err = cli(
        capsys,
        "tag",
        long_file,
        "--model",
        ckpts["tiny608"],
        "--head",
        heads[0],
        "--head",
        heads[1],
        "--segments",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    spans: dict[str, dict[tuple[float, float], list[dict]]] = {"openmic": {}, "audioset": {}}
    for r in parse_csv(out):
        if r["start_s"] != "":
            spans[r["head"]].setdefault((float(r["start_s"]), float(r["end_s"])), []).append(r)
    want = {"openmic": [(0.0, 6.08), (6.08, 12.16), (12.16, 14.0)], "audioset": [(0.0, 9.92), (9.92, 14.0)]}
    expected = {
        "openmic": [expected_probe(e, probe, "sigmoid") for e in chunk_embeddings(sd, long_file)],
        "audioset": reference_audioset_chunk_scores(sd_as, long_file),
    }
    labels = {"openmic": tag_labels("openmic.txt"), "audioset": tag_labels("audioset.txt")}
    for head in ("openmic", "audioset"):
        got = sorted(spans[head])
        assert len(got) == len(want[head]), (head, got)
        for (start, end), (ws, we) in zip(got, want[head]):
            assert abs(start - ws) <= 0.021 and abs(end - we) <= 0.021, (head, got)
        for span, exp in zip(got, expected[head]):
            assert_scores(spans[head][span], labels[head], exp)


def test_threshold_applies_to_softmax_heads_too(hub, ckpts, music_dir, ref608, capsys):
    """`--head genre --head esc50 --threshold T`: esc50 (softmax) keeps exactly its labels with
    probability >= T, as genre (sigmoid) does, not its top 5 nor all 50.

    (Regression: the threshold was silently ignored on softmax heads, which gave their top 5.)
    """
    hub.add_release_file(RELEASE_GENERAL, ckpts["tiny608"].read_bytes())
    probes = serve_probes(hub, "nested")
    exp = expected_probe(ref608["a.wav"], probes[(GENERAL, "esc50")], "softmax")
    best = np.sort(exp)[::-1]
    t = float(best[1] + best[2]) / 2  # two esc50 labels above it
    assert best[1] - t > 10 * TOL and t - best[2] > 10 * TOL
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        "matpac-plus",
        "--head",
        "genre",
        "--head",
        "esc50",
        "--threshold",
        f"{t:.6f}",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    genre = groups[("a.wav", "mtg_genre")]
    exp_genre = expected_probe(ref608["a.wav"], probes[(GENERAL, "mtg_genre")], "sigmoid")
    assert len(genre) == int((exp_genre >= t).sum()) and all(float(r["score"]) >= t for r in genre)
    esc = groups[("a.wav", "esc50")]
    assert len(esc) == 2
    assert_top(esc, tag_labels("esc50.txt"), exp, 2)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_threshold_outside_0_1_is_refused_before_the_model_loads(hub, music_dir, value):
    proc = run_matpac(["tag", str(music_dir), "--threshold", value, "--device", "cpu"], timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("matpac: error: --threshold") and "between 0 and 1" in err and len(err.splitlines()) == 1
    assert proc.stdout == b""
    assert hub.count() == 0


def test_rows_to_a_file_while_the_progress_bar_is_on_a_terminal(ckpts, tmp_path):
    """`matpac tag music > tags.csv` typed in a terminal: the bar is on stderr (a terminal), and
    every row goes to stdout, the file; the bar's console once took them and showed them on the
    terminal, leaving the file empty."""
    import os
    import subprocess
    import sys

    for i in range(3):
        write_audio(tmp_path / "music" / f"t{i}.wav", 2.0, seed=i)
    main, sub = os.openpty()
    with open(tmp_path / "tags.csv", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "matpac_cli", "tag", "music", "-m", str(ckpts["tiny992_as"]), "-H", "events"],
            cwd=tmp_path,
            stdout=out,
            stderr=sub,
        )
        os.close(sub)
        shown = read_terminal(main)
        assert proc.wait(timeout=300) == 0, shown.decode(errors="replace")[-2000:]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "tags.csv").read_text())))
    assert sorted({r["path"] for r in rows}) == [f"music/t{i}.wav" for i in range(3)] and len(rows) == 15
    assert b"music/t0.wav," not in shown
