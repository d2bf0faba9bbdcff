"""`matpac tag` outputs and the checks before a model loads (issue 9): output formats, plain label
names with `tag_id`, each head's default encoder, errors before any download, tag manifests; and
`Predictor.embed` on integer PCM and channels-first arrays.

Weights come from the loopback FakeServer through the real download code; scores from
tests/reference.py arithmetic. Shared helpers live in probes.py and conftest.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import reference as R
import soundfile as sf
from conftest import cli, load_sd, run_matpac, write_audio
from probes import (
    DEFAULT_HEADS,
    GENERAL,
    MUSIC,
    RELEASE_GENERAL,
    TAG_COLUMNS,
    assert_scores,
    by_file_head,
    expected_probe,
    label_file,
    parse_csv,
    serve_music_model,
    serve_probes,
    tag_labels,
)


@pytest.fixture()
def release(hub, ckpts) -> dict:
    """Both MATPAC++ encoders (tiny608) and the probe zip on the loopback release server; every
    task in both family folders, with different weights."""
    serve_music_model(hub, ckpts)
    hub.add_release_file(RELEASE_GENERAL, ckpts["tiny608"].read_bytes())
    return serve_probes(hub, "nested", music=DEFAULT_HEADS + ("esc50",), general=DEFAULT_HEADS + ("esc50",))


def one_line_error(proc, *words: str) -> str:
    """Exit 2, nothing on stdout (not even a CSV header), one `matpac: error:` line naming `words`."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert proc.stdout == b""
    assert err.startswith("matpac: error: ") and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# ------------------------------------------------------------------------------------ output formats


@pytest.mark.parametrize(
    "args,words",
    [
        (["--out", "tags.json"], [".json", ".csv", ".jsonl", ".ndjson"]),
        (["--out", "tags.xlsx"], [".xlsx", ".csv", ".jsonl", ".parquet"]),
        (["--format", "parquet"], ["parquet is binary", "--out FILE.parquet"]),
        (["--format", "parquet", "--out", "-"], ["parquet is binary", "--out FILE.parquet"]),
        (["--out", "tags"], ["no extension", ".csv"]),
        (["--format", "xml"], ["xml", "csv", "jsonl"]),
        (["--format", "json", "--out", "-"], ["json", "csv, jsonl"]),
        (["--format", "jsonl", "--out", "tags.csv"], ["contradicts", "tags.csv", "csv"]),
        (["--format", "csv", "--out", "tags.ndjson"], ["contradicts", "jsonl"]),
    ],
)
def test_unsupported_output_is_refused_before_the_model_loads(hub, music_dir, tmp_path, args, words):
    """(Regression: `--out tags.json` and `--out tags.parquet` wrote CSV and exited 0; Parquet is now
    written, to a file only.)"""
    proc = run_matpac(["tag", str(music_dir), "--device", "cpu", *args], cwd=tmp_path, timeout=60)
    one_line_error(proc, *words)
    assert hub.count() == 0  # no model or probe download was even tried
    assert list(tmp_path.iterdir()) == []


def test_ndjson_extension_writes_json_lines(release, music_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "tag", music_dir, "--out", "tags.ndjson", "--head", "genre", "--device", "cpu")
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "tags.ndjson").read_text().splitlines()]
    assert len(rows) == 2 * 5 and all(list(r) == TAG_COLUMNS for r in rows)


# ------------------------------------------------------------------------------------ plain labels


def test_rows_show_plain_labels_and_keep_the_dataset_tag(release, music_dir, ref608, tmp_path, monkeypatch, capsys):
    """`trance`, `happy`, `piano` in `label`; `genre---trance` ... in `tag_id`, CSV and JSON Lines alike.

    (Regression: rows said `genre---trance` and `mood/theme---happy`.)
    """
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "tag", music_dir, "--top-k", "0", "--out", "tags.csv", "--device", "cpu")
    assert rc == 0, err
    rows = parse_csv((tmp_path / "tags.csv").read_text())
    assert list(rows[0]) == TAG_COLUMNS
    prefix = {"mtg_genre": "genre---", "mtg_mood": "mood/theme---", "mtg_instrument": "instrument---"}
    for row in rows:
        assert "---" not in row["label"]
        assert row["tag_id"] == prefix[row["head"]] + row["label"]
    for (fname, head), group in by_file_head(rows).items():
        ids = label_file(f"{head}.txt")
        assert {r["tag_id"] for r in group} == set(ids)
        assert_scores(
            group, tag_labels(f"{head}.txt"), expected_probe(ref608[fname], release[(MUSIC, head)], "sigmoid")
        )
    labels = {r["label"] for r in rows}
    assert {"electronic", "happy", "piano"} <= labels

    rc, out, err = cli(
        capsys, "tag", music_dir, "--head", "mood", "--format", "jsonl", "--top-k", "3", "--device", "cpu"
    )
    assert rc == 0, err
    for row in map(json.loads, out.splitlines()):
        assert row["tag_id"] == "mood/theme---" + row["label"]


