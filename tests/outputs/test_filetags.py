"""`matpac tag --write` / `--undo` on every format it writes, from the real command: files made
by ffmpeg, given a title, a picture (where the format holds one) and a custom tag by mutagen, then
written, read back with mutagen, checked for what must survive (every other tag, the pictures,
the audio packets' key, the times), undone, and re-run."""

from __future__ import annotations

import base64
import csv
import io
import os
from pathlib import Path

import pytest
from conftest import cli, ffmpeg, write_audio
from probes import serve_music_model, serve_probes

from matpac_cli.library.key import audio_key
from matpac_cli.outputs import filetags

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # the picture's bytes: compared, never decoded
FORMATS = {  # file name -> ffmpeg arguments
    "a.flac": (),
    "b.mp3": ("-c:a", "libmp3lame"),
    "c23.mp3": ("-c:a", "libmp3lame"),  # given an ID3v2.3 tag, which it keeps
    "d.m4a": ("-c:a", "aac"),
    "e.ogg": ("-c:a", "libvorbis"),
    "f.opus": ("-c:a", "libopus"),
    "g.wav": (),
    "h.aiff": (),
}


@pytest.fixture()
def release(hub, ckpts) -> None:
    """matpac-plus-music (tiny608) and the probe zip on the loopback release server."""
    serve_music_model(hub, ckpts)
    serve_probes(hub, "nested")


def _decorate(path: Path) -> None:
    """A title, a picture (in Ogg and Opus a METADATA_BLOCK_PICTURE comment), a custom tag, and
    in ID3 a chapter, as a tag editor leaves them."""
    import mutagen
    from mutagen.flac import Picture
    from mutagen.id3 import APIC, CHAP, CTOC, TIT2, TXXX, CTOCFlags
    from mutagen.mp4 import MP4Cover, MP4FreeForm

    f = mutagen.File(str(path))
    if f.tags is None:
        f.add_tags()
    style = filetags._style(f)
    if style == "id3":
        f.tags.add(TIT2(encoding=3, text=["Title"]))
        f.tags.add(APIC(encoding=3, mime="image/png", type=3, desc="cover", data=PNG))
        f.tags.add(TXXX(encoding=3, desc="MYTAG", text=["keep me"]))
        f.tags.add(CTOC(element_id="toc", flags=CTOCFlags.TOP_LEVEL, child_element_ids=["ch0"], sub_frames=[]))
        f.tags.add(CHAP(element_id="ch0", start_time=0, end_time=1000, sub_frames=[TIT2(encoding=3, text=["One"])]))
        if "23" in path.name:  # v2.3's own frames and a two-artist list, which must stay as they are
            from mutagen.id3 import TDAT, TPE1, TYER

            f.tags.add(TYER(encoding=0, text=["1999"]))
            f.tags.add(TDAT(encoding=0, text=["0512"]))
            f.tags.add(TPE1(encoding=1, text=["A", "B"]))
            f.save(v2_version=3, v23_sep=None)
            return
        f.save(v2_version=4)
        return
    if style == "mp4":
        f.tags["\xa9nam"] = ["Title"]
        f.tags["covr"] = [MP4Cover(PNG, imageformat=MP4Cover.FORMAT_PNG)]
        f.tags["----:com.apple.iTunes:MYTAG"] = [MP4FreeForm(b"keep me")]
    else:
        f.tags["TITLE"] = ["Title"]
        f.tags["MYTAG"] = ["keep me"]
        f.tags["GENRE"] = ["Rock"]
        pic = Picture()
        pic.type, pic.mime, pic.data = 3, "image/png", PNG
        if path.suffix == ".flac":
            f.add_picture(pic)
        else:
            f.tags["METADATA_BLOCK_PICTURE"] = [base64.b64encode(pic.write()).decode("ascii")]
    f.save()


@pytest.fixture()
def music(tmp_path) -> Path:
    src = write_audio(tmp_path / "src.wav", 3.0, sr=44100, channels=2, seed=4)
    d = tmp_path / "music"
    for name, args in FORMATS.items():
        _decorate(ffmpeg(src, d / name, *args))
    return d


