"""`tag` without segments takes the files the library holds without their vectors, and scores them
a batch at a time (`jobs.tag_score`): a re-run reads no file's result through `Library.lookup`,
takes the vectors `BATCH_FILES` at a time, and writes the rows a run without the library writes
(scores to 1e-6), to a file (in the inputs' order) or stdout (in the order files finished); with
heads on two encoders (two plans, each file handed on alone) too. Real files, a real library in
the test's folder, the tiny checkpoints; `Library.lookup` and `Held.vectors` are counted, not
replaced."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import write_audio
from probes import openmic_probe

from matpac_cli import Listeners, Predictor, TagConfig, discover, tag
from matpac_cli.jobs import tag_score
from matpac_cli.jobs.tag import Group, build_heads
from matpac_cli.library.held import Held
from matpac_cli.library.store import Library


@pytest.fixture(scope="module")
def models(ckpts) -> dict[str, Predictor]:
    return {name: Predictor.load(str(ckpts[name]), device="cpu", precision="fp32") for name in ckpts}


def _groups(models: dict, ckpts: dict, folder: Path, two: bool) -> list[Group]:
    """The AudioSet head on tiny992_as; with `two`, an openmic probe on tiny608 as well."""
    audioset = models["tiny992_as"]
    groups = [Group(str(ckpts["tiny992_as"]), build_heads(["events"], audioset, None, False), audioset)]
    if two:
        other = models["tiny608"]
        probe = openmic_probe(folder)
        groups.append(Group(str(ckpts["tiny608"]), build_heads([str(probe)], other, None, False), other))
    return groups


def _files(folder: Path, n: int, first: int = 0) -> Path:
    for i in range(first, first + n):
        write_audio(folder / f"f{i}.wav", 1.0 + 0.3 * i, sr=16000, seed=i)
    return folder


def _tag(folder: Path, groups: list, library, out: Path | None, **kw) -> tuple[list[dict], object]:
    """The rows of `tag` (to `out`, or stdout), and its summary."""
    text = io.StringIO()
    config = TagConfig(top_k=3, library=library, options=_one_worker(), **kw)
    summary = tag(discover([str(folder)]), groups, config, out, text, Listeners())
    got = text.getvalue() if out is None else out.read_text()
    return list(csv.DictReader(io.StringIO(got))), summary


def _one_worker():
    from matpac_cli import RunOptions

    return RunOptions(batch_size=2, workers=1)


def _same_rows(got: list[dict], want: list[dict]) -> None:
    """The same rows in the same order, scores to 1e-6 (a head on a matrix, not a row)."""
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == [
        {k: v for k, v in r.items() if k != "score"} for r in want
    ]
    np.testing.assert_allclose([float(r["score"]) for r in got], [float(r["score"]) for r in want], atol=1e-6)


@pytest.fixture()
def counted(monkeypatch) -> dict[str, list]:
    """`Library.lookup`'s keys and `Held.vectors`' batch sizes, each call recorded (the real
    call made); batches of 2 files."""
    calls: dict[str, list] = {"lookup": [], "vectors": []}
    lookup, vectors = Library.lookup, Held.vectors

    def counting_lookup(self, keys, *args):
        calls["lookup"].append(len(keys))
        return lookup(self, keys, *args)

    def counting_vectors(self, keys):
        calls["vectors"].append(len(keys))
        return vectors(self, keys)

    monkeypatch.setattr(Library, "lookup", counting_lookup)
    monkeypatch.setattr(Held, "vectors", counting_vectors)
    monkeypatch.setattr(tag_score, "BATCH_FILES", 2)
    return calls


@pytest.mark.parametrize("two", [False, True], ids=["one-encoder", "two-encoders"])
@pytest.mark.parametrize("to", ["file", "stdout"])
def test_a_re_run_scores_the_library_s_files_in_batches_without_a_lookup_each(
    tmp_path, ckpts, models, counted, two, to
):
    folder = _files(tmp_path / "in", 5)
    groups = _groups(models, ckpts, tmp_path, two)
    out = tmp_path / "tags.csv" if to == "file" else None
    plain, _ = _tag(folder, groups, False, out)
    first, summary = _tag(folder, groups, tmp_path / "lib", out, force=True)
    assert summary.done == 5 and not counted["vectors"]
    _same_rows(first, plain)
    counted["lookup"].clear()

    again, summary = _tag(folder, groups, tmp_path / "lib", out, force=True)
    assert summary.reused == 5 and summary.done == 0 and summary.audio_s == pytest.approx(5 + 0.3 * 10)
    assert counted["lookup"] == []  # no file's vectors read through `lookup` (was: every key, per plan)
    assert counted["vectors"] == [n for n in (2, 2, 1) for _ in groups]  # a batch's vectors at a time, per plan
    _same_rows(again, plain)


def test_stdout_keeps_the_order_files_finished_in_found_first_then_encoded(tmp_path, ckpts, models, counted):
    """Three files in the library and two new: the found ones leave first (in the inputs' order,
    a batch of 2, then the last one as soon as an encoded file finishes), then the encoded ones;
    each with the scores a run without the library gives it."""
    folder = _files(tmp_path / "in", 3)
    groups = _groups(models, ckpts, tmp_path, False)
    _tag(folder, groups, tmp_path / "lib", None)
    _files(folder, 2, first=3)
    rows, summary = _tag(folder, groups, tmp_path / "lib", None)
    assert summary.reused == 3 and summary.done == 2 and counted["lookup"] == []
    order = list(dict.fromkeys(r["path"] for r in rows))
    assert order[:3] == [str(folder / f"f{i}.wav") for i in range(3)]
    assert sorted(order[3:]) == [str(folder / f"f{i}.wav") for i in (3, 4)]
    plain, _ = _tag(folder, groups, False, None)
    by_path = {p: [r for r in plain if r["path"] == p] for p in order}
    _same_rows(rows, [r for p in order for r in by_path[p]])


def test_a_cut_file_from_the_library_keeps_its_mark_and_counts(tmp_path, ckpts, models, counted):
    """The facts handed on in bulk (`found_many`): duration and the truncated mark reach the rows
    as the file's own result did."""
    folder = _files(tmp_path / "in", 2)
    data = (folder / "f1.wav").read_bytes()
    (folder / "f1.wav").write_bytes(data[: len(data) // 2])  # its header promises twice what it holds
    groups = _groups(models, ckpts, tmp_path, False)
    first, summary = _tag(folder, groups, tmp_path / "lib", tmp_path / "t.csv")
    assert summary.truncated == [str(folder / "f1.wav")]
    again, summary = _tag(folder, groups, tmp_path / "lib", tmp_path / "t.csv", force=True)
    assert summary.reused == 2 and summary.truncated == [str(folder / "f1.wav")] and counted["lookup"] == []
    _same_rows(again, first)
    assert {r["path"]: r["truncated"] for r in again} == {str(folder / "f0.wav"): "0", str(folder / "f1.wav"): "1"}


def test_two_inputs_of_the_same_audio_share_one_stored_vector_and_both_get_rows(tmp_path, ckpts, models, counted):
    folder = _files(tmp_path / "in", 3)
    (folder / "f3.wav").write_bytes((folder / "f1.wav").read_bytes())  # the same audio: one key
    groups = _groups(models, ckpts, tmp_path, False)
    plain, _ = _tag(folder, groups, False, None)
    _tag(folder, groups, tmp_path / "lib", None)
    again, summary = _tag(folder, groups, tmp_path / "lib", tmp_path / "t.csv")
    assert summary.reused == 4 and counted["lookup"] == [] and counted["vectors"] == [2, 2]
    _same_rows(again, plain)


class _StopAtEncoding(Listeners):
    """Events that note the rows written so far once the library has handed its files on (the
    run is about to encode), and stop the run there as Ctrl-C would, where asked."""

    def __init__(self, text: io.StringIO, stop: bool) -> None:
        super().__init__()
        self.text, self.stop, self.seen = text, stop, None

    def encoding(self, items) -> None:
        self.seen = self.text.getvalue()
        if self.stop:
            raise KeyboardInterrupt


@pytest.mark.parametrize("two", [False, True], ids=["one-encoder", "two-encoders"])
def test_stdout_has_the_library_s_files_before_encoding_and_after_a_stop(tmp_path, ckpts, models, counted, two):
    """Three files in the library and one new, to stdout: with one encoder the library's files'
    rows are out before the encoder starts (they waited behind the first file encoded), and a run
    stopped there (Ctrl-C) has written them all, as before the batches: the summary counts them."""
    folder = _files(tmp_path / "in", 3)
    groups = _groups(models, ckpts, tmp_path, two)
    _tag(folder, groups, tmp_path / "lib", None)
    _files(folder, 1, first=3)
    found = {str(folder / f"f{i}.wav") for i in range(3)}
    config = TagConfig(top_k=3, library=tmp_path / "lib", options=_one_worker())
    text = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        tag(discover([str(folder)]), groups, config, None, text, _StopAtEncoding(text, stop=True))
    assert {r["path"] for r in csv.DictReader(io.StringIO(text.getvalue()))} == found
    if not two:  # the new file is still new: it was never encoded
        text = io.StringIO()
        events = _StopAtEncoding(text, stop=False)
        tag(discover([str(folder)]), groups, config, None, text, events)
        assert {r["path"] for r in csv.DictReader(io.StringIO(events.seen))} == found


def test_segments_from_the_library_are_read_a_batch_at_a_time_and_give_the_first_run_s_rows(
    tmp_path, ckpts, models, counted, monkeypatch
):
    """`tag --segments` run again on what the library holds: every file found, and its clip
    embedding and segments read `SEGMENT_FILES` at a time (one `Library.lookup`, one read of the
    segments table a batch; was one for every file at once); the rows are the first run's and a
    run without the library's, the short tail merged (`min_segment`) and the cut file marked."""
    monkeypatch.setattr(tag_score, "SEGMENT_FILES", 2, raising=False)
    reads, segments_of = [], Library._segments_of

    def counting_segments_of(self, keys, setting):
        reads.append(len(keys))
        return segments_of(self, keys, setting)

    monkeypatch.setattr(Library, "_segments_of", counting_segments_of)
    folder = tmp_path / "in"
    for i, seconds in enumerate([10.5, 1.0, 12.0, 21.0, 3.0]):
        write_audio(folder / f"f{i}.wav", seconds, sr=16000, seed=i)
    data = (folder / "f4.wav").read_bytes()
    (folder / "f4.wav").write_bytes(data[: len(data) // 2])  # its header promises twice what it holds
    groups, out = _groups(models, ckpts, tmp_path, False), tmp_path / "tags.csv"
    plain, _ = _tag(folder, groups, False, out, segments=True)
    first, summary = _tag(folder, groups, tmp_path / "lib", out, segments=True, force=True)
    assert summary.done == 5
    _same_rows(first, plain)
    counted["lookup"].clear()
    reads.clear()

    again, summary = _tag(folder, groups, tmp_path / "lib", out, segments=True, force=True)
    assert summary.reused == 5 and summary.done == 0 and summary.truncated == [str(folder / "f4.wav")]
    assert counted["lookup"] == [2, 2, 1] and reads == [2, 2, 1]
    _same_rows(again, first)
    spans = {(float(r["start_s"]), float(r["end_s"])) for r in again if r["start_s"] and r["path"].endswith("f0.wav")}
    assert len(spans) == 1 and min(spans)[0] == 0.0 and min(spans)[1] > 10.4  # its 0.5-second tail merged
    assert {r["truncated"] for r in again if r["path"].endswith("f4.wav")} == {"1"}
