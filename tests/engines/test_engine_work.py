"""The units of work `--engine ray` ships (engines/packs.py, engines/work.py), run here without
Ray: files cut into packs of whole parts, packs encoded with each part summed on the actor, and
the driver's collector merging the parts in any order, each once, into the local engine's
results."""

from __future__ import annotations

import pickle
import random
import sys

import numpy as np
import pytest
from conftest import write_audio

pytestmark = pytest.mark.usefixtures("no_allocator_setting")


@pytest.fixture(scope="module")
def setup(ckpts, tmp_path_factory):
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import AUDIO_EXTENSIONS, discover

    d = tmp_path_factory.mktemp("work")
    for i, (seconds, sr) in enumerate([(3, 16000), (8.5, 44100), (13, 48000), (0.01, 16000)]):
        write_audio(d / f"w{i}.wav", seconds, sr=sr, seed=i)
    (d / "x_broken.wav").write_bytes(b"junk")
    items = discover([str(d)], AUDIO_EXTENSIONS, sys.stdin, False)
    plan = Plan(Predictor.load(str(ckpts["tiny608"]), "cpu", "fp32"), layers=(1, -1), segments=True)
    return items, plan


def _local(items, plan) -> tuple[dict, dict]:
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.events import Listeners

    results, failures = {}, {}
    run(
        RunOptions(),
        items,
        [plan],
        Listeners(failure=lambda e: failures.__setitem__(e.path, e.reason)),
        on_result=lambda r: results.__setitem__(r.item.name, r),
    )
    return results, failures


def _packs(items, plan, pack: int = 4) -> list[bytes]:
    """Every file's packs through decode_files, a task per two files."""
    from matpac_cli.engines.packs import decode_files

    packs = []
    for start in range(0, len(items), 2):
        task = list(range(start, min(start + 2, len(items))))
        batch = {"i": np.array(task), "item": np.array([pickle.dumps(items[i]) for i in task], dtype=object)}
        packs += [row["data"][0] for row in decode_files(batch, (plan.predictor.dims.n_t,), False, pack)]
    return packs


def _answers(items, plan, pack: int = 4, encoder=None) -> list[tuple]:
    """The actor's answers to every pack (two packs a call, batches of 3 chunks): entries."""
    from matpac_cli.engines.packs import Encoder
    from matpac_cli.engines.work import Recipe

    encoder = encoder or type("Encoder", (Encoder,), {"recipes": [Recipe.of(plan, "cpu", 1)], "batch_size": 3})()
    packs = _packs(items, plan, pack)
    random.Random(0).shuffle(packs)
    out = []
    for start in range(0, len(packs), 2):
        res = encoder({"data": np.array(packs[start : start + 2], dtype=object)})
        out += [entry for blob in res["data"] for entry in pickle.loads(blob)]
    return out