def _other_tags(path: Path) -> dict:
    """Everything mutagen reads from the file but the fields matpac writes (pictures included)."""
    import mutagen

    f = mutagen.File(str(path))
    style = filetags._style(f)
    if style == "id3":  # the frames as stored (an ID3v2.3 tag's, not translated to v2.4)
        f = type(f)(str(path), translate=False)
    ours = {filetags._id3_key(k) if style == "id3" else filetags._mp4_key(k) for k in filetags.FIELDS}
    if style == "vorbis":
        tags = {k.upper(): v for k, v in f.tags.as_dict().items() if k.upper() not in filetags.FIELDS}
    else:
        tags = {k: repr(v) for k, v in f.tags.items() if k not in ours}
    if hasattr(f, "pictures"):
        tags["pictures"] = [p.data for p in f.pictures]
    return tags


def _state(d: Path) -> dict:
    return {
        p.name: (filetags.read_fields(filetags.open_tags(p)), _other_tags(p), audio_key(p), p.stat().st_mtime_ns)
        for p in sorted(d.iterdir())
    }


def _top(capsys, d: Path, head: str) -> dict[str, list[str]]:
    """file name -> the labels `matpac tag` gives `head` (top 5), from its CSV rows."""
    rc, out, err = cli(capsys, "tag", d, "--device", "cpu", "-q")
    assert rc == 0, err
    top: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(out)):
        if row["head"] == head:
            top.setdefault(Path(row["path"]).name, []).append(row["label"])
    return top


def test_write_read_back_keep_everything_undo_and_rerun(release, music, capsys):
    before = _state(music)
    moods = _top(capsys, music, "mtg_mood")
    rc, out, err = cli(capsys, "tag", music, "--write", "--genre", "append", "--device", "cpu", "-q")
    assert rc == 0, err
    after = _state(music)
    for name, (fields, others, key, mtime) in after.items():
        old_fields, old_others, old_key, old_mtime = before[name]
        assert (others, key, mtime) == (old_others, old_key, old_mtime), name  # all else as it was
        assert fields["MATPAC_MOOD"] == fields["MOOD"] == ["; ".join(moods[name])], name
        assert fields["MATPAC_GENRE"] and fields["MATPAC_INSTRUMENTS"], name
        assert fields["MATPAC_SOURCE"][0].startswith("matpac "), name
        assert "mtg_genre, mtg_mood, mtg_instrument" in fields["MATPAC_SOURCE"][0]
        genre = fields["GENRE"][0]
        assert genre.startswith("Rock; ") if old_fields["GENRE"] else genre == fields["MATPAC_GENRE"][0], name
        assert f"{name}: changed MATPAC_MOOD: '' -> " in out
    from mutagen.id3 import ID3

    assert ID3(str(music / "c23.mp3")).version[:2] == (2, 3)
    assert ID3(str(music / "b.mp3")).version[:2] == (2, 4)

    rc, out, err = cli(capsys, "tag", music, "--write", "--genre", "append", "--device", "cpu")
    assert rc == 0 and out == "", err  # idempotent: nothing changes, nothing is written
    assert f"0 done, {len(FORMATS)} reused" in err  # new tags, same audio: the library's key holds
    assert _state(music) == after

    rc, out, err = cli(capsys, "tag", "--undo", music)
    assert rc == 0 and f"restored the tags of {len(FORMATS)} file(s), 0 failed" in err, err
    undone = _state(music)
    for name, (fields, others, key, _) in undone.items():
        assert (fields, others, key) == before[name][:3], name
    rc, out, err = cli(capsys, "tag", "--undo", music)
    assert rc == 0 and out == "" and "restored the tags of 0 file(s)" in err  # nothing left to undo


def test_dry_run_changes_nothing(release, music, capsys):
    data = {p.name: p.read_bytes() for p in music.iterdir()}
    rc, out, err = cli(capsys, "tag", music, "--write", "--dry-run", "--device", "cpu", "-q")
    assert rc == 0, err
    assert out.count("would change MATPAC_SOURCE") == len(FORMATS)
    assert {p.name: p.read_bytes() for p in music.iterdir()} == data


