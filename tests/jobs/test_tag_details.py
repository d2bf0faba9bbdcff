"""Smaller points of `matpac tag` a user reads (issue 20): truncated files, labels as outputs
name them, head names, short tail segments, the help text."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from conftest import cli, run_matpac, write_audio


@pytest.fixture()
def cut_and_full(tmp_path):
    write_audio(tmp_path / "full.wav", 3.0, sr=44100, channels=2, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:20000])
    return tmp_path


def _truncated_by_path(rows: list[dict]) -> dict[str, set]:
    out: dict[str, set] = {}
    for r in rows:
        out.setdefault(r["path"], set()).add(r["truncated"])
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "stdout"])
def test_a_cut_file_is_tagged_with_a_warning_a_column_and_the_manifest(cut_and_full, ckpts, fmt):
    d = cut_and_full
    out = ["--out", "-", "--manifest", "m.json"] if fmt == "stdout" else ["--out", f"tags.{fmt}"]
    proc = run_matpac(
        [
            "tag",
            "cut.wav",
            "full.wav",
            "--model",
            str(ckpts["tiny992_as"]),
            "--head",
            "events",
            "--top-k",
            "2",
            "--device",
            "cpu",
            *out,
        ],
        cwd=d,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    warning = [ln for ln in err.splitlines() if "cut.wav" in ln]
    assert len(warning) == 1 and "132300" in warning[0] and "4989" in warning[0] and "tagged" in warning[0], err
    assert "heads: audioset (events) on " in err  # the head column's name, and the alias asked for
    if fmt in ("csv", "stdout"):
        text = proc.stdout.decode() if fmt == "stdout" else (d / "tags.csv").read_text()
        rows = list(csv.DictReader(text.splitlines()))
        assert _truncated_by_path(rows) == {"cut.wav": {"1"}, "full.wav": {"0"}}
    elif fmt == "jsonl":
        rows = [json.loads(ln) for ln in (d / "tags.jsonl").read_text().splitlines()]
        assert _truncated_by_path(rows) == {"cut.wav": {True}, "full.wav": {False}}
    else:
        table = pq.read_table(d / "tags.parquet")
        assert str(table.schema.field("truncated").type) == "bool"
        assert _truncated_by_path(table.to_pylist()) == {"cut.wav": {True}, "full.wav": {False}}
    man = d / ("m.json" if fmt == "stdout" else f"tags.{fmt}.manifest.json")
    assert json.loads(man.read_text())["truncated"] == ["cut.wav"]


def test_tag_csv_writes_times_to_the_millisecond_and_flags_as_in_emb_csv(tmp_path):
    """A 3-hour file: 6 significant digits would write its times to 0.1 s (10800.1); CSV writes
    them with 3 decimals, as emb.csv writes durations, and `truncated` as 1/0, as emb.csv does.
    JSON Lines keeps the numbers and true/false as they are."""
    from matpac_cli.jobs.tag_rows import columns
    from matpac_cli.outputs.writers import RowWriter

    clip = {
        "path": "long.wav",
        "head": "mtg_genre",
        "label": "rock",
        "score": 0.5,
        "rank": 1,
        "tag_id": "genre---rock",
        "duration_s": 10800.123,
        "truncated": True,
        "start_s": None,
        "end_s": None,
    }
    seg = {**clip, "truncated": False, "start_s": 10795.5, "end_s": 10800.123}
    for fmt in ("csv", "jsonl"):
        with open(tmp_path / f"t.{fmt}", "w", newline="") as fh:
            writer = RowWriter(fh, fmt, columns(True))
            writer.write(clip)
            writer.write(seg)
    rows = list(csv.DictReader(open(tmp_path / "t.csv", newline="")))
    assert [(r["duration_s"], r["truncated"], r["start_s"], r["end_s"]) for r in rows] == [
        ("10800.123", "1", "", ""),
        ("10800.123", "0", "10795.500", "10800.123"),
    ]
    rows = [json.loads(ln) for ln in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(r["duration_s"], r["truncated"], r["start_s"]) for r in rows] == [
        (10800.123, True, None),
        (10800.123, False, 10795.5),
    ]


def test_a_resumed_run_still_marks_the_cut_file(cut_and_full, ckpts):
    d = cut_and_full
    args = [
        "tag",
        "cut.wav",
        "--model",
        str(ckpts["tiny992_as"]),
        "--head",
        "events",
        "--device",
        "cpu",
        "--out",
        "tags.csv",
        "-q",
    ]
    assert run_matpac(args, cwd=d).returncode == 0
    proc = run_matpac(args[:2] + ["full.wav"] + args[2:], cwd=d)  # cut.wav taken from the library
    assert proc.returncode == 0, proc.stderr
    assert b"cut short" not in proc.stderr  # said when it was read, not at each re-run
    rows = list(csv.DictReader(open(d / "tags.csv")))
    assert _truncated_by_path(rows) == {"cut.wav": {"1"}, "full.wav": {"0"}}
    man = json.loads((d / "tags.csv.manifest.json").read_text())
    assert man["truncated"] == ["cut.wav"] and man["counts"]["reused"] == 1


# ------------------------------------------------------------------ probes on a --model FILE


def test_offline_probe_on_an_unknown_model_file_says_what_to_do_before_it_loads(tmp_path, monkeypatch, capsys):
    """A damaged --model file is never read: the head's refusal comes first, with both ways out."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_audio(tmp_path / "a.wav", 1.0)
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint at all" * 100)
    rc, out, err = cli(
        capsys, "tag", tmp_path / "a.wav", "--model", tmp_path / "model.pt", "--head", "genre", "--device", "cpu"
    )
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matpac: error: "), err
    assert "mtg_genre" in err and "--head FILE" in err and "matpac models download" in err
    assert "damaged" not in err and "truncated" not in err  # the model was not loaded


