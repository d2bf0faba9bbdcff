"""`matpac search --duplicates --groups`: planted duplicates (one song as wav, flac, 24-bit flac,
22.05 kHz wav and mp3; another as 16-bit wav, 24-bit ALAC and AAC in .m4a, made by the ffmpeg program) among
unrelated tones, joined into groups and ordered by the keep hint; through an .npy index and a
library folder. Nothing may be deleted."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import cli, ffmpeg

from matpac_cli.jobs.dup_groups import duplicate_groups, file_facts, is_short, join_pairs, keep_key


def tone(f: float, seconds: float = 3.0, sr: int = 44100) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(0.3 / h * np.sin(2 * np.pi * f * h * t) for h in (1, 2, 3)).astype(np.float32)


SONG = ["song24.flac", "song.flac", "song.wav", "song22k.wav", "song.mp3"]  # the keep order
OTHER = ["other_alac.m4a", "other.wav", "other_aac.m4a"]  # 24-bit ALAC before 16-bit PCM


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ckpts):
    root = tmp_path_factory.mktemp("groups")
    lib = root / "lib"
    lib.mkdir()
    sf.write(lib / "song.wav", tone(330), 44100, subtype="PCM_16")
    ffmpeg(lib / "song.wav", lib / "song.flac")
    sf.write(lib / "song24.flac", tone(330), 44100, subtype="PCM_24")
    ffmpeg(lib / "song.wav", lib / "song22k.wav", "-ar", "22050")
    ffmpeg(lib / "song.wav", lib / "song.mp3", "-b:a", "192k")
    sf.write(lib / "other.wav", tone(1234), 44100, subtype="PCM_16")
    sf.write(root / "other24.flac", tone(1234), 44100, subtype="PCM_24")
    ffmpeg(root / "other24.flac", lib / "other_alac.m4a", "-c:a", "alac")
    ffmpeg(lib / "other.wav", lib / "other_aac.m4a", "-c:a", "aac", "-b:a", "192k")
    for f in (200, 2500, 4400):
        sf.write(lib / f"tone{f}.wav", tone(f), 44100)
    return {"root": root, "lib": lib, "model": ckpts["tiny608"]}


def _groups(rows: list[dict], lib: Path) -> list[list[str]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for r in rows:
        out.setdefault(int(r["group"]), []).append((int(r["keep"]), Path(r["path"]).name))
    return [[name for _, name in sorted(members)] for _, members in sorted(out.items())]


def _snapshot(lib: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(lib.iterdir())}


@pytest.mark.parametrize("index", ["npy", "library"])
def test_planted_duplicates_are_grouped_in_keep_order_and_nothing_is_deleted(planted, index, tmp_path, capsys):
    lib, before = planted["lib"], _snapshot(planted["lib"])
    library = tmp_path / "L"
    code, _, err = cli(
        capsys, "embed", lib, "--out", tmp_path / "emb.npy", "--model", planted["model"], "--library", library
    )
    assert code == 0, err
    where = tmp_path / "emb.npy" if index == "npy" else library
    code, out, err = cli(capsys, "search", "--index", where, "--duplicates", "--groups")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "group",
        "keep",
        "path",
        "match",
        "score",
        "lossless",
        "codec",
        "sample_rate",
        "bit_depth",
        "duration_s",
    ]
    assert _groups(rows, lib) == sorted([SONG, OTHER], key=lambda g: min(map(str, (lib / n for n in g))))
    by = {Path(r["path"]).name: r for r in rows}
    assert {n: by[n]["lossless"] for n in by} == {n: ("0" if n in ("song.mp3", "other_aac.m4a") else "1") for n in by}
    depths = [by[n]["bit_depth"] for n in ("song24.flac", "song.wav", "song.mp3", "other_alac.m4a")]
    assert depths == ["24", "16", "", "24"]
    assert (by["song22k.wav"]["sample_rate"], by["song.wav"]["sample_rate"]) == ("22050", "44100")
    assert (by["other_alac.m4a"]["codec"], by["other_aac.m4a"]["codec"], by["song.mp3"]["codec"]) == (
        "alac",
        "aac",
        "mp3",
    )
    for r in rows:  # each member's best match is in its own group, within the threshold
        assert by[Path(r["match"]).name]["group"] == r["group"] and r["match"] != r["path"]
        assert float(r["score"]) >= 0.98
    assert "2 group(s) of 8 files" in err and "nothing deleted" in err
    assert _snapshot(lib) == before


def test_groups_as_jsonl_and_parquet_and_refused_without_duplicates(planted, tmp_path, capsys):
    code, _, err = cli(capsys, "embed", planted["lib"], "--out", tmp_path / "emb.npy", "--model", planted["model"])
    assert code == 0, err
    code, out, err = cli(capsys, "search", "-i", tmp_path / "emb.npy", "--duplicates", "--groups", "-f", "jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert _groups(rows, planted["lib"])[0][0] in (SONG[0], OTHER[0])
    assert all(isinstance(r["lossless"], bool) and isinstance(r["group"], int) for r in rows)
    code, _, err = cli(
        capsys, "search", "-i", tmp_path / "emb.npy", "--duplicates", "--groups", "--out", tmp_path / "g.parquet"
    )
    assert code == 0, err
    table = pq.read_table(tmp_path / "g.parquet")
    assert str(table.schema.field("keep").type) == "int32" and str(table.schema.field("lossless").type) == "bool"
    assert _groups(table.to_pylist(), planted["lib"]) == _groups(rows, planted["lib"])
    code, _, err = cli(capsys, "search", "-i", tmp_path / "emb.npy", "--groups")
    assert code == 2 and "--groups" in err and "--duplicates" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "search", "-i", tmp_path / "emb.npy", "--exact")  # neighbours need a query
    assert code == 2 and "give at least one QUERY" in err and len(err.strip().splitlines()) == 1


def test_a_chain_of_pairs_is_one_group_and_each_member_keeps_its_best_match():
    groups, best, count = join_pairs(iter([(0, 1, 0.99), (1, 2, 0.985), (5, 7, 0.999), (3, 4, 0.98), (2, 4, 0.981)]))
    assert groups == [[0, 1, 2, 3, 4], [5, 7]] and count == 5
    assert best[1] == (0, 0.99) and best[4] == (2, 0.981) and best[7] == (5, 0.999)


def test_keep_order_lossless_then_rate_then_length_then_depth_then_path(planted):
    facts = lambda lossless, rate, seconds, depth: {  # noqa: E731
        "lossless": lossless,
        "sample_rate": rate,
        "duration_s": seconds,
        "bit_depth": depth,
    }
    files = {
        "a.mp3": facts(False, 48000, 200.0, None),
        "b.wav": facts(True, 44100, 180.0, 16),
        "c.flac": facts(True, 44100, 200.02, 16),  # longer than b, the same length as d to 0.1 s
        "d.flac": facts(True, 44100, 200.0, 24),
        "e.aiff": facts(True, 96000, 30.0, 16),
        "f.flac": facts(None, 0, None, None),  # unreadable: after both
        "c0.flac": facts(True, 44100, 200.0, 24),
    }
    assert sorted(files, key=lambda p: keep_key(p, files[p])) == [
        "e.aiff",
        "c0.flac",
        "d.flac",
        "c.flac",
        "b.wav",
        "a.mp3",
        "f.flac",
    ]
    gone = file_facts(str(planted["lib"] / "gone.flac"), {"sample_rate": 8000, "duration_s": 2.0})
    assert gone == {
        "codec": "flac",
        "lossless": True,
        "sample_rate": 8000,
        "bit_depth": None,
        "duration_s": 2.0,
        "truncated": False,
    }


def test_a_copy_cut_short_is_never_kept_over_a_complete_one_whatever_its_rate(tmp_path):
    """A 48 kHz copy that stops early, and one the index marks truncated, go after the complete
    44.1 kHz copy of the same audio (before the fix the higher rate made either `keep` 1)."""
    sf.write(tmp_path / "full44k.wav", tone(330, 6.0, 44100), 44100, subtype="PCM_16")
    sf.write(tmp_path / "cut48k.wav", tone(330, 3.0, 48000), 48000, subtype="PCM_16")
    sf.write(tmp_path / "flagged48k.wav", tone(330, 6.0, 48000), 48000, subtype="PCM_16")
    paths = [str(tmp_path / n) for n in ("cut48k.wav", "flagged48k.wav", "full44k.wav")]
    index = [{"truncated": False}, {"truncated": True}, {"truncated": False}]
    found = duplicate_groups(paths, np.ones((3, 8), dtype=np.float32), 0.98, index)
    assert [Path(paths[r]).name for r in found.members[0]] == ["full44k.wav", "flagged48k.wav", "cut48k.wav"]
    # "clearly shorter": more than 1 s or more than 2% of the longest; padding-sized gaps are not
    assert [is_short({"duration_s": d}, 180.0) for d in (179.5, 178.9)] == [False, True]
    assert [is_short({"duration_s": d}, 30.0) for d in (29.8, 29.3)] == [False, True]