def test_a_file_that_fails_is_left_as_it_was_and_named(release, music, capsys, tmp_path):
    """A symlink planted at the temp name is refused, never followed; the others are written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"mine")
    (music / f".a.flac.tmp{os.getpid()}").symlink_to(victim)
    data = (music / "a.flac").read_bytes()
    rc, out, err = cli(capsys, "tag", music, "--write", "--device", "cpu", "-q")
    assert rc == 1
    assert "a.flac: tags not written" in err and "symlink" in err
    assert (music / "a.flac").read_bytes() == data and victim.read_bytes() == b"mine"
    assert filetags.read_fields(filetags.open_tags(music / "b.mp3"))["MATPAC_MOOD"]


def test_settings_refused_before_any_model(music, capsys, no_library):
    for args, says in (
        (("--write",), "keep the previous tags in the library"),
        (("--genre", "append"), "--genre goes with --write"),
        (("--write", "--out", "x.csv"), "give no --out"),
        (("--write", "--genre", "both"), "--genre both: expected append or replace"),
    ):
        rc, out, err = cli(capsys, "tag", music, *args, "--device", "cpu")
        assert rc == 2 and says in err and "Traceback" not in err, (args, err)


def test_genre_asked_later_is_undone_too_and_touch_moves_mtime(release, music, capsys):
    """The first write leaves GENRE alone; a later `--genre replace` records GENRE's value before
    it, so undo puts back every field as the user had it. `--touch` lets the mtime move."""
    before = _state(music)
    rc, _, err = cli(capsys, "tag", music, "--write", "--device", "cpu", "-q")
    assert rc == 0, err
    assert all(
        filetags.read_fields(filetags.open_tags(p))["GENRE"] == before[p.name][0]["GENRE"] for p in music.iterdir()
    )
    rc, _, err = cli(capsys, "tag", music, "--write", "--genre", "replace", "--touch", "--device", "cpu", "-q")
    assert rc == 0, err
    for p in music.iterdir():
        fields = filetags.read_fields(filetags.open_tags(p))
        assert fields["GENRE"] == fields["MATPAC_GENRE"], p.name
        assert p.stat().st_mtime_ns > before[p.name][3], p.name
    rc, out, err = cli(capsys, "tag", "--undo", "--dry-run", music)
    assert rc == 0 and "would change GENRE" in out and "would restore the tags of 8 file(s)" in err
    rc, _, err = cli(capsys, "tag", "--undo", music)
    assert rc == 0, err
    assert {n: s[:3] for n, s in _state(music).items()} == {n: s[:3] for n, s in before.items()}


def test_a_symlinked_input_is_written_in_its_file_and_undone_by_either_name(release, music, capsys, tmp_path):
    link = tmp_path / "links" / "song.flac"
    link.parent.mkdir()
    link.symlink_to(music / "a.flac")
    before = filetags.read_fields(filetags.open_tags(music / "a.flac"))
    rc, out, err = cli(capsys, "tag", link, "--write", "--device", "cpu", "-q")
    assert rc == 0 and link.is_symlink(), err
    assert filetags.read_fields(filetags.open_tags(music / "a.flac"))["MATPAC_MOOD"]
    rc, out, err = cli(capsys, "tag", "--undo", music / "a.flac")
    assert rc == 0 and "restored the tags of 1 file(s)" in err, err
    assert filetags.read_fields(filetags.open_tags(music / "a.flac")) == before


def test_a_file_reached_through_a_symlinked_folder_is_never_written(release, music, capsys, tmp_path):
    """A symlink planted in a walked folder leads out of it: that file is named, not written."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "z.flac").write_bytes((music / "a.flac").read_bytes())
    (music / "link").symlink_to(outside)
    data = (outside / "z.flac").read_bytes()
    rc, out, err = cli(capsys, "tag", music, "--write", "--device", "cpu", "-q")
    assert rc == 1 and "link/z.flac: tags not written (reached through a symlink" in err, err
    assert (outside / "z.flac").read_bytes() == data
    assert "a.flac: changed MATPAC_MOOD" in out  # the others are written


def test_a_line_a_crash_cut_short_never_swallows_the_next_record(tmp_path):
    from matpac_cli.outputs.filesafe import JOURNAL, Journal

    (tmp_path / JOURNAL).write_bytes(b'{"path": "/m/a.flac", "key": "a:1", "fie')  # torn mid-line
    Journal(tmp_path).record(Path("/m/b.flac"), "a:2", {"MOOD": ["calm"]})
    assert Journal(tmp_path).find(Path("/m/b.flac"))["fields"] == {"MOOD": ["calm"]}


def test_genre_append_keeps_a_list_a_list(release, music, capsys):
    import mutagen

    f = mutagen.File(str(music / "e.ogg"))
    f.tags["GENRE"] = ["Rock", "Pop"]
    f.save()
    rc, out, err = cli(capsys, "tag", music / "e.ogg", "--write", "--genre", "append", "--device", "cpu", "-q")
    assert rc == 0, err
    genres = mutagen.File(str(music / "e.ogg")).tags["GENRE"]
    assert genres[:2] == ["Rock", "Pop"] and len(genres) > 2 and all("; " not in g for g in genres), genres
