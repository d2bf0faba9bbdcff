"""The library's side of a job's run (`jobs.stored`): what a re-run costs per file it holds.

A re-run over 100,000 files the library holds hands them on without encoding: where the job
takes them together (`on_result.found_many`, with `lean`), in one call of columns, not a
`FileResult`, a callback and a facts dict per file."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import write_audio


def _run(library_root, predictor, folder, on_result) -> Counter:
    from matpac_cli.config import RunOptions
    from matpac_cli.events import NoEvents
    from matpac_cli.jobs import stored
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import discover

    library, found = stored.open_library(library_root), Counter()
    try:
        options = RunOptions(batch_size=2, workers=1)
        stored.run(library, options, discover([str(folder)]), [Plan(predictor)], NoEvents(), on_result, found, None, [])
    finally:
        stored.close(library, SimpleNamespace(library=None))
    return found


def test_a_re_run_hands_the_files_the_library_holds_on_together_as_columns(predictor, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        write_audio(folder / f"a{i}.wav", 1.0 + i, seed=i)
    first: list = []
    _run(tmp_path / "lib", predictor, folder, first.append)
    assert [r.found for r in first] == [None] * 3  # encoded, and stored
    write_audio(folder / "b.wav", 0.5, seed=9)

    one, many = [], []

    def on_result(res) -> None:
        one.append(res)

    on_result.found_many = lambda items, keys, facts: many.append((items, keys, facts))
    found = _run(tmp_path / "lib", predictor, folder, on_result)
    assert [r.item.name for r in one] == [str(folder / "b.wav")]  # only the file encoded, as a result
    assert len(many) == 1  # the three the library holds: one call
    items, keys, facts = many[0]
    assert [i.name for i in items] == [str(folder / f"a{i}.wav") for i in range(3)]
    assert keys == [r.key for r in first]
    assert facts["duration_s"] == pytest.approx([1.0, 2.0, 3.0])
    assert facts["sample_rate"] == [16000] * 3 and facts["channels"] == [1] * 3 and facts["truncated"] == [None] * 3
    assert found == Counter({"same path": 3})

    # a job that takes each file as a result hears the same files, with the same facts
    each: list = []
    assert _run(tmp_path / "lib", predictor, folder, each.append) == Counter({"same path": 4})
    assert [(r.item.name, r.key, r.duration_s, r.sample_rate, r.truncated) for r in each[:3]] == [
        (i.name, k, d, r, c)
        for i, k, d, r, c in zip(items, keys, facts["duration_s"], facts["sample_rate"], facts["truncated"])
    ]


def test_a_file_cut_short_is_still_marked_when_the_library_hands_it_on(predictor, tmp_path):
    """The facts handed on together keep a truncation: the re-run's summary and rows say it."""
    from matpac_cli.config import RunOptions
    from matpac_cli.jobs.embed import EmbedConfig, embed
    from matpac_cli.pipeline.discovery import discover

    folder = tmp_path / "in"
    write_audio(folder / "whole.wav", 1.0, seed=1)
    cut = write_audio(folder / "cut.wav", 2.0, seed=2)
    cut.write_bytes(cut.read_bytes()[:-16000])  # the header still promises 2 s
    config = EmbedConfig(out=tmp_path / "e.npy", library=tmp_path / "lib", options=RunOptions(batch_size=2, workers=1))
    first = embed(discover([str(folder)]), predictor, config)
    assert first.truncated == [str(cut)] and first.done == 2
    (tmp_path / "e.npy").unlink()  # the output written again, every row from the library
    again = embed(discover([str(folder)]), predictor, config)
    assert again.reused == 2 and again.done == 0
    assert again.truncated == [str(cut)] and again.audio_s == pytest.approx(first.audio_s)


def test_a_re_run_makes_no_object_and_no_python_hash_per_file_the_library_holds(predictor, tmp_path, monkeypatch):
    """At 100,000 files held, a `Known` per file (`Library.identify`) and an item's hash per look-up
    (a Python call: `Item.__hash__`) cost half a second: the files found are handed on as columns,
    and the job keeps its rows by name."""
    from matpac_cli.config import RunOptions
    from matpac_cli.jobs.embed import EmbedConfig, embed
    from matpac_cli.library import bypath
    from matpac_cli.pipeline.discovery import Item, discover

    folder = tmp_path / "in"
    for i in range(6):
        write_audio(folder / f"a{i}.wav", 0.5, seed=i)
    config = EmbedConfig(out=tmp_path / "e.npy", library=tmp_path / "lib", options=RunOptions(batch_size=2, workers=1))
    assert embed(discover([str(folder)]), predictor, config).done == 6
    write_audio(folder / "b.wav", 0.5, seed=9)
    items = discover([str(folder)])
    calls = Counter()
    hashed, known = Item.__hash__, bypath.Known.__init__
    monkeypatch.setattr(Item, "__hash__", lambda self: calls.update(["hash"]) or hashed(self))
    monkeypatch.setattr(bypath.Known, "__init__", lambda self, *a: calls.update(["known"]) or known(self, *a))
    again = embed(items, predictor, config)
    monkeypatch.undo()
    assert (again.reused, again.done) == (6, 1)
    assert calls["known"] == 0 and calls["hash"] < 6, calls  # the new file's own look-ups alone


def test_two_inputs_of_one_name_are_refused_before_a_model_loads(tmp_path):
    """Through the Python API, two different files given under one name (the output's rows are
    named, and the job keeps its results by name): one line, not one file's vector under both."""
    from matpac_cli.errors import UsageError
    from matpac_cli.jobs.embed import EmbedConfig, check_inputs
    from matpac_cli.pipeline.discovery import Item

    for d in ("d0", "d1"):
        write_audio(tmp_path / d / "f.wav", 1.0)
    items = [Item("x.wav", tmp_path / "d0" / "f.wav"), Item("x.wav", tmp_path / "d1" / "f.wav")]
    with pytest.raises(UsageError, match="two inputs are named x.wav"):
        check_inputs(EmbedConfig(out=tmp_path / "e.npy"), items)
    assert check_inputs(EmbedConfig(out=tmp_path / "e.npy"), items[:1]) == []
