"""Files given up because they killed the worker working on them, recorded in the library
(`library.failed`): a re-run skips them in one line with the reason and still exits 1, and
`--retry-failed` tries them again. The give-up itself happens on a Ray cluster (the local engine
decodes in its own process: a crash there ends the run); tests/engines/test_ray.py records one
end to end, here the record is written as the driver's run writes it, into a real library."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import lance
from conftest import cli, write_audio
from probes import openmic_probe

from matpac_cli.library import failed, tables
from matpac_cli.library.key import Setting, audio_key

REASON = "the Ray worker decoding it died 3 times (a crash, or killed for memory?); matpac gave up on it"


def test_a_decoding_failure_holds_for_every_model_an_encoding_one_for_its_own(tmp_path):
    root = tmp_path / "lib"
    a, b = Setting("sha-a", "fe1"), Setting("sha-b", "fe1")
    assert failed.failed_before(root, ["k1"], [a]) == {}  # no library yet: nothing failed
    failed.record(root, "k1", [failed.ANY], REASON)
    failed.record(root, "k2", [a], "the encoder died")
    assert failed.failed_before(root, ["k1", "k2", "k3"], [a]) == {"k1": REASON, "k2": "the encoder died"}
    assert failed.failed_before(root, ["k1", "k2"], [b]) == {"k1": REASON}  # k2 failed for model a only
    failed.record(root, "k1", [failed.ANY], "again")
    assert failed.failed_before(root, ["k1"], [b]) == {"k1": "again"}  # the latest reason
    failed.clear(root, "k1", [b])
    failed.clear(root, "k2", [b])  # another model's run: model a's record stays
    assert failed.failed_before(root, ["k1", "k2"], [a]) == {"k2": "the encoder died"}


def test_a_library_from_before_the_table_opens_and_gains_it(tmp_path, tiny, capsys):
    write_audio(tmp_path / "m" / "a.wav", 1.5, seed=1)
    library = tmp_path / "lib"
    args = ["embed", tmp_path / "m", "--model", tiny, "--out", tmp_path / "e.npy", "--library", library, "-q"]
    assert cli(capsys, *args)[0] == 0
    shutil.rmtree(library / "failed.lance")  # as a library made before the table was
    assert failed.failed_before(library, [audio_key(tmp_path / "m" / "a.wav")], []) == {}
    rc, _, err = cli(capsys, *args, "--force")
    assert rc == 0, err
    write_audio(tmp_path / "m" / "b.wav", 1.0, seed=2)
    rc, _, err = cli(capsys, *args, "--force")
    assert rc == 0, err
    assert tables.open_table(library, "failed") is not None  # made with the first write


def _rows(npy: Path) -> list[str]:
    with open(npy.with_suffix(".csv"), newline="") as fh:
        return [Path(row["path"]).name for row in csv.DictReader(fh)]


def test_a_file_recorded_as_failed_is_skipped_in_one_line_until_retry_failed(tmp_path, tiny, capsys):
    music = tmp_path / "m"
    for i, name in enumerate(["a.wav", "b.wav", "c.wav"]):
        write_audio(music / name, 1.5, seed=i)
    library = Path(os.environ["MATPAC_LIBRARY"])
    failed.record(library, audio_key(music / "b.wav"), [failed.ANY], REASON)
    out = tmp_path / "e.npy"
    args = ["embed", music, "--model", tiny, "--out", out, "--failures", tmp_path / "f.csv"]
    rc, _, err = cli(capsys, *args)
    assert rc == 1, err
    said = [line for line in err.splitlines() if "b.wav" in line]
    assert said == [f"matpac: skipped {music}/b.wav: failed before: {REASON}; --retry-failed tries it again"], err
    assert "2 done, 0 reused, 1 failed" in err, err
    assert _rows(out) == ["a.wav", "c.wav"]
    assert "b.wav" in (tmp_path / "f.csv").read_text()

    rc, _, err = cli(capsys, *args, "--retry-failed")  # it decodes now: stored, and no longer failed
    assert rc == 0, err
    assert "1 done, 2 reused, 0 failed" in err, err
    assert _rows(out) == ["a.wav", "b.wav", "c.wav"]
    assert lance.dataset(str(library / "failed.lance")).count_rows() == 0
    rc, _, err = cli(capsys, *args)
    assert rc == 0 and "b.wav" not in err, err  # nothing left to skip


def test_tag_skips_a_recorded_file_too_and_retries_it(tmp_path, tiny, capsys):
    music = tmp_path / "m"
    write_audio(music / "a.wav", 1.5, seed=1)
    write_audio(music / "b.wav", 1.5, seed=2)
    failed.record(Path(os.environ["MATPAC_LIBRARY"]), audio_key(music / "b.wav"), [failed.ANY], REASON)
    head = openmic_probe(tmp_path)
    args = ["tag", music, "--model", tiny, "--head", head, "--out", tmp_path / "t.csv"]
    rc, _, err = cli(capsys, *args)
    assert rc == 1 and "failed before: " in err and "--retry-failed" in err, err
    rc, _, err = cli(capsys, *args, "--retry-failed")
    assert rc == 0, err
    assert "b.wav" in (tmp_path / "t.csv").read_text()


def test_a_retried_file_that_fails_in_the_ordinary_way_is_no_longer_skipped(tmp_path, tiny, capsys):
    """Tried again and failing as a file that kills nothing (too short here): its record goes, so
    later runs name the file's own error instead of skipping it for a crash it no longer causes."""
    music = tmp_path / "m"
    write_audio(music / "a.wav", 1.5, seed=1)
    write_audio(music / "b.wav", 0.01, seed=2)
    library = Path(os.environ["MATPAC_LIBRARY"])
    failed.record(library, audio_key(music / "b.wav"), [failed.ANY], REASON)
    args = ["embed", music, "--model", tiny, "--out", tmp_path / "e.npy"]
    rc, _, err = cli(capsys, *args, "--retry-failed")
    assert rc == 1 and "failed before" not in err, err
    assert lance.dataset(str(library / "failed.lance")).count_rows() == 0
    rc, _, err = cli(capsys, *args)
    assert rc == 1 and "b.wav" in err and "failed before" not in err, err