def test_plain_labels_of_every_registry_head_are_unique():
    from matpac_cli.checkpoints.registry import load_registry
    from matpac_cli.inference.heads import plain_labels

    for spec in load_registry().heads.values():
        names = plain_labels(spec.labels())
        assert len(set(names)) == len(names), spec.name
    assert plain_labels(["genre---rock", "mood/theme---rock", "genre---pop"]) == [
        "genre---rock",
        "mood/theme---rock",
        "pop",
    ]  # a clash keeps the full tags


# ------------------------------------------------------------------------------------ default encoders


def test_plan_gives_each_head_its_own_default_encoder():
    from matpac_cli.jobs.tag_plan import plan_groups

    heads = ["genre", "sounds", "us8k", "events", "gtzan", "esc50", "mtt", "instruments", "nsynth", "mood"]
    assert plan_groups(heads, None) == [
        ("matpac-plus-music", ["genre", "gtzan", "mtt", "instruments", "nsynth", "mood"]),
        ("matpac-plus", ["sounds", "us8k", "esc50"]),
        ("matpac-plus-audioset", ["events"]),
    ]
    # an explicit --model is used by every probe head; MODEL:HEAD still wins for its head
    assert plan_groups(["genre", "sounds", "matpac-plus-music:esc50"], "matpac-plus") == [
        ("matpac-plus", ["genre", "sounds"]),
        ("matpac-plus-music", ["esc50"]),
    ]
    assert plan_groups(["sounds", "genre"], "matpac-plus-music") == [("matpac-plus-music", ["sounds", "genre"])]


def test_sound_event_head_defaults_to_the_general_audio_encoder(release, music_dir, ref608, capsys):
    """`--head genre --head esc50`, no --model: genre from the music folder, esc50 from the
    general-audio one, and the summary names the encoder of every head.

    (Regression: every head ran on matpac-plus-music, so esc50 read the music encoder's probe.)
    """
    rc, out, err = cli(
        capsys, "tag", music_dir / "a.wav", "--head", "genre", "--head", "esc50", "--top-k", "0", "--device", "cpu"
    )
    assert rc == 0, err
    assert (
        "matpac: heads: mtg_genre (genre) on matpac-plus-music; esc50 on matpac-plus (2 encoders, each run once per file)"
        in err
    )
    groups = by_file_head(parse_csv(out))
    assert_scores(
        groups[("a.wav", "mtg_genre")],
        tag_labels("mtg_genre.txt"),
        expected_probe(ref608["a.wav"], release[(MUSIC, "mtg_genre")], "sigmoid"),
    )
    assert_scores(
        groups[("a.wav", "esc50")],
        tag_labels("esc50.txt"),
        expected_probe(ref608["a.wav"], release[(GENERAL, "esc50")], "softmax"),
    )

    # --model given: both heads use it, and the summary says so even for one encoder
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        "matpac-plus-music",
        "--head",
        "genre",
        "--head",
        "esc50",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert "matpac: heads: mtg_genre (genre), esc50 on matpac-plus-music\n" in err
    assert_scores(
        by_file_head(parse_csv(out))[("a.wav", "esc50")],
        tag_labels("esc50.txt"),
        expected_probe(ref608["a.wav"], release[(MUSIC, "esc50")], "softmax"),
    )


# ------------------------------------------------------------------------------------ errors before loading


@pytest.fixture()
def a_file(tmp_path) -> Path:
    return write_audio(tmp_path / "a.wav", 1.0)


