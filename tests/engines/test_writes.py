"""The workers write, the driver steers (engines/writes.py, library/shards.py), run here without
Ray on a real Lance library: files decoded and packed, finished on the encoder actor, written
into the library by a write task, and the driver handed only each file's status and the
fragments' metadata, which it commits; the vectors it then reads back are the local engine's."""

from __future__ import annotations

import pickle
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import write_audio

from matpac_cli.library.store import Library

pytestmark = pytest.mark.usefixtures("no_allocator_setting")


@pytest.fixture(scope="module")
def files(ckpts, tmp_path_factory):
    """Three files (one of three chunks, cut in two parts where a part is two chunks), one too
    short to embed, one broken; the plan keeps layers 1 and the last."""
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import AUDIO_EXTENSIONS, discover

    d = tmp_path_factory.mktemp("writes")
    for i, (seconds, sr) in enumerate([(3, 16000), (8.5, 44100), (13, 48000), (0.01, 16000)]):
        write_audio(d / f"w{i}.wav", seconds, sr=sr, seed=i)
    (d / "x_broken.wav").write_bytes(b"junk")
    items = discover([str(d)], AUDIO_EXTENSIONS, sys.stdin, False)
    return items, Plan(Predictor.load(str(ckpts["tiny608"]), "cpu", "fp32"), layers=(1, -1))


def _through(items, plan, library, shard_of=lambda shard: shard, then=lambda: None, copies: int = 1):
    """Every file through decoding (keys from the sink), the finishing actor, the write tasks
    (two answer rows each; `copies` times over, as retried tasks answer again) and, after
    `then`, the driver's collector: (results by name, failures, warnings, the entries the
    driver received)."""
    from matpac_cli.engines.work import Collector
    from matpac_cli.engines.writes import write_files
    from matpac_cli.events import Listeners
    from matpac_cli.library.shards import sink

    known = library.identify(items)
    sunk = sink(library, items, {items[i]: k.key for i, k in known.items()}, [plan])
    rows = _encoded(items, plan, [sunk.key_of(item.name) for item in items])
    shard = shard_of(sunk.shard())
    answers = [write_files({"data": np.array(rows[s : s + 2], dtype=object)}, shard) for s in range(0, len(rows), 2)]
    answers *= copies
    then()
    results, failures, warnings = {}, {}, []
    heard = Listeners(failure=lambda e: failures.__setitem__(e.path, e.reason), warning=warnings.append)
    collector = Collector(items, [plan], heard, lambda r: results.__setitem__(r.item.name, r), sunk)
    received = [entry for answer in answers for entry in pickle.loads(answer["data"][0])]
    for entry in received:
        collector.add(*entry)
    collector.finish()
    sunk.close()
    return results, failures, warnings, received


def _encoded(items, plan, keys: list[str], finish: bool = True) -> list[bytes]:
    """Every file decoded (keyed `keys`) and through the encoder actor (`finish`: files whole in
    a pack finished there): its answer rows, as the write tasks take them."""
    from matpac_cli.engines.packs import Encoder, decode_files
    from matpac_cli.engines.work import Recipe

    batch = {
        "i": np.arange(len(items)),
        "item": np.array([pickle.dumps(item) for item in items], dtype=object),
        "key": np.array(keys, dtype=object),
    }
    packs = [row["data"][0] for row in decode_files(batch, (plan.predictor.dims.n_t,), False, 2)]
    recipe = {"recipes": [Recipe.of(plan, "cpu", 1)], "batch_size": 3, "finish": finish}
    encoder = type("Encoder", (Encoder,), recipe)()
    return [blob for pack in packs for blob in encoder({"data": np.array([pack], dtype=object)})["data"]]


def _local(items, plan) -> dict:
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run

    results = {}
    run(RunOptions(), items, [plan], on_result=lambda r: results.__setitem__(r.item.name, r))
    return results