def test_search_and_train_try_a_recorded_file_they_are_given(tmp_path, tiny, capsys):
    """Only embed and tag skip a recorded file (and take --retry-failed): a search query named is
    embedded whatever the library recorded of it."""
    music = tmp_path / "m"
    write_audio(music / "a.wav", 1.5, seed=1)
    write_audio(tmp_path / "q.wav", 1.5, seed=3)
    index = tmp_path / "e.npy"
    assert cli(capsys, "embed", music, "--model", tiny, "--out", index, "-q")[0] == 0
    failed.record(Path(os.environ["MATPAC_LIBRARY"]), audio_key(tmp_path / "q.wav"), [failed.ANY], REASON)
    rc, out, err = cli(capsys, "search", tmp_path / "q.wav", "--index", index)
    assert rc == 0 and "failed before" not in err, err
    assert "a.wav" in out


def test_library_info_counts_failed_files_and_prune_drops_those_gone_from_disk(tmp_path, tiny, capsys):
    music = tmp_path / "m"
    write_audio(music / "a.wav", 1.5, seed=1)
    write_audio(music / "b.wav", 1.5, seed=2)
    library = tmp_path / "lib"
    failed.record(library, audio_key(music / "b.wav"), [failed.ANY], REASON)
    rc, _, err = cli(capsys, "embed", music, "--model", tiny, "--out", tmp_path / "e.npy", "--library", library)
    assert rc == 1 and "failed before" in err, err  # b.wav skipped, its path seen
    rc, out, _ = cli(capsys, "library", "info", "--library", library)
    assert rc == 0 and "failed    1 files runs skip" in out, out
    (music / "b.wav").unlink()
    rc, _, err = cli(capsys, "library", "prune", "--library", library)
    assert rc == 0 and "would drop 1 files" in err and "1 failed rows" in err, err
    rc, _, err = cli(capsys, "library", "prune", "--library", library, "--yes")
    assert rc == 0 and "dropped 1 files" in err, err
    assert lance.dataset(str(library / "failed.lance")).count_rows() == 0
    rc, out, _ = cli(capsys, "library", "info", "--library", library, "--json")
    assert '"failed": 0' in out