def test_a_renamed_copy_of_a_downloaded_encoder_runs_its_probes_offline(hub, ckpts, tmp_path, monkeypatch, capsys):
    """The encoder file is known by its content (sha256 recorded at download), not its name."""
    from conftest import make_music_dir
    from probes import RELEASE_MUSIC, serve_music_model, serve_probes

    music = make_music_dir(tmp_path / "music")
    serve_music_model(hub, ckpts)
    serve_probes(hub)
    rc, online, err = cli(capsys, "tag", music, "--head", "genre", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    from matpac_cli.checkpoints.resolve import release_path

    copy = tmp_path / "my-encoder.pt"
    copy.write_bytes(release_path(RELEASE_MUSIC).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, offline, err = cli(capsys, "tag", music, "--model", copy, "--head", "genre", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    assert offline == online
    # the probe zip gone from the cache: said before the model loads, with both ways out
    from matpac_cli.checkpoints.registry import load_registry

    release_path(load_registry().probes_release).unlink()
    rc, out, err = cli(capsys, "tag", music, "--model", copy, "--head", "genre", "--device", "cpu")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "matpac models download probes" in err and "--head FILE" in err


# ------------------------------------------------------------------ labels as outputs name them


def test_models_labels_prints_what_tag_rows_say_and_raw_the_tag_ids(ckpts, tmp_path, capsys):
    """`models labels events` lines are the rows' `label`s, `--raw` their `tag_id`s (AudioSet:
    527 labels, 75 with commas; the rows are read with a CSV parser, not cut)."""
    write_audio(tmp_path / "a.wav", 1.0)
    rc, out, err = cli(
        capsys,
        "tag",
        tmp_path / "a.wav",
        "--model",
        ckpts["tiny992_as"],
        "--head",
        "events",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    rc, plain, _ = cli(capsys, "models", "labels", "events")
    rc2, raw, _ = cli(capsys, "models", "labels", "events", "--raw")
    assert rc == rc2 == 0
    assert sorted(plain.splitlines()) == sorted(r["label"] for r in rows)
    assert sorted(raw.splitlines()) == sorted(r["tag_id"] for r in rows)
    assert sum("," in ln for ln in plain.splitlines()) == 75


def test_one_display_rule_prefixes_dropped_and_underscores_as_spaces(capsys):
    rc, mood, _ = cli(capsys, "models", "labels", "mood")
    assert rc == 0 and mood.splitlines()[0] == "action"
    rc, raw, _ = cli(capsys, "models", "labels", "mood", "--raw")
    assert rc == 0 and raw.splitlines()[0] == "mood/theme---action"
    rc, sounds, _ = cli(capsys, "models", "labels", "sounds")
    assert "Acoustic guitar" in sounds.splitlines() and "_" not in sounds
    rc, esc, _ = cli(capsys, "models", "labels", "esc50")
    assert "crackling fire" in esc.splitlines() and "_" not in esc
    rc, raw, _ = cli(capsys, "models", "labels", "sounds", "--raw")
    assert "Acoustic_guitar" in raw.splitlines()


def _trained_head(path, classes):
    import numpy as np

    from matpac_cli.checkpoints.trained_head import TrainedHead, to_bytes

    d = 8
    path.write_bytes(
        to_bytes(
            TrainedHead(
                np.zeros((len(classes), d)),
                np.zeros(len(classes)),
                np.zeros(d),
                np.ones(d),
                classes,
                "single",
                {"name": "matpac-plus", "sha256": "0" * 64},
            )
        )
    )
    return path


def test_models_labels_reads_a_trained_head_and_a_probe_file(tmp_path, capsys):
    import torch

    classes = ["hip_hop", "genre---rock", "cat"]  # a user's own names: shown exactly, with or without --raw
    head = _trained_head(tmp_path / "mine.safetensors", classes)
    rc, out, err = cli(capsys, "models", "labels", head)
    assert rc == 0 and out.splitlines() == classes, err
    rc, out, err = cli(capsys, "models", "labels", head, "--raw")
    assert rc == 0 and out.splitlines() == classes, err
    torch.save({"weight": torch.zeros(20, 8), "bias": torch.zeros(20)}, tmp_path / "openmic.pth")
    rc, out, err = cli(capsys, "models", "labels", tmp_path / "openmic.pth")
    assert rc == 0 and "mallet percussion" in out.splitlines() and len(out.splitlines()) == 20, err
    torch.save({"weight": torch.zeros(3, 8), "bias": torch.zeros(3)}, tmp_path / "mystery.pth")
    for bad in ("mystery.pth", "missing.safetensors"):
        rc, out, err = cli(capsys, "models", "labels", tmp_path / bad)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith("matpac: error: ") and bad in err


def test_a_users_class_names_reach_the_rows_exactly_and_the_registrys_get_the_display_rule(tmp_path):
    """The rows' `label` comes from `Head.labels`: a trained head's classes and --labels names
    as given (`hip_hop`), a registry probe's dataset tags by `plain_labels` (`mallet percussion`)."""
    import torch

    from matpac_cli.inference.heads import load_probe, load_trained, spec_for_stem

    classes = ["hip_hop", "genre---rock", "cat"]
    trained = load_trained(_trained_head(tmp_path / "mine.safetensors", classes), 8)
    assert trained.labels == trained.tag_ids == classes
    torch.save({"weight": torch.zeros(3, 8), "bias": torch.zeros(3)}, tmp_path / "mystery.pth")
    assert load_probe(tmp_path / "mystery.pth", None, 8, list(classes)).labels == classes
    torch.save({"weight": torch.zeros(20, 8), "bias": torch.zeros(20)}, tmp_path / "openmic.pth")
    probe = load_probe(tmp_path / "openmic.pth", spec_for_stem("openmic"), 8)
    assert "mallet percussion" in probe.labels and "mallet_percussion" in probe.tag_ids


# ------------------------------------------------------------------ a short last segment


def _segments(rows: list[dict]) -> dict[tuple[float, float], list[dict]]:
    out: dict[tuple[float, float], list[dict]] = {}
    for r in rows:
        if r["start_s"] != "":
            out.setdefault((float(r["start_s"]), float(r["end_s"])), []).append(r)
    return out


def test_a_short_tail_joins_the_segment_before_it_scored_on_their_pooled_columns(ckpts, tmp_path, monkeypatch, capsys):
    """12.56 s at 608 frames: chunks at 0, 6.08 and 12.16 s, the last 0.4 s long. It joins the second:
    one segment 6.08..12.555 s (the end of its last frame) whose embedding is the mean over both chunks' columns (reference
    arithmetic), not a 0.4 s segment of its own; --min-segment 0 keeps it apart."""
    import reference as R
    import torch
    from conftest import load_sd, read_wave
    from probes import assert_scores, expected_probe, probe_tensors, tag_labels

    monkeypatch.chdir(tmp_path)
    song = write_audio(tmp_path / "song.wav", 12.56, seed=4)
    probe = probe_tensors(20, seed=7)
    torch.save(probe, tmp_path / "openmic.pth")
    base = [
        "tag",
        song,
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--segments",
        "--top-k",
        "0",
        "--device",
        "cpu",
    ]
    rc, out, err = cli(capsys, *base)
    assert rc == 0, err
    spans = _segments(list(csv.DictReader(out.splitlines())))
    assert sorted(spans) == [(0.0, 6.095), (6.08, 12.555)]

    sd = load_sd(ckpts["tiny608"])
    cols, sums = [], []
    for chunk in R.reference_chunks(sd, *read_wave(song)):
        n = chunk.shape[1] // R.PATCH
        c = R.tokens_to_columns(R.encode_chunk(sd, chunk), n).double().numpy()
        cols.append(n)
        sums.append(c.sum(axis=0))
    assert len(cols) == 3
    labels = tag_labels("openmic.txt")
    assert_scores(spans[(0.0, 6.095)], labels, expected_probe(sums[0] / cols[0], probe, "sigmoid"))
    merged = (sums[1] + sums[2]) / (cols[1] + cols[2])
    assert_scores(spans[(6.08, 12.555)], labels, expected_probe(merged, probe, "sigmoid"))

    rc, out, err = cli(capsys, *base, "--min-segment", "0")
    assert rc == 0, err
    spans = _segments(list(csv.DictReader(out.splitlines())))
    assert sorted(spans) == [(0.0, 6.095), (6.08, 12.175), (12.16, 12.555)]
    assert_scores(spans[(12.16, 12.555)], labels, expected_probe(sums[2] / cols[2], probe, "sigmoid"))


def test_a_file_of_one_short_segment_keeps_it_and_a_merged_pair_is_the_clip(ckpts, tmp_path, capsys):
    """Two 992-frame chunks, the second 0.5 s: merged, the segment is the whole file, so its scores
    are the clip's. A 0.6 s file keeps its only segment."""
    long = write_audio(tmp_path / "long.wav", 10.42, seed=5)
    short = write_audio(tmp_path / "short.wav", 0.6, seed=6)
    rc, out, err = cli(
        capsys,
        "tag",
        long,
        short,
        "--model",
        ckpts["tiny992_as"],
        "--head",
        "events",
        "--segments",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    for path, span in ((str(long), (0.0, 10.415)), (str(short), (0.0, 0.595))):
        mine = [r for r in rows if r["path"] == path]
        spans = _segments(mine)
        assert list(spans) == [span], spans.keys()
        clip = {r["label"]: float(r["score"]) for r in mine if r["start_s"] == ""}
        seg = {r["label"]: float(r["score"]) for r in spans[span]}
        assert seg.keys() == clip.keys() and max(abs(seg[k] - clip[k]) for k in seg) < 1e-5


def test_min_segment_is_checked_first_and_is_part_of_a_resumable_output(ckpts, tmp_path):
    song = write_audio(tmp_path / "s.wav", 1.0)
    for bad in ("-1", "nan", "inf"):
        proc = run_matpac(
            ["tag", str(song), "--model", str(tmp_path / "missing.pt"), "--segments", "--min-segment", bad],
            cwd=tmp_path,
        )
        err = proc.stderr.decode()
        assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "--min-segment" in err, err
    args = [
        "tag",
        "s.wav",
        "--model",
        str(ckpts["tiny992_as"]),
        "--head",
        "events",
        "--segments",
        "--device",
        "cpu",
        "--out",
        "t.csv",
        "-q",
    ]
    assert run_matpac(args, cwd=tmp_path).returncode == 0
    proc = run_matpac(args + ["--min-segment", "0.5"], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "--min-segment" in err and "--force" in err, err


# ------------------------------------------------------------------ help text


@pytest.mark.parametrize(
    "command,usage",
    [
        ([], "matpac [OPTIONS] COMMAND [ARGS]..."),
        (["tag"], "matpac tag [OPTIONS] INPUTS..."),
        (["embed"], "matpac embed [OPTIONS] INPUTS..."),
        (["search"], "matpac search [OPTIONS] [QUERIES...]"),
        (["train"], "matpac train [OPTIONS] LABELS"),
        (["report"], "matpac report [OPTIONS] TAGS"),
        (["models"], "matpac models [OPTIONS] COMMAND [ARGS]..."),
        (["models", "download"], "matpac models download [OPTIONS] NAME..."),
        (["models", "labels"], "matpac models labels [OPTIONS] HEAD"),
    ],
)
def test_help_shows_clean_flags_and_argument_names(command, usage):
    proc = run_matpac([*command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"}, timeout=60)
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: {usage}" in text, text
    assert "<bool>" not in text and "{" not in text, text
    if command == ["tag"]:
        line = next(ln for ln in text.splitlines() if "--segments" in ln and "--no-segments" in ln)
        assert "<" not in line, line


# ------------------------------------------------------------------ install lines of the README


def test_readme_installs_from_the_checkout_with_extras_that_exist():
    """matpac is not on PyPI: `pip install 'matpac-cli[ray]'` failed. Every pip line installs `.`
    (with extras pyproject.toml defines) or torch's own wheels."""
    import re
    import tomllib

    from conftest import REPO

    text = (REPO / "README.md").read_text()
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert "matpac-cli" not in text
    targets = re.findall(r"pip install ([^`\n&#]+)", text)
    assert len(targets) >= 4, targets
    for target in targets:
        words = target.split()
        if words[0] == "torch":
            assert "--index-url https://download.pytorch.org/whl/cpu" in target
            continue
        m = re.fullmatch(r"'?\.(?:\[(\w+)\])?'?", words[0])
        assert m, target
        assert m.group(1) is None or m.group(1) in extras, target
    assert "pip install '.[ray]'" in text and "5.8 GB" in text and "torch 2.14.1" in text