def test_workers_store_whole_files_and_the_driver_receives_their_status_only(files, tmp_path, monkeypatch):
    from matpac_cli.engines import packs
    from matpac_cli.engines.work import FRAGMENTS, WRITTEN
    from matpac_cli.library.held import held
    from matpac_cli.library.key import Setting

    items, plan = files
    local = _local(items, plan)
    monkeypatch.setattr(packs, "PART", 2)  # w2's three chunks: two parts, in two packs
    library = Library(tmp_path / "lib")
    results, failures, warnings, received = _through(items, plan, library)
    library.close()

    stored = sorted(name for name, r in results.items() if r.stored)
    assert [n.rsplit("/", 1)[-1] for n in stored] == ["w0.wav", "w1.wav"]  # whole in a pack each
    assert sorted(n.rsplit("/", 1)[-1] for n in failures) == ["w3.wav", "x_broken.wav"] and not warnings
    assert all(r.outputs[0].embedding is None and r.key for r in results.values() if r.stored)
    w2 = next(r for n, r in results.items() if n.endswith("w2.wav"))  # parts in two packs: the driver's
    np.testing.assert_allclose(w2.outputs[0].embedding, local[w2.item.name].outputs[0].embedding, atol=1e-6, rtol=0)
    for kind in (WRITTEN, FRAGMENTS):
        assert all(len(pickle.dumps(e)) < 1024 for e in received if e[2] == kind)
    assert not any(isinstance(v, np.ndarray) for e in received if e[2] == WRITTEN for v in e[3].values())

    got = held(tmp_path / "lib", [results[n].key for n in stored], Setting.of(plan), plan.resolved_layers())
    for name in stored:
        vectors = got.vectors([results[name].key])[0]  # (2, E): layer 1 and the last
        np.testing.assert_allclose(vectors, local[name].outputs[0].embedding, atol=1e-6, rtol=0)
        assert results[name].duration_s == local[name].duration_s


@pytest.mark.parametrize("segments", [False, True], ids=["clips", "segments"])
def test_a_library_the_workers_cannot_see_is_said_once_and_the_driver_stores_the_files(files, tmp_path, segments):
    """A write task on a node that does not see the library hands its files back: said once,
    and the driver stores them, each handed on whole (with its segments where the plan keeps them)."""
    items, plan = files
    plan = replace(plan, segments=segments)
    local = _local(items, plan)
    library = Library(tmp_path / "lib")
    results, _, warnings, _ = _through(items, plan, library, lambda shard: replace(shard, token=".not-here"))
    library.close()
    assert len(warnings) == 1 and "not seen on Ray node" in warnings[0] and "the driver stores" in warnings[0]
    whole = [r for r in results.values() if not r.stored]
    assert len(whole) == 3 and not any(r.stored for r in results.values())
    for r in whole:
        want = local[r.item.name].outputs[0]
        np.testing.assert_allclose(r.outputs[0].embedding, want.embedding, atol=1e-6, rtol=0)
        assert [(s.start_s, s.end_s) for s in r.outputs[0].segments] == [(s.start_s, s.end_s) for s in want.segments]
        assert bool(want.segments) == segments


def test_a_file_a_retried_task_wrote_twice_is_stored_once(files, tmp_path):
    """Ray reruns a decoding task whose worker died, and its files come back twice: the second
    copy's fragments are never committed, so the library holds each file's rows once."""
    import lance

    items, plan = files
    library = Library(tmp_path / "lib")
    results, _, _, _ = _through(items, plan, library, copies=2)
    library.close()
    stored = [r.key for r in results.values() if r.stored]
    rows = lance.dataset(str(tmp_path / "lib" / "clips.lance")).to_table(columns=["key"]).column("key").to_pylist()
    assert stored and sorted(rows) == sorted(k for k in stored for _ in plan.resolved_layers())


def test_a_library_that_fails_mid_run_fails_the_files_it_did_not_keep_and_the_run_goes_on(files, tmp_path, monkeypatch):
    """The workers wrote their files, then the library cannot be committed to (here its
    transactions folder is a file, as on a share gone read-only): those files fail, named (their
    vectors were never on the driver), the file the driver holds is handed on whole, nothing
    raises."""
    import shutil

    from matpac_cli.engines import packs

    items, plan = files
    monkeypatch.setattr(packs, "PART", 2)  # w2 in two parts: the driver's to store
    lib = tmp_path / "lib"
    library = Library(lib)

    def break_it() -> None:  # still read, no longer written: a commit cannot record its transaction
        shutil.rmtree(lib / "clips.lance" / "_transactions", ignore_errors=True)
        (lib / "clips.lance" / "_transactions").write_text("not a folder")

    results, failures, _, _ = _through(items, plan, library, then=break_it)
    library.close()
    lost = sorted(n.rsplit("/", 1)[-1] for n, why in failures.items() if "not kept" in why)
    assert lost == ["w0.wav", "w1.wav"], failures
    assert "cannot write" in failures[next(n for n in failures if n.endswith("w0.wav"))]
    assert [n.rsplit("/", 1)[-1] for n in results] == ["w2.wav"] and results[next(iter(results))].outputs[
        0
    ].embedding is not None