@pytest.mark.parametrize("part", [64, 1, 2])
def test_parts_in_any_order_and_twice_give_the_local_results(setup, monkeypatch, part):
    """Whole files (a part each), a part per chunk, and parts of two chunks: the same sums."""
    from matpac_cli.engines import packs
    from matpac_cli.engines.work import Collector
    from matpac_cli.events import Listeners

    monkeypatch.setattr(packs, "PART", part)
    items, plan = setup
    want, want_failed = _local(items, plan)
    answers = _answers(items, plan)
    assert max(e[2] for e in answers) == (0 if part == 64 else 1 if part == 2 else 2)  # 13 s: 3 chunks
    answers = answers + answers[: len(answers) // 2]  # a retried task's answers, again
    random.Random(1).shuffle(answers)
    got, failed, progress, audio = {}, {}, [], []
    collector = Collector(
        items,
        [plan],
        Listeners(
            failure=lambda e: failed.__setitem__(e.path, e.reason),
            progress=lambda i, s: progress.append(i.name),
            audio=audio.append,
        ),
        lambda r: got.__setitem__(r.item.name, r),
    )
    for entry in answers:
        collector.add(*entry)
    collector.finish()
    assert sorted(got) == sorted(want) and len(got) == 3
    assert failed == want_failed and len(failed) == 2  # the broken file and the too-short one
    assert sorted(progress) == sorted(it.name for it in items)  # each file once
    assert sum(audio) == pytest.approx(sum(r.duration_s for r in want.values()) + 0.01, abs=0.02)
    for name, res in want.items():
        np.testing.assert_allclose(got[name].outputs[0].embedding, res.outputs[0].embedding, atol=1e-5)
        assert [s.start_s for s in got[name].outputs[0].segments] == [s.start_s for s in res.outputs[0].segments]
        assert got[name].sample_rate == res.sample_rate and got[name].duration_s == res.duration_s


def test_a_pack_holds_whole_parts_and_about_its_target_of_chunks(setup):
    """A task sends packs of at least `pack` chunks (the last one less), never a part cut in two."""
    from matpac_cli.engines.packs import decode_files

    items, plan = setup
    batch = {"i": np.arange(len(items)), "item": np.array([pickle.dumps(i) for i in items], dtype=object)}
    sizes, facts = [], 0
    for row in decode_files(batch, (plan.predictor.dims.n_t,), False, 2):
        entries = pickle.loads(row["data"][0])
        sizes.append(sum(len(e[3]) for e in entries if e[2] >= 0))
        facts += sum(e[2] < 0 for e in entries)
    assert sizes == [1 + 2, 3, 0] and facts == len(items)  # 3 s, 8.5 s; 13 s; 10 ms (too short), junk


def test_a_file_the_cluster_never_answers_for_is_named(setup):
    from matpac_cli.engines.work import Collector
    from matpac_cli.events import Listeners

    items, plan = setup
    answers = [e for e in _answers(items, plan) if e[0] != 1]
    failed = {}
    collector = Collector(
        items, [plan], Listeners(failure=lambda e: failed.__setitem__(e.path, e.reason)), lambda r: None
    )
    for entry in answers:
        collector.add(*entry)
    collector.finish()
    assert failed[items[1].name] == "no result came back from the Ray cluster"


@pytest.mark.parametrize("left", [1, 2])
def test_files_left_when_the_encoder_kept_dying_are_failed_but_not_given_up_for_good(setup, left):
    """Rounds lost to a dying encoder fail the files left, but none is a `GaveUp` (recorded in the
    library, skipped by later runs): any one of several may have killed it, and a lone file left
    may be innocent too (a model that kills its actor as it loads, a node lost again and again)."""
    from matpac_cli.engines.work import Collector
    from matpac_cli.errors import GaveUp
    from matpac_cli.events import Listeners

    items, plan = setup
    answers = [e for e in _answers(items, plan) if e[0] >= left]
    failed = {}
    collector = Collector(items, [plan], Listeners(failure=lambda e: failed.__setitem__(e.path, e)), lambda r: None)
    for entry in answers:
        collector.add(*entry)
    collector.finish("encoding it killed its actor 3 times")
    lost = [failed[items[i].name] for i in range(left)]
    assert all(e.reason == "encoding it killed its actor 3 times" for e in lost)
    assert not any(isinstance(e, GaveUp) for e in lost)


def test_a_file_whose_decoding_died_three_times_is_given_up_as_its_error(setup):
    """Three tries begun and never ended (their process died): the fourth does not decode the
    file again but sends its facts row with the error; every try after the first is a retry."""
    from matpac_cli.engines.packs import decode_files
    from matpac_cli.engines.work import Attempts, Collector
    from matpac_cli.events import Listeners

    items, plan = setup
    attempts = Attempts()
    for _ in range(3):
        assert attempts.begin(("decode", 0)) == _
    batch = {"i": np.array([0]), "item": np.array([pickle.dumps(items[0])], dtype=object)}
    rows = list(decode_files(batch, (plan.predictor.dims.n_t,), False, attempts=attempts))
    entries = pickle.loads(rows[0]["data"][0])
    assert len(rows) == 1 and [e[2] for e in entries] == [-1]  # the facts only: nothing decoded
    failed = {}
    collector = Collector(
        items, [plan], Listeners(failure=lambda e: failed.__setitem__(e.path, e.reason)), lambda r: None
    )
    collector.add(*entries[0])
    assert failed == {
        items[0].name: "the Ray worker decoding it died 3 times (a crash, or killed for memory?); matpac gave up on it"
    }
    assert attempts.retries() == 3
    again = pickle.loads(next(decode_files(batch, (plan.predictor.dims.n_t,), False, attempts=Attempts()))["data"][0])
    assert [e[2] for e in again] == [0, -1]  # a first try decodes


def test_the_attempts_ledger_holds_only_the_tries_in_flight():
    """A long job's ledger stays small: each key is dropped when its try ends (the ledger lives
    as long as the job, in one actor) and retries are a running count."""
    from matpac_cli.engines.work import Attempts

    attempts = Attempts()
    for i in range(10_000):
        assert attempts.begin((1, ("decode", i))) == 0
        attempts.end((1, ("decode", i)))
    assert attempts.open == {} and attempts.retries() == 0
    attempts.begin("a")  # a try that died ...
    assert attempts.begin("a") == 1 and attempts.retries() == 1  # ... is counted when the unit runs again
    attempts.end("a")
    assert attempts.open == {} and attempts.retries() == 1


def test_the_crash_hook_is_inert_without_the_test_hooks_switch(monkeypatch):
    """MATPAC_TEST_CRASH_ON kills the process decoding a matching file (the tests' stand-in for
    a crashing decoder); shipped code must never do that because of one stray variable."""
    from matpac_cli.pipeline.hooks import crash_on

    monkeypatch.setenv("MATPAC_TEST_CRASH_ON", "c2.wav")
    monkeypatch.delenv("MATPAC_TEST_HOOKS", raising=False)
    assert crash_on() is None
    monkeypatch.setenv("MATPAC_TEST_HOOKS", "1")
    assert crash_on() == "c2.wav"


def test_the_hold_hook_is_inert_without_the_test_hooks_switch(monkeypatch, tmp_path):
    """MATPAC_TEST_HOLD_ON makes decoding a matching file wait for a flag file (the tests' way to
    have the encoder actors idle on cue); like the crash hook, only with MATPAC_TEST_HOOKS=1."""
    from matpac_cli.pipeline.hooks import hold_on

    monkeypatch.setenv("MATPAC_TEST_HOLD_ON", f"m15.wav:{tmp_path / 'go'}")
    monkeypatch.delenv("MATPAC_TEST_HOOKS", raising=False)
    assert hold_on() is None
    monkeypatch.setenv("MATPAC_TEST_HOOKS", "1")
    assert hold_on() == ("m15.wav", str(tmp_path / "go"))


def test_the_encoding_hold_hook_is_inert_without_the_test_hooks_switch(monkeypatch, tmp_path):
    """MATPAC_TEST_HOLD_ENCODING makes an encoder actor's calls wait for a flag file (the tests' way
    to kill an actor known to be mid-call); like the others, only with MATPAC_TEST_HOOKS=1."""
    from matpac_cli.pipeline.hooks import hold_encoding

    monkeypatch.setenv("MATPAC_TEST_HOLD_ENCODING", f"2:{tmp_path / 'go'}")
    monkeypatch.delenv("MATPAC_TEST_HOOKS", raising=False)
    assert hold_encoding() is None
    monkeypatch.setenv("MATPAC_TEST_HOOKS", "1")
    assert hold_encoding() == (2, str(tmp_path / "go"))


def test_a_model_an_actor_cannot_load_stops_the_job_in_one_line(setup, tmp_path):
    from dataclasses import replace

    from matpac_cli.engines.packs import Encoder
    from matpac_cli.engines.work import Collector, Recipe
    from matpac_cli.errors import ModelError
    from matpac_cli.events import Listeners

    items, plan = setup
    wrong = replace(Recipe.of(plan, "cpu", 1), sha256="0" * 64)  # this node's copy is another file
    encoder = type("Encoder", (Encoder,), {"recipes": [wrong]})()
    part = next(e for e in _answers(items, plan, encoder=encoder) if e[2] >= 0)
    collector = Collector(items, [plan], Listeners(), lambda r: None)
    with pytest.raises(ModelError, match="is not the driver's: sha256"):
        collector.add(*part)


def test_actors_use_the_drivers_linear_layers(setup, monkeypatch):
    """A node whose own rule would pick the other kind (an Intel worker for an AMD driver) still
    runs the layers the driver's manifest records."""
    from matpac_cli.engines.work import Recipe

    _, plan = setup
    recipe = Recipe.of(plan, "cpu", 1)
    assert recipe.linear == plan.predictor.encoder.linear_kind
    monkeypatch.setenv("MATPAC_CPU_LINEAR", "plain" if recipe.linear == "onednn" else "onednn")
    assert recipe.load().predictor.encoder.linear_kind == recipe.linear


def test_a_worker_loads_torch_as_it_unpickles_its_task_not_in_decoding_threads():
    """Ray Data runs a decode task's UDF in threads; a first `import torch` in two of them at once
    fails half-initialised ('torch has no attribute _subclasses'). Importing the worker module
    (what unpickling a task does, in the worker's main thread) must load torch first."""
    import subprocess

    code = "import sys, matpac_cli.engines.packs; sys.exit(0 if 'torch' in sys.modules else 3)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_a_part_the_encoder_fails_on_fails_alone_not_its_pack(setup):
    """An encoder error on a pack's batch is retried part by part: only the file whose chunk the
    encoder cannot take fails (named, with the node), the pack's other files get their sums."""
    from matpac_cli.engines.packs import Encoder, decode_files
    from matpac_cli.engines.work import Recipe

    items, plan = setup
    batch = {"i": np.arange(3), "item": np.array([pickle.dumps(i) for i in items[:3]], dtype=object)}
    entries = [
        e for row in decode_files(batch, (plan.predictor.dims.n_t,), False, 64) for e in pickle.loads(row["data"][0])
    ]
    bad = next(j for j, e in enumerate(entries) if e[0] == 1 and e[2] == 0)
    i, grid, part, pairs = entries[bad]
    entries[bad] = (i, grid, part, [(w, np.zeros((2, 2, 2), np.float32)) for w, _ in pairs])  # no waveform
    encoder = type("Encoder", (Encoder,), {"recipes": [Recipe.of(plan, "cpu", 1)], "batch_size": 8})()
    res = encoder({"data": np.array([pickle.dumps(entries)], dtype=object)})
    answers = {(e[0], e[2]): e[3] for e in pickle.loads(res["data"][0])}
    assert isinstance(answers[(1, 0)], str) and answers[(1, 0)].startswith("the encoder failed on Ray node ")
    assert not isinstance(answers[(0, 0)], str) and not isinstance(answers[(2, 0)], str)


def test_a_run_s_per_file_work_never_scans_the_heap_it_started_with(setup):
    """During a run (either engine, through `engines.run`) what was alive as it started is frozen
    out of the garbage collector's scans and young objects are collected in bigger steps (full
    collections over torch's heap were more than half of a Ray driver's time per file); the
    collector is as it was once the run ends: objects made before it are collectable again, and
    where the process had frozen its heap itself (the CLI does, after start-up) it stays frozen."""
    import gc

    from matpac_cli.config import RunOptions
    from matpac_cli.engines import YOUNG, run

    items, plan = setup
    before, seen, was = gc.get_threshold(), [], gc.get_freeze_count()  # an in-process CLI test froze it
    gc.unfreeze()
    try:
        run(
            RunOptions(),
            items[:1],
            [plan],
            on_result=lambda r: seen.append((gc.get_freeze_count(), gc.get_threshold())),
        )
        assert seen and seen[0][0] > 10_000 and seen[0][1][0] >= YOUNG
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
        gc.freeze()
        frozen = gc.get_freeze_count()
        run(RunOptions(), items[:1], [plan])
        assert gc.get_threshold() == before and gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()
        if was:
            gc.freeze()


def test_runs_in_two_threads_keep_the_collector_settled_till_the_last_ends():
    """The first run to end (in one thread) leaves the collector settled while another runs."""
    import gc
    import threading

    from matpac_cli.engines import YOUNG, settled

    before, inside, entered, go = gc.get_threshold(), [], threading.Event(), threading.Event()

    def long_run() -> None:
        with settled():
            entered.set()
            go.wait(10)
            inside.append(gc.get_threshold()[0])

    other = threading.Thread(target=long_run)
    with settled():
        other.start()
        entered.wait(10)  # both runs open; this one ends first
    go.set()
    other.join(10)
    assert inside == [max(YOUNG, before[0])] and gc.get_threshold() == before
