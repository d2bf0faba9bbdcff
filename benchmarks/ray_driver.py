"""What one `--engine ray` driver costs per file, and how many H200s it can feed (not a test).

The driver's side of a Ray run, with matpac's own code: the actors' answers (one pickled list
per pack, `engines.packs`) unpickled and merged by `engines.work.Collector`, each finished file
handed on (`pipeline.assemble.hand_on`); then, apart, what the job does with each file on the
driver: the library's `add` and its commits (a real Lance library in a temporary folder). Where
the workers write the library themselves (`embed` or `tag --segments` into a library,
`engines.writes`), the driver's whole share is measured apart: the write tasks' answers (a
status per file and the fragments' metadata), handed on, and the fragments committed; with
segments, each batch's clip embeddings and segments read back from the library to be scored
(`jobs.tag_score.Waiting`: the heads' own work, the same on either path, is left out).
The answers are built with the shapes a full-size ViT-B gives (random values, the release's
layer and embedding sizes), so no encoder runs: this measures the driver, not the cluster.

Three workloads, as the issue measured them: `embed` of 3.5-minute tracks, `tag --segments` of
3.5-minute tracks (the last layer's mean per chunk travels too), and `embed` of 6-second clips.
The H200 figure is a projection: one H200 encodes about 10,000 chunks a second
(benchmarks/RESULTS.md), so a driver that takes F files a second of C chunks each feeds
F x C / 10,000 of them.

    python benchmarks/ray_driver.py [--files 2000]
"""

from __future__ import annotations

import argparse
import math
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import make_checkpoint  # noqa: E402

from matpac_cli.encoder.cpu import cpu_label  # noqa: E402

H200_CHUNKS_S = 10_000  # chunks a second one H200 encodes (bf16, batch 128)