def test_an_actor_s_answer_is_a_row_per_finished_file_and_no_empty_row(files, tmp_path):
    """A pack of files that all finish on the actor answers a row each, and no empty row beside
    them (one took a file's place in a write task, and crossed to the driver as an empty answer)."""
    from matpac_cli.engines.packs import DONE, Encoder, decode_files
    from matpac_cli.engines.work import Recipe

    items, plan = files
    good = [item for item in items if item.name.endswith(("w0.wav", "w1.wav"))]
    batch = {
        "i": np.arange(len(good)),
        "item": np.array([pickle.dumps(item) for item in good], dtype=object),
        "key": np.array(["k0", "k1"], dtype=object),
    }
    packs = [row["data"][0] for row in decode_files(batch, (plan.predictor.dims.n_t,), False)]
    encoder = type("Encoder", (Encoder,), {"recipes": [Recipe.of(plan, "cpu", 1)], "finish": True})()
    rows = [pickle.loads(b) for pack in packs for b in encoder({"data": np.array([pack], dtype=object)})["data"]]
    assert sorted(len(r) for r in rows) == [1, 1] and all(r[0][2] == DONE for r in rows)


def test_workers_store_a_file_s_segments_beside_its_clip_rows_and_the_driver_gets_its_status(files, tmp_path):
    """`tag --segments`: the actor finishes each file with its segments, the write task stores them
    as fragments of the segments table beside the clips', the driver commits both and receives
    each file's status only (under a kilobyte); the library then holds the local engine's
    segments (spans, columns and vectors) for every file the workers stored."""
    from matpac_cli.engines.work import FRAGMENTS, WRITTEN
    from matpac_cli.library.key import Setting

    items, plan = files
    plan = replace(plan, segments=True)
    local = _local(items, plan)
    library = Library(tmp_path / "lib")
    results, failures, warnings, received = _through(items, plan, library)
    stored = {name: r for name, r in results.items() if r.stored}
    assert len(stored) == 3 and len(failures) == 2 and not warnings
    assert all(len(pickle.dumps(e)) < 1024 for e in received if e[2] in (WRITTEN, FRAGMENTS))
    found = library.lookup([r.key for r in stored.values()], Setting.of(plan), plan.resolved_layers(), True)
    library.close()
    for name, r in stored.items():
        want, got = local[name].outputs[0].segments, found[r.key].segments
        assert [(s.start_s, s.end_s, s.columns) for s in got] == [(s.start_s, s.end_s, s.columns) for s in want]
        np.testing.assert_allclose(
            np.stack([s.embedding for s in got]), np.stack([s.embedding for s in want]), atol=1e-6
        )
    assert max(len(found[r.key].segments) for r in stored.values()) == 3  # w2's three chunks


def test_a_file_whose_parts_came_before_its_whole_answer_advances_the_progress_once(files, monkeypatch):
    """A retried task answers for a file whole (finished on its actor) after a first try sent
    some of its parts: the progress advances by the file's audio once, not by those parts again."""
    from matpac_cli.engines import packs
    from matpac_cli.engines.work import Collector
    from matpac_cli.events import Listeners

    items, plan = files

    def answers(finish: bool) -> list[tuple]:
        keys = [f"k{i}" for i in range(len(items))]
        return [entry for blob in _encoded(items, plan, keys, finish) for entry in pickle.loads(blob)]

    w2 = next(i for i, item in enumerate(items) if item.name.endswith("w2.wav"))
    with monkeypatch.context() as m:
        m.setattr(packs, "PART", 2)  # the first try: w2 in two parts, the driver's to sum
        first = [e for e in answers(False) if e[0] == w2 and e[2] in (-1, 0)]  # its facts and first part only
    again = answers(True)  # the retry: w2 whole in one pack, finished on the actor
    assert any(e[0] == w2 and e[2] < -1 for e in again) and any(e[2] == 0 and e[3][4] for e in first)

    def audio_heard(entries: list[tuple]) -> float:
        heard: list[float] = []
        collector = Collector(items, [plan], Listeners(audio=heard.append), lambda r: None)
        for entry in entries:
            collector.add(*entry)
        collector.finish()
        return sum(heard)

    assert audio_heard(first + again) == pytest.approx(audio_heard(again))