@pytest.mark.parametrize(
    "args,words",
    [
        (["--batch-size", "0"], ["--batch-size 0"]),
        (["--workers", "-2"], ["--workers -2"]),
        (["--threads", "-1"], ["--threads -1"]),
        (["--top-k", "-1"], ["--top-k -1"]),
        (["--head", "genree"], ["genree"]),
        (["--head", "genre", "--head", "mtg_genre"], ["twice", "mtg_genre"]),
        (["--head", "./nowhere.pth"], ["nowhere.pth", "does not exist"]),
        (["--model", "matpac-pluss"], ["matpac-pluss"]),
        (["--head", "genre", "--head", "matpac-pluss:esc50"], ["matpac-pluss"]),  # checked before genre's model loads
        (["--head", "genre", "--head", "hf:not-a-repo:esc50"], ["hf:not-a-repo"]),
        (["--head", "genre", "--head", "nowhere"], ["nowhere"]),
        (["--model", "./missing.pt"], ["missing.pt"]),
        (["--precision", "fp64"], ["--precision fp64"]),
        (["--out", "/proc/x.csv"], ["/proc/x.csv"]),
        (["--out", "-", "--manifest", "/proc/m.json"], ["/proc/m.json"]),
    ],
)
def test_bad_run_is_refused_before_any_download(hub, a_file, tmp_path, args, words):
    """One line, exit 2, no CSV header on stdout and no request to the (loopback) internet."""
    proc = run_matpac(["tag", str(a_file), "--device", "cpu", *args], cwd=tmp_path, timeout=60)
    one_line_error(proc, *words)
    assert hub.count() == 0


def test_out_under_a_file_is_refused_before_any_download(hub, a_file, tmp_path):
    proc = run_matpac(["tag", str(a_file), "--out", str(a_file / "t.csv"), "--device", "cpu"], timeout=60)
    one_line_error(proc, "a.wav", "not a folder")
    assert hub.count() == 0


def test_existing_foreign_output_is_refused_before_any_download(hub, a_file, tmp_path):
    (tmp_path / "tags.csv").write_text("mine\n")
    proc = run_matpac(["tag", str(a_file), "--out", "tags.csv", "--device", "cpu"], cwd=tmp_path, timeout=60)
    one_line_error(proc, "tags.csv", "--force")
    assert hub.count() == 0 and (tmp_path / "tags.csv").read_text() == "mine\n"


# ------------------------------------------------------------------------------------ manifests


def probe_file(tmp_path: Path, folder: str, task: str) -> Path:
    return next((tmp_path / "hf_home" / "matpac" / "probes").rglob(f"{folder}/**/{task}.pth"))


