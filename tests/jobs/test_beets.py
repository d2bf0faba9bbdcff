"""The beets plugin (`beetsplug/matpac.py`) in a real beets library: beets from the package index,
its config in a temp BEETSDIR with `plugins: matpac`, files made by ffmpeg imported with
`beet import -A`, then `beet matpac`, the flexible fields read back with `beet ls`, `beet matpac -w`
read back from the files with mutagen, and a second run that encodes nothing (matpac's library)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, ffmpeg, library_files, write_audio
from probes import probe_tensors

from matpac_cli.outputs import filetags

pytest.importorskip("beets")

FILES = {"a.flac": (), "b.mp3": ("-c:a", "libmp3lame"), "c.m4a": ("-c:a", "aac")}


def _beet(beetsdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `beet` program in a subprocess, with this tree's beetsplug on its path."""
    env = dict(
        os.environ, BEETSDIR=str(beetsdir), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "beets", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture()
def beets_lib(tmp_path, tiny) -> tuple[Path, Path]:
    """A beets library of three imported files, its config naming the tiny model and two local
    heads (a genre and a mood probe); (BEETSDIR, the matpac library)."""
    music = tmp_path / "music"
    wav = write_audio(tmp_path / "src.wav", 4.0, sr=22050)
    for name, args in FILES.items():
        ffmpeg(wav, music / name, *args)
    heads = tmp_path / "heads"
    heads.mkdir()
    torch.save(probe_tensors(87, 1, "bare"), heads / "mtg_genre.pth")
    torch.save(probe_tensors(56, 2, "bare"), heads / "mtg_mood.pth")
    beetsdir, matpac_lib = tmp_path / "beetsdir", tmp_path / "matpac-library"
    beetsdir.mkdir()
    (beetsdir / "config.yaml").write_text(
        f"""directory: {tmp_path / "beets-music"}
library: {tmp_path / "beets.db"}
plugins: matpac
import:
    copy: no
    write: no
matpac:
    model: {tiny}
    heads: [{heads / "mtg_genre.pth"}, {heads / "mtg_mood.pth"}]
    device: cpu
    top_k: 2
    library: {matpac_lib}
""",
        encoding="utf-8",
    )
    done = _beet(beetsdir, "import", "-A", "-q", str(music))
    assert done.returncode == 0, done.stderr
    assert len(_beet(beetsdir, "ls", "-f", "$path").stdout.split()) == 3
    return beetsdir, matpac_lib


def _fields(beetsdir: Path, *query: str) -> dict[str, list[str]]:
    """file name -> [mood, matpac_genre, matpac_mood, matpac_genre_score] as beets holds them."""
    fmt = "$path\t$mood\t$matpac_genre\t$matpac_mood\t$matpac_genre_score"
    done = _beet(beetsdir, "ls", "-f", fmt, *query)
    assert done.returncode == 0, done.stderr
    return {Path(line.split("\t")[0]).name: line.split("\t")[1:] for line in done.stdout.splitlines()}


def test_beet_matpac_stores_fields_writes_them_and_reuses_the_library(beets_lib):
    beetsdir, matpac_lib = beets_lib
    first = _beet(beetsdir, "matpac")
    assert first.returncode == 0, first.stderr
    assert "3 items tagged (3 encoded, 0 from matpac's library)" in first.stdout
    fields = _fields(beetsdir)
    assert set(fields) == set(FILES)
    for mood, genre, matpac_mood, score in fields.values():
        assert mood and genre and mood == matpac_mood
        assert len(genre.split("; ")) == 2  # top_k 2, joined as `tag --write` joins them
        assert 0.0 < float(score) <= 1.0
    mood, genre = fields["a.flac"][0], fields["a.flac"][1]
    # the flexible attributes are queries: a label, and the score as a float range
    assert "a.flac" in _fields(beetsdir, f"mood:{mood.split('; ')[0]}")
    assert "a.flac" in _fields(beetsdir, f"matpac_genre:{genre.split('; ')[0]}")
    assert set(_fields(beetsdir, "matpac_genre_score:0..1")) == set(FILES)
    keys = library_files(matpac_lib)

    wrote = _beet(beetsdir, "matpac", "-w")  # the second run: every file from matpac's library
    assert wrote.returncode == 0, wrote.stderr
    assert "3 items tagged (0 encoded, 3 from matpac's library)" in wrote.stdout
    assert library_files(matpac_lib) == keys
    music = Path(next(iter(_beet(beetsdir, "ls", "-f", "$path").stdout.split()))).parent
    for name in FILES:
        mood, genre, matpac_mood, _ = fields[name]
        tags = filetags.read_fields(filetags.open_tags(music / name))  # mutagen, matpac's own mapping
        assert tags["MOOD"] == [mood] and tags["MATPAC_MOOD"] == [matpac_mood] and tags["MATPAC_GENRE"] == [genre]
        assert tags["MATPAC_SOURCE"][0].startswith("matpac ")

    third = _beet(beetsdir, "matpac", "format:MP3")  # a query: only the matching item
    assert "1 items tagged (0 encoded, 1 from matpac's library)" in third.stdout, third.stderr


def test_a_bad_setting_is_one_line_from_beets(beets_lib, tmp_path):
    """A head that does not exist: beets' one-line error with matpac's words, no traceback."""
    beetsdir, _ = beets_lib
    config = beetsdir / "config.yaml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text[: text.index("    heads:")] + "    heads: [nope]\n" + text[text.index("    device:") :])
    done = _beet(beetsdir, "matpac")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "matpac:" in done.stderr and "nope" in done.stderr, done.stderr


def test_a_users_mood_stays_when_the_mood_head_keeps_nothing(beets_lib):
    """A mood the user set stays when matpac's heads keep no label (a threshold none reaches);
    matpac's own fields from the run before, which have no value now, are removed."""
    beetsdir, _ = beets_lib
    assert _beet(beetsdir, "matpac").returncode == 0
    done = _beet(beetsdir, "modify", "-y", "-W", "format:FLAC", "mood=my own mood")
    assert done.returncode == 0, done.stderr
    config = beetsdir / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8") + "    threshold: 0.999999\n", encoding="utf-8")
    again = _beet(beetsdir, "matpac")
    assert again.returncode == 0, again.stderr
    fields = _fields(beetsdir)
    assert fields["a.flac"][0] == "my own mood"
    gone = ["$matpac_genre", "$matpac_mood", "$matpac_genre_score"]  # beets' `ls` for a field the item lacks
    assert all(values[1:] == gone for values in fields.values()), fields