def answers(plans, files: int, seconds: float, segments: bool) -> tuple[list[bytes], int]:
    """The packs' answers for `files` files of `seconds` each, as actors send them; and the
    chunks each file has."""
    from matpac_cli.engines.packs import PART
    from matpac_cli.pipeline.assemble import Segment, Slot

    p = plans[0].predictor
    grid, hop = p.dims.n_t, p.fe.chunk_hop(p.dims.n_t) / p.fe.sample_rate
    chunks = max(1, math.ceil(seconds / hop))
    rng = np.random.default_rng(0)
    packs, entries, held = [], [], 0
    for i in range(files):
        for part in range(math.ceil(chunks / PART)):
            n = min(PART, chunks - part * PART)
            slot = Slot(None, plans)
            slot.sums[0] += rng.standard_normal(slot.sums[0].shape)
            slot.counts[0] = n * grid // 4
            if segments:
                for k in range(part * PART, part * PART + n):
                    emb = rng.standard_normal(p.dims.embed_dim).astype(np.float32)
                    slot.segments[0][k] = Segment(k * hop, (k + 1) * hop, emb, grid // 4)
            entries.append((i, grid, part, (slot.sums, slot.counts, slot.frames, slot.segments, n * hop)))
            held += n
        facts = {"chunks": {grid: chunks}, "parts": {grid: math.ceil(chunks / PART)}, "error": None}
        facts.update(duration_s=seconds, sample_rate=44100, channels=2, truncated=None)
        entries.append((i, 0, -1, facts))
        if held >= PART:
            packs.append(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
            entries, held = [], 0
    if entries:
        packs.append(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
    return packs, chunks


def engine_side(plans, packs: list[bytes], files: int) -> float:
    """Seconds of the driver's engine work for all packs: unpickle, merge, hand on."""
    from matpac_cli.engines.work import Collector
    from matpac_cli.events import NoEvents
    from matpac_cli.pipeline.discovery import Item

    items = [Item(f"t{i}.flac", Path(f"t{i}.flac")) for i in range(files)]
    done = []
    collector = Collector(items, plans, NoEvents(), done.append)
    t0 = time.process_time()
    for blob in packs:
        for entry in pickle.loads(blob):
            collector.add(*entry)
    took = time.process_time() - t0
    assert len(done) == files, len(done)
    return took


def library_side(plans, files: int, seconds: float, segments: bool) -> float:
    """Seconds of the job's per-file work on the driver: each result stored in a real library."""
    from matpac_cli.library.key import Setting
    from matpac_cli.library.store import Library  # and Lance: imported before the clock starts
    from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Segment
    from matpac_cli.pipeline.discovery import Item

    p, plan = plans[0].predictor, plans[0]
    rng = np.random.default_rng(1)
    hop = p.fe.chunk_hop(p.dims.n_t) / p.fe.sample_rate
    segs = [
        Segment(k * hop, (k + 1) * hop, rng.standard_normal(p.dims.embed_dim).astype(np.float32))
        for k in range(math.ceil(seconds / hop))
    ]
    emb = rng.standard_normal((1, p.dims.embed_dim)).astype(np.float32)
    results = [
        FileResult(
            Item(f"t{i}.flac", Path(f"t{i}.flac")),
            seconds,
            44100,
            2,
            [EncoderOutput(emb, None, segs if segments else [])],
        )
        for i in range(files)
    ]
    root = Path(tempfile.mkdtemp(prefix="matpac-ray-driver-"))
    try:
        library, setting = Library(root), Setting.of(plan)
        keys = [f"{i:032x}" for i in range(files)]
        library.holding(keys, setting, plan.resolved_layers())  # as a run asks before it encodes
        t0 = time.process_time()
        for key, res in zip(keys, results):
            library.add(key, setting, plan, res, res.outputs[0])
        library.close()
        return time.process_time() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def written_answers(plan, keys: list[str], shard, seconds: float) -> list[bytes]:
    """The write tasks' answers for files of `seconds` keyed `keys` (with their segments where
    `plan` keeps them), each finished file's `DONE` entry built as an actor sends it and written
    by the real write task into the library (`shard`): the workers' work, not timed."""
    from matpac_cli.engines.work import DONE
    from matpac_cli.engines.writes import write_files, write_size
    from matpac_cli.pipeline.assemble import Segment

    p, rng, files, blobs = plan.predictor, np.random.default_rng(2), len(keys), []
    hop = p.fe.chunk_hop(p.dims.n_t) / p.fe.sample_rate
    for start in range(0, files, write_size(files)):
        rows = []
        for i in range(start, min(start + write_size(files), files)):
            emb = rng.standard_normal((1, p.dims.embed_dim)).astype(np.float32)
            segs = [
                Segment(
                    k * hop, (k + 1) * hop, rng.standard_normal(p.dims.embed_dim).astype(np.float32), p.dims.n_t // 4
                )
                for k in range(math.ceil(seconds / hop) if plan.segments else 0)
            ]
            payload = {"key": keys[i], "facts": (seconds, 44100, 2, None), "audio": seconds}
            payload["outputs"] = [(plan.resolved_layers(), emb, segs if plan.segments else None)]
            rows.append(pickle.dumps([(i, 0, DONE, payload)]))
        blobs.append(write_files({"data": np.array(rows, dtype=object)}, shard)["data"][0])
    return blobs


def tag_recorder(library, plans, summary, events, results: dict):
    """`tag --segments`' own callback (`jobs.tag_score.recorder`): each stored file waits for its
    batch, whose clip embeddings and segments are read back from the library (`Waiting`) and
    scored (no head here: the heads' work is the same on either path); and its `Waiting`."""
    from matpac_cli.jobs import tag_score

    def emit(item, meta, scores) -> None:
        results[item.name] = meta

    waiting = tag_score.Waiting(library, plans, [], [], emit, 1.0)
    return tag_score.recorder(([], True, 1.0), summary, events, waiting, emit), waiting


def written_side(plans, files: int, seconds: float, heap: str = "settled") -> tuple[float, float, float, float]:
    """The workers write (`engines.writes`): the write tasks' answers for `files` finished files
    (`written_answers`), then the driver's whole share, timed: unpickle, adopt each fragment,
    hand each file on to the job's own callbacks (`jobs.stored`'s storing and the job's recorder:
    `embed`'s keeps each file's facts for the output; `tag --segments`' reads each batch's
    segments back from the library, `tag_recorder`; and the events that count it), and commit
    the fragments. `heap`: "settled" as a run settles the garbage collector (`engines.settled`),
    "default" with Python's own settings. Bytes and seconds of the driver per file, and apart
    the seconds per file of the tidy at the run's end: Lance merging the run's fragments on the
    driver (it reads and rewrites the rows once, in Rust), and the same library's merge
    rewritten by other processes, the driver planning and committing (`merged_elsewhere`)."""
    import contextlib

    from matpac_cli.engines import settled
    from matpac_cli.engines.work import Collector
    from matpac_cli.events import KeepFailures, NoEvents
    from matpac_cli.interrupts import whole
    from matpac_cli.jobs import embed, stored
    from matpac_cli.library.key import Setting
    from matpac_cli.library.shards import Sink
    from matpac_cli.library.store import Library
    from matpac_cli.pipeline.discovery import Item

    plan = plans[0]
    root = Path(tempfile.mkdtemp(prefix="matpac-ray-driver-"))
    try:
        library = Library(root)
        items = [Item(f"t{i}.flac", Path(f"t{i}.flac")) for i in range(files)]
        keys = {item.name: f"{i:032x}" for i, item in enumerate(items)}
        sink = Sink(library, [Setting.of(plan)], [plan.resolved_layers()], keys, [plan.segments])
        blobs = written_answers(plan, list(keys.values()), sink.shard(), seconds)
        summary, results, settings = embed.Summary(), {}, [Setting.of(plan)]
        events = KeepFailures(NoEvents(), summary.failures)
        on_result, waiting = embed._recorder(embed.EmbedConfig(Path("e.npy")), 1, results, summary, events), None
        if plan.segments:
            on_result, waiting = tag_recorder(library, plans, summary, events, results)
        by_item = {item: keys[item.name] for item in items}
        storing = stored._storer(library, (plans, settings), by_item, {}, events, on_result)
        recording = stored._Recording(events, library, keys, settings, {})
        collector = Collector(items, plans, recording, storing, sink)
        with settled() if heap == "settled" else contextlib.nullcontext():
            t0 = time.process_time()
            for blob in blobs:
                with whole():  # as engines.ray's driver hands an answer's files on
                    for entry in pickle.loads(blob):
                        collector.add(*entry)
                    collector.release()  # the files whose fragments the library has committed
            collector.release(now=True)  # the last commit, and the files it holds
            if waiting is not None:
                waiting.flush()  # the last batch's segments read back
            t1 = time.process_time()
        assert len(results) == files == summary.done and not summary.failures, (len(results), summary.failures[:1])
        sink.close()
        shutil.copytree(root, root.with_name(root.name + "-twin"))  # the same library, for the workers' merge
        library.close()  # the end of the run's tidy: Lance merges the run's small fragments
        tidy = time.process_time() - t1
        return sum(len(b) for b in blobs) / files, (t1 - t0) / files, tidy / files, merged_elsewhere(root) / files
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.with_name(root.name + "-twin"), ignore_errors=True)


def merged_elsewhere(root: Path) -> float:
    """Seconds of the driver's CPU for the end-of-run tidy of `root`'s twin where other processes
    rewrite the rows (`jobs.tidy` on a Ray cluster; here a process pool, not timed: the workers'
    work): planned, the rewrites' results unpickled, committed, and the library closed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from matpac_cli.library import compaction, tables
    from matpac_cli.library.store import Library

    twin = root.with_name(root.name + "-twin")
    fragments = len(tables.open_table(twin, "clips").get_fragments())
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:  # Lance is not fork-safe
        list(pool.map(abs, [1, 2]))  # the workers started before the clock
        t0 = time.process_time()
        library, planned = Library(twin), compaction.plan(twin)
        results = list(pool.map(compaction.Rewrite.__call__, planned.rewrites))
        library.merged |= planned.settled | compaction.commit(twin, planned, results)
        library.close()
        took = time.process_time() - t0
    assert "clips" in library.merged and len(tables.open_table(twin, "clips").get_fragments()) < fragments
    return took


def fed(chunks: int, per_file_s: float) -> float:
    """H200s one driver keeps busy (a projection), at `per_file_s` of driver per file of `chunks`."""
    return chunks / per_file_s / H200_CHUNKS_S


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    a = ap.parse_args()
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.pipeline.assemble import Plan

    work = Path(tempfile.mkdtemp(prefix="matpac-ray-driver-"))
    make_checkpoint(work / "vitb.pt")
    predictor = Predictor.load(str(work / "vitb.pt"), "cpu", "fp32")
    print(f"driver per file, {a.files} files a workload, ViT-B shapes; {cpu_label()}")
    print(
        f"{'workload':34s} {'bytes/file':>10s} {'engine us/file':>15s} {'+library us/file':>17s} {'H200s fed (projected)':>22s}"
    )
    for name, seconds, segments in (
        ("embed, 3.5-minute tracks", 210.0, False),
        ("tag --segments, 3.5-minute tracks", 210.0, True),
        ("embed, 6-second clips", 6.0, False),
    ):
        plans = [Plan(predictor, segments=segments)]
        packs, chunks = answers(plans, a.files, seconds, segments)
        size = sum(len(b) for b in packs) / a.files
        engine = engine_side(plans, packs, a.files) / a.files
        library = library_side(plans, min(a.files, 1000), seconds, segments) / min(a.files, 1000)
        print(
            f"{name:34s} {size:10,.0f} {engine * 1e6:15,.0f} {library * 1e6:17,.0f} "
            f"{fed(chunks, engine):10,.1f} (engine) {fed(chunks, engine + library):6,.1f} (with library)"
        )
    print("\nthe workers write the library (`embed`, `tag --segments` into a library: engines/writes.py); the driver's")
    print("whole share (with segments: each batch's segments read back from the library to score, jobs/tag_score.py)")
    print("(end tidy: the driver's CPU for the run's end merge, by the driver itself / by the workers, jobs/tidy.py)")
    print(
        f"{'workload':34s} {'bytes/file':>10s} {'driver us/file':>15s} {'H200s fed (projected)':>22s} "
        f"{'end tidy us/file: driver':>25s} {'workers':>8s} {'ratio':>6s}"
    )
    for name, seconds, segments in (
        ("embed, 3.5-minute tracks", 210.0, False),
        ("tag --segments, 3.5-minute tracks", 210.0, True),
        ("embed, 6-second clips", 6.0, False),
    ):
        plans = [Plan(predictor, segments=segments)]
        _, chunks = answers(plans, 1, seconds, False)
        n = min(a.files, 500) if segments else a.files  # 571 KB a file written (and merged) in the library
        size, per_file, tidy, elsewhere = written_side(plans, n, seconds)
        print(
            f"{name:34s} {size:10,.0f} {per_file * 1e6:15,.1f} {fed(chunks, per_file):22,.1f} "
            f"{tidy * 1e6:25,.1f} {elsewhere * 1e6:8,.1f} {tidy / elsewhere:5,.1f}x"
        )
    print("\nthe same, 6-second clips, with Python's garbage collector as it is outside a run (`engines.settled`)")
    plans = [Plan(predictor)]
    _, chunks = answers(plans, 1, 6.0, False)
    for heap in ("default", "settled", "default", "settled"):
        per_file = written_side(plans, a.files, 6.0, heap)[1]
        print(f"{'embed, 6-second clips, ' + heap:34s} {'':10s} {per_file * 1e6:15,.1f} {fed(chunks, per_file):22,.1f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