def test_same_stem_outputs_get_their_own_manifests(release, music_dir, tmp_path, monkeypatch, capsys):
    """`--out t.csv` then `--out t.jsonl`: two manifests, each naming its output and selection.

    (Regression: both wrote t.manifest.json, the second replacing the first.)
    """
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(
        capsys,
        "tag",
        music_dir,
        "--out",
        "t.csv",
        "--top-k",
        "3",
        "--head",
        "genre",
        "--head",
        "esc50",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    rc, _, err = cli(
        capsys, "tag", music_dir, "--out", "t.jsonl", "--threshold", "0.25", "--head", "genre", "--device", "cpu"
    )
    assert rc == 0, err
    assert not (tmp_path / "t.manifest.json").exists()
    csv_man = json.loads((tmp_path / "t.csv.manifest.json").read_text())
    jsonl_man = json.loads((tmp_path / "t.jsonl.manifest.json").read_text())
    assert "t.csv.manifest.json" in err or "t.jsonl.manifest.json" in err
    assert csv_man["output"] | {"columns": None} == {
        "path": "t.csv",
        "format": "csv",
        "top_k": 3,
        "threshold": None,
        "columns": None,
    }
    assert jsonl_man["output"]["format"] == "jsonl"
    assert (jsonl_man["output"]["top_k"], jsonl_man["output"]["threshold"]) == (0, 0.25)  # all above it
    heads = {h["name"]: h for h in csv_man["heads"]}
    for name, folder in (("mtg_genre", MUSIC), ("esc50", GENERAL)):
        want = hashlib.sha256(probe_file(tmp_path, folder, name).read_bytes()).hexdigest()
        assert heads[name]["sha256"] == want
    assert heads["mtg_genre"]["encoder"] == "matpac-plus-music" and heads["esc50"]["encoder"] == "matpac-plus"
    assert [(m["name"], m["device"], m["precision"]) for m in csv_man["models"]] == [
        ("matpac-plus-music", "cpu", "float32"),
        ("matpac-plus", "cpu", "float32"),
    ]


def test_stdout_gets_a_manifest_only_when_asked(release, music_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "tag", music_dir, "--head", "genre", "--device", "cpu")
    assert rc == 0 and out, err
    assert list(tmp_path.glob("*.json")) == []
    rc, out, err = cli(capsys, "tag", music_dir, "--head", "genre", "--manifest", "run.json", "--device", "cpu")
    assert rc == 0 and out.startswith("path,head,label"), err
    man = json.loads((tmp_path / "run.json").read_text())
    assert man["output"]["path"] == "-" and man["output"]["top_k"] == 5
    assert (
        man["heads"][0]["sha256"] == hashlib.sha256(probe_file(tmp_path, MUSIC, "mtg_genre").read_bytes()).hexdigest()
    )
    assert "run.json" in err


# ------------------------------------------------------------------------------------ Predictor.embed arrays


def _pcm_file(tmp_path: Path, subtype: str, fmt: str, channels: int = 1) -> Path:
    ext = {"WAV": "wav", "AIFF": "aiff"}[fmt]
    path = tmp_path / f"pcm_{subtype}.{ext}"
    rng = np.random.default_rng(3)
    n = 22050 * 2
    wave = 0.3 * rng.standard_normal((n, channels)) + 0.3 * np.sin(np.arange(n) / 20)[:, None]
    sf.write(path, np.clip(wave, -1, 1), 22050, subtype=subtype, format=fmt)
    return path


@pytest.mark.parametrize(
    "subtype,fmt,dtype",
    [
        ("PCM_16", "WAV", "int16"),
        ("PCM_32", "WAV", "int32"),
        ("PCM_U8", "WAV", "uint8"),
        ("PCM_S8", "AIFF", "int8"),
    ],
)
def test_embed_scales_integer_pcm_as_soundfile_does(predictor, ckpts, tmp_path, subtype, fmt, dtype):
    """An int16 (int32, int8, uint8) array embeds like soundfile's float reading of the same file.

    (Regression: integers were taken as floats, so int16 audio was 32768 times too loud.)
    """
    path = _pcm_file(tmp_path, subtype, fmt, channels=2)
    floats, sr = sf.read(path, dtype="float32")
    if dtype in ("int16", "int32"):
        ints, _ = sf.read(path, dtype=dtype)
    else:  # soundfile reads 8-bit files as int16 with the sample in the high byte
        high = sf.read(path, dtype="int16")[0] >> 8
        ints = (high + 128).astype(np.uint8) if dtype == "uint8" else high.astype(np.int8)
    got = predictor.embed(ints, sr)
    np.testing.assert_allclose(got, predictor.embed(floats, sr), atol=1e-6)
    np.testing.assert_allclose(got, R.reference_embedding(load_sd(ckpts["tiny608"]), floats, sr), atol=1e-4)


@pytest.mark.parametrize("dtype", ["int64", "uint16", "bool", "complex64", "object"])
def test_embed_refuses_other_dtypes(predictor, dtype):
    from matpac_cli.errors import InputError

    with pytest.raises(InputError, match=f"dtype {dtype}"):
        predictor.embed(np.zeros(16000, dtype=dtype), 16000)


def test_embed_channels_first(predictor, tmp_path):
    """A (2, n) array: refused with the way out unless channels_first=True, then equal to (n, 2).

    (Regression: (2, n) was read as 2 samples of n channels and refused as "too short".)
    """
    from matpac_cli.errors import InputError

    floats, sr = sf.read(_pcm_file(tmp_path, "PCM_16", "WAV", channels=2), dtype="float32")
    with pytest.raises(InputError) as info:
        predictor.embed(floats.T, sr)
    assert "channels_first=True" in str(info.value) and "transpose" in str(info.value)
    assert "short" not in str(info.value)
    np.testing.assert_allclose(
        predictor.embed(floats.T, sr, channels_first=True), predictor.embed(floats, sr), atol=1e-6
    )
    mono = floats.mean(axis=1, dtype=np.float32)
    np.testing.assert_allclose(
        predictor.embed(mono[None], sr, channels_first=True), predictor.embed(mono, sr), atol=1e-6
    )
    with pytest.raises(InputError, match="channels_first"):
        predictor.embed(mono[None], sr)  # (1, n) too
    with pytest.raises(InputError, match="drop channels_first"):
        predictor.embed(floats, sr, channels_first=True)
