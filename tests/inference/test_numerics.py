"""Production numerics against the independent slow reference (tests/reference.py).

Every expected value here comes from `reference.py` (float64, written from the spec alone) on the
samples soundfile reads back from the very file the production code is given. The production
side is driven three ways: the library (`Predictor` + `pipeline.run`, `embedding.embed`), the CLI
in-process (`cli.main([...])`) and the real command in a subprocess.

Tolerances (measured on CPU with the tiny width-128 checkpoints: clip error <= 5e-6, per-frame
error <= 3e-5 at 44.1 / 22.05 kHz, where the production resampler runs in float32 and the
reference in float64; <= 3e-6 at 16 kHz): clip embeddings atol 1e-4, frames atol 5e-4,
batch-size invariance 1e-5.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import reference as R
import soundfile as sf
import torch
from conftest import CLIP_ATOL, CLIPS, REPO, clip_frames, clip_items, read_wave, run_matpac, run_pipeline, write_audio

FRAME_ATOL = 5e-4
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module")
def sd992(ckpts):
    return torch.load(ckpts["tiny992_as"], map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ref608(clips, sd608) -> dict[str, dict[int, np.ndarray]]:
    """name -> {layer: reference frames (columns, 640)} for layers 1 and 2 (the last)."""
    return clip_frames(clips, sd608, (1, 2))


@pytest.fixture(scope="module")
def ref992(clips, sd992) -> dict[str, np.ndarray]:
    out = {}
    for name in CLIPS:
        wave, sr = read_wave(clips / name)
        out[name] = R.reference_frames(sd992, wave, sr)
    return out


@pytest.fixture(scope="module")
def lib_results(predictor, clips):
    """One library pass over every clip: layers 1 and 2, frames kept, 5 chunks per batch."""
    return run_pipeline(predictor, clips, layers=(1, 2), batch_size=5)


def _assert_close(got, expected, atol, what):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    err = float(np.max(np.abs(got - expected)))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


def _read_index(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------
# The reference itself agrees with the column counts this file expects (guards the table above)
# ---------------------------------------------------------------------------------------------
def test_reference_column_counts(ref608, ref992):
    for name, (_, _, _, cols608, cols992) in CLIPS.items():
        assert ref608[name][2].shape == (cols608, 640), name
        assert ref992[name].shape == (cols992, 640), name


# ---------------------------------------------------------------------------------------------
# Library: Predictor + pipeline.run
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_library_clip_embedding_last_layer(lib_results, ref608, name):
    emb = lib_results[name].outputs[0].embedding  # (layers, 640), layers (1, 2)
    assert emb.shape == (2, 640)
    _assert_close(emb[1], ref608[name][2].mean(axis=0), CLIP_ATOL, f"{name} layer 2 clip")


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_library_clip_embedding_layer1(lib_results, ref608, name):
    emb = lib_results[name].outputs[0].embedding
    _assert_close(emb[0], ref608[name][1].mean(axis=0), CLIP_ATOL, f"{name} layer 1 clip")


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_library_frames(lib_results, ref608, name):
    frames = lib_results[name].outputs[0].frames  # (columns, layers, 640)
    cols = CLIPS[name][3]
    assert frames.shape == (cols, 2, 640)
    _assert_close(frames[:, 0], ref608[name][1], FRAME_ATOL, f"{name} layer 1 frames")
    _assert_close(frames[:, 1], ref608[name][2], FRAME_ATOL, f"{name} layer 2 frames")


def test_library_reports_source_facts(lib_results):
    for name, (seconds, sr, ch, _, _) in CLIPS.items():
        res = lib_results[name]
        assert res.sample_rate == sr and res.channels == ch, name
        assert res.duration_s == pytest.approx(round(seconds * sr) / sr, abs=1e-9), name


def test_library_last_layer_default_and_single_layer(predictor, clips, ref608):
    """layers=(-1,) is the last layer; layers=(1,) runs only up to block 1."""
    last = run_pipeline(predictor, clips, layers=(-1,), batch_size=16, frames=False)
    first = run_pipeline(predictor, clips, layers=(1,), batch_size=3, frames=False)
    for name in CLIPS:
        assert last[name].outputs[0].embedding.shape == (1, 640)
        _assert_close(last[name].outputs[0].embedding[0], ref608[name][2].mean(0), CLIP_ATOL, name)
        _assert_close(first[name].outputs[0].embedding[0], ref608[name][1].mean(0), CLIP_ATOL, name)


def test_library_batch_size_invariance(predictor, clips, lib_results):
    """Batch 1 (every chunk alone) vs batch 7 (full 38-column chunks padded next to 1-, 10-,
    12-column ones): with correct attention masking the results are the same."""
    one = run_pipeline(predictor, clips, layers=(1, 2), batch_size=1)
    seven = run_pipeline(predictor, clips, layers=(1, 2), batch_size=7)
    for name in CLIPS:
        a, b = one[name].outputs[0], seven[name].outputs[0]
        _assert_close(b.embedding, a.embedding.astype(np.float64), BATCH_ATOL, f"{name} clip")
        _assert_close(b.frames, a.frames.astype(np.float64), BATCH_ATOL, f"{name} frames")
        c = lib_results[name].outputs[0]  # batch 5
        _assert_close(c.embedding, a.embedding.astype(np.float64), BATCH_ATOL, f"{name} clip b5")


def test_interleaved_decoding_keeps_input_order_and_values(predictor, clips, lib_results, tmp_path):
    """Four files decode at once and their chunks share batches, yet results and failures come
    back in input order with the values of the one-file-at-a-time run."""
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.events import Listeners
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import Item

    bad = tmp_path / "e_bad.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    items = clip_items(clips)
    items.insert(5, Item(str(bad), bad))
    seen: list[tuple[str, object]] = []
    run(
        RunOptions(batch_size=3, workers=4),
        items,
        [Plan(predictor, layers=(1, 2), frames=True)],
        Listeners(failure=lambda e: seen.append((e.path, e))),
        on_result=lambda r: seen.append((r.item.name, r)),
    )
    assert [name for name, _ in seen] == [item.name for item in items]
    for name, got in seen:
        if name == str(bad):
            assert "e_bad.wav" in str(got)
            continue
        want = lib_results[Path(name).name].outputs[0]
        _assert_close(got.outputs[0].embedding, want.embedding.astype(np.float64), BATCH_ATOL, name)
        _assert_close(got.outputs[0].frames, want.frames.astype(np.float64), BATCH_ATOL, f"{name} frames")


def test_many_short_files_waiting_on_a_batch_are_flushed(predictor, tmp_path, sd608):
    """More files than may wait at once, each far smaller than a batch: the run neither stalls
    nor drops any, and each keeps its own embedding."""
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.events import Listeners
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import Item

    paths = [write_audio(tmp_path / f"s{i:02d}.wav", 0.3 + 0.05 * i, seed=i) for i in range(40)]
    got: list = []
    run(
        RunOptions(batch_size=64, workers=1),
        [Item(str(p), p) for p in paths],
        [Plan(predictor)],
        Listeners(failure=lambda e: pytest.fail(str(e))),
        on_result=got.append,
    )
    assert [r.item.path for r in got] == paths
    for r in got[::13]:
        wave, sr = read_wave(r.item.path)
        _assert_close(r.outputs[0].embedding[0], R.reference_frames(sd608, wave, sr).mean(0), CLIP_ATOL, r.item.name)


def test_a_failing_callback_stops_the_decoding_threads(predictor, tmp_path):
    """A writer that raises ends the run with its error, and no decoding thread lives on to
    keep the process from exiting, even while the caller still holds the exception."""
    import threading

    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.pipeline.assemble import Plan
    from matpac_cli.pipeline.discovery import Item

    paths = [write_audio(tmp_path / f"w{i}.wav", 8.0, seed=i) for i in range(12)]

    def explode(result):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full") as caught:
        run(RunOptions(batch_size=2, workers=3), [Item(str(p), p) for p in paths], [Plan(predictor)], on_result=explode)
    assert caught.traceback  # the frames stay referenced here
    assert not [t for t in threading.enumerate() if t.name.startswith("matpac-decode")]


def test_gpu_runs_decode_with_one_torch_thread_and_restore_it():
    """With the encoder on a GPU the decoding threads run torch single-threaded during the run,
    and a notebook's own setting is back afterwards; asked-for threads are left alone."""
    from types import SimpleNamespace

    from matpac_cli.engines.local import _torch_threads_for

    def plan(device, threads=None):
        return SimpleNamespace(predictor=SimpleNamespace(device=device, threads=threads))

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with _torch_threads_for([plan("cuda")]):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        for plans in ([plan("cpu")], [plan("cuda", threads=2)], [plan("cuda"), plan("cpu")]):
            with _torch_threads_for(plans):
                assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_library_two_plans_one_pass(ckpts, clips, predictor, ref608, ref992):
    """Two encoders (608 and 992 frames) in the same pass each give their own reference."""
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.pipeline.assemble import Plan

    p992 = Predictor.load(str(ckpts["tiny992_as"]), device="cpu", precision="fp32")
    assert p992.dims.n_t == 992
    results = {}
    run(
        RunOptions(batch_size=4, workers=1),
        clip_items(clips),
        [Plan(predictor), Plan(p992, frames=True)],
        on_result=lambda r: results.__setitem__(Path(r.item.name).name, r),
    )
    assert sorted(results) == sorted(CLIPS)
    for name in CLIPS:
        out608, out992 = results[name].outputs
        _assert_close(out608.embedding[0], ref608[name][2].mean(0), CLIP_ATOL, f"{name} 608")
        _assert_close(out992.embedding[0], ref992[name].mean(0), CLIP_ATOL, f"{name} 992")
        _assert_close(out992.frames[:, 0], ref992[name], FRAME_ATOL, f"{name} 992 frames")


# ---------------------------------------------------------------------------------------------
# Library: embedding.embed (writes emb.npy / emb.csv / frames)
# ---------------------------------------------------------------------------------------------
def test_embed_library_layer_all_with_frames(predictor, clips, ref608, tmp_path):
    from matpac_cli.config import RunOptions
    from matpac_cli.jobs.embed import EmbedConfig, embed

    out = tmp_path / "emb.npy"
    frames_dir = tmp_path / "frames"
    summary = embed(
        clip_items(clips),
        predictor,
        EmbedConfig(out=out, layer="all", frames_dir=frames_dir, options=RunOptions(batch_size=6, workers=2)),
    )
    assert summary.done == len(CLIPS) and not summary.failures
    X = np.load(out)
    assert X.dtype == np.float32 and X.shape == (len(CLIPS), 2, 640)
    rows = _read_index(out.with_suffix(".csv"))
    assert [Path(r["path"]).name for r in rows] == sorted(CLIPS)
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        assert int(row["row"]) == i
        for layer in (1, 2):
            _assert_close(X[i, layer - 1], ref608[name][layer].mean(0), CLIP_ATOL, f"{name} L{layer}")
        (fpath,) = list(frames_dir.rglob(name + "*.npy")) or list(frames_dir.rglob(Path(name).stem + "*.npy"))
        F = np.load(fpath)
        assert F.shape == (CLIPS[name][3], 2, 640)
        for layer in (1, 2):
            _assert_close(F[:, layer - 1], ref608[name][layer], FRAME_ATOL, f"{name} frames L{layer}")


# ---------------------------------------------------------------------------------------------
# CLI in-process
# ---------------------------------------------------------------------------------------------
def _cli(args: list[str]) -> int:
    from matpac_cli.cli import main

    return main(args)


def _embed_cli(clips: Path, out: Path, ckpt: Path, *extra: str) -> tuple[np.ndarray, list[dict]]:
    rc = _cli(
        [
            "embed",
            str(clips),
            "--out",
            str(out),
            "--model",
            str(ckpt),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--quiet",
            *extra,
        ]
    )
    assert rc == 0
    return np.load(out), _read_index(out.with_suffix(".csv"))


def test_cli_default_layer_matches_reference(ckpts, clips, ref608, tmp_path):
    X, rows = _embed_cli(clips, tmp_path / "emb.npy", ckpts["tiny608"])
    assert X.dtype == np.float32 and X.shape == (len(CLIPS), 640)
    assert [Path(r["path"]).name for r in rows] == sorted(CLIPS)
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        seconds, sr, ch, _, _ = CLIPS[name]
        assert int(row["row"]) == i
        assert int(row["sample_rate"]) == sr and int(row["channels"]) == ch
        assert float(row["duration_s"]) == pytest.approx(seconds, abs=1e-3)
        _assert_close(X[i], ref608[name][2].mean(0), CLIP_ATOL, name)


def test_cli_layer_1(ckpts, clips, ref608, tmp_path):
    X, rows = _embed_cli(clips, tmp_path / "emb.npy", ckpts["tiny608"], "--layer", "1")
    assert X.shape == (len(CLIPS), 640)
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        _assert_close(X[i], ref608[name][1].mean(0), CLIP_ATOL, name)
        # layer 1 really is the block-1 residual stream, not the final output
        assert np.max(np.abs(X[i] - ref608[name][2].mean(0))) > 1e-2


def test_cli_layer_all_and_frames(ckpts, clips, ref608, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "in"
    local.mkdir()
    for name in CLIPS:
        (local / name).write_bytes((clips / name).read_bytes())
    X, rows = _embed_cli(Path("in"), Path("emb.npy"), ckpts["tiny608"], "--layer", "all", "--frames", "frames")
    assert X.shape == (len(CLIPS), 2, 640)
    npys = sorted((tmp_path / "frames").rglob("*.npy"))
    assert len(npys) == len(CLIPS)
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        for layer in (1, 2):
            _assert_close(X[i, layer - 1], ref608[name][layer].mean(0), CLIP_ATOL, f"{name} L{layer}")
        hits = [p for p in npys if p.name.startswith(name) or p.stem == Path(name).stem]
        assert len(hits) == 1, (name, npys)
        F = np.load(hits[0])
        assert F.dtype == np.float32 and F.shape == (CLIPS[name][3], 2, 640)
        for layer in (1, 2):
            _assert_close(F[:, layer - 1], ref608[name][layer], FRAME_ATOL, f"{name} frames L{layer}")


def test_cli_frames_last_layer(ckpts, clips, ref608, tmp_path):
    frames_dir = tmp_path / "frames"
    X, rows = _embed_cli(clips, tmp_path / "emb.npy", ckpts["tiny608"], "--frames", str(frames_dir))
    npys = sorted(frames_dir.rglob("*.npy"))
    assert len(npys) == len(CLIPS)
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        (hit,) = [p for p in npys if p.name.startswith(name) or p.stem == Path(name).stem]
        F = np.load(hit)
        assert F.shape == (CLIPS[name][3], 640)  # one 640-d vector per 160 ms
        _assert_close(F, ref608[name][2], FRAME_ATOL, f"{name} frames")
        # the clip row is the mean of the file's frames
        np.testing.assert_allclose(X[i], F.mean(axis=0), atol=1e-5)


def test_cli_992_frame_checkpoint(ckpts, clips, ref992, tmp_path):
    frames_dir = tmp_path / "frames"
    X, rows = _embed_cli(
        clips, tmp_path / "emb.npy", ckpts["tiny992_as"], "--frames", str(frames_dir), "--batch-size", "3"
    )
    assert X.shape == (len(CLIPS), 640)
    npys = sorted(frames_dir.rglob("*.npy"))
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        _assert_close(X[i], ref992[name].mean(0), CLIP_ATOL, name)
        (hit,) = [p for p in npys if p.name.startswith(name) or p.stem == Path(name).stem]
        _assert_close(np.load(hit), ref992[name], FRAME_ATOL, f"{name} frames")


def test_cli_batch_size_invariance(ckpts, clips, ref608, tmp_path, no_library):
    """Both runs encode (the library, whose key leaves out the batch size, would hand the second
    run the first run's numbers)."""
    X1, rows1 = _embed_cli(clips, tmp_path / "b1" / "emb.npy", ckpts["tiny608"], "--batch-size", "1", "--layer", "all")
    X7, rows7 = _embed_cli(clips, tmp_path / "b7" / "emb.npy", ckpts["tiny608"], "--batch-size", "7", "--layer", "all")
    counts = json.loads((tmp_path / "b7" / "emb.manifest.json").read_text())["counts"]
    assert counts == {"computed": len(CLIPS), "reused": 0, "failed": 0}
    assert [r["path"] for r in rows1] == [r["path"] for r in rows7]
    assert X1.shape == X7.shape == (len(CLIPS), 2, 640)
    err = float(np.max(np.abs(X1.astype(np.float64) - X7)))
    assert err <= BATCH_ATOL, f"batch 1 vs 7 differ by {err:.3g}"
    for i, row in enumerate(rows7):
        name = Path(row["path"]).name
        _assert_close(X7[i, 1], ref608[name][2].mean(0), CLIP_ATOL, name)


def test_cli_audioset_scores(ckpts, clips, sd992, tmp_path):
    """`matpac tag --head events` on the 992-frame checkpoint: every class score vs the reference."""
    labels = (REPO / "weights" / "labels" / "audioset.txt").read_text(encoding="utf-8").splitlines()
    assert len(labels) == 527 and len(set(labels)) == 527
    names = ["a_tiny.wav", "c_long14s.wav", "f_48k_stereo.wav"]
    out = tmp_path / "tags.csv"
    rc = _cli(
        [
            "tag",
            *[str(clips / n) for n in names],
            "--model",
            str(ckpts["tiny992_as"]),
            "--head",
            "events",
            "--top-k",
            "0",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--quiet",
        ]
    )
    assert rc == 0
    rows = _read_index(out)
    for name in names:
        wave, sr = read_wave(clips / name)
        expected = R.reference_audioset_scores(sd992, wave, sr)
        got = np.full(527, np.nan)
        for r in rows:
            if Path(r["path"]).name == name:
                got[labels.index(r["label"])] = float(r["score"])
        assert not np.isnan(got).any(), f"{name}: not every class reported"
        _assert_close(got, expected, 1e-4, f"{name} audioset scores")


# ---------------------------------------------------------------------------------------------
# The real command in a subprocess
# ---------------------------------------------------------------------------------------------
def test_subprocess_embed(ckpts, clips, ref608, tmp_path):
    out = tmp_path / "emb.npy"
    proc = run_matpac(
        [
            "embed",
            str(clips),
            "--out",
            str(out),
            "--model",
            str(ckpts["tiny608"]),
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    X = np.load(out)
    rows = _read_index(out.with_suffix(".csv"))
    assert X.shape == (len(CLIPS), 640) and len(rows) == len(CLIPS)
    for i, row in enumerate(rows):
        name = Path(row["path"]).name
        _assert_close(X[i], ref608[name][2].mean(0), CLIP_ATOL, name)


# ---------------------------------------------------------------------------------------------
# The shortest usable file: 400 samples after resampling (spec 1.3), whatever the source rate
# ---------------------------------------------------------------------------------------------
def _min_samples(sr: int) -> int:
    """Fewest source samples whose spec resampling to 16 kHz yields >= 400 samples (one frame)."""
    if sr == 16000:
        return 400
    n = int(400 * sr / 16000) - 4
    while len(R.reference_waveform(np.zeros(n, dtype=np.float32), sr)) < 400:
        n += 1
    return n


@pytest.mark.parametrize("sr", [16000, 8000, 44100, 48000, 22050])
def test_shortest_file_with_one_frame_is_embedded(ckpts, sd608, tmp_path, capsys, sr):
    """e.g. 1100 samples at 44.1 kHz (24.9 ms) resample to 400 samples: one frame, so an
    embedding, not 'too short' (a 25 ms limit at the source rate got this wrong)."""
    n = _min_samples(sr)
    x = (0.2 * np.random.default_rng(sr).standard_normal(n)).astype(np.float32)
    path = tmp_path / f"short_{sr}.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    rc = _cli(
        [
            "embed",
            str(path),
            "--out",
            str(tmp_path / "emb.npy"),
            "--model",
            str(ckpts["tiny608"]),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    X = np.load(tmp_path / "emb.npy")
    assert X.shape == (1, 640)
    _assert_close(X[0], R.reference_embedding(sd608, x, sr), CLIP_ATOL, f"{n} samples at {sr} Hz")


@pytest.mark.parametrize("sr", [16000, 8000, 44100, 48000, 22050])
def test_file_too_short_for_a_frame_is_refused(ckpts, tmp_path, capsys, sr):
    n = _min_samples(sr) - 1
    x = (0.2 * np.random.default_rng(sr).standard_normal(n)).astype(np.float32)
    with pytest.raises(ValueError):  # the reference agrees there is no frame
        R.reference_logmel(x, sr)
    bad = tmp_path / "in" / "too_short.wav"
    bad.parent.mkdir()
    sf.write(bad, x, sr, subtype="FLOAT")
    write_audio(tmp_path / "in" / "ok.wav", 0.3, sr=sr)
    rc = _cli(
        [
            "embed",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "emb.npy"),
            "--model",
            str(ckpts["tiny608"]),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 1  # some inputs failed, the rest were written
    assert "too_short.wav" in capsys.readouterr().err
    rows = _read_index(tmp_path / "emb.csv")
    assert [Path(r["path"]).name for r in rows] == ["ok.wav"]
    assert np.load(tmp_path / "emb.npy").shape == (1, 640)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_matches_reference_and_is_batch_invariant(ckpts, clips, ref608):
    """fp32 on CUDA (TF32 off) through the asynchronous path (pinned staging, batches in flight,
    interleaved decoding) gives each file its reference embedding and frames."""
    from matpac_cli.inference.predictor import Predictor

    p = Predictor.load(str(ckpts["tiny608"]), device="cuda", precision="fp32")
    one = run_pipeline(p, clips, layers=(2,), batch_size=1)
    seven = run_pipeline(p, clips, layers=(2,), batch_size=7)
    for name in CLIPS:
        got = seven[name].outputs[0]
        _assert_close(got.embedding[0], ref608[name][2].mean(0), CLIP_ATOL, name)
        _assert_close(got.frames[:, 0], ref608[name][2], FRAME_ATOL, f"{name} frames")
        _assert_close(
            got.embedding[0], one[name].outputs[0].embedding[0].astype(np.float64), BATCH_ATOL, f"{name} b1 vs b7"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_precision_is_reduced_and_close(ckpts, clips, ref608):
    """`--precision auto` on CUDA runs bf16 (or fp16) and stays near the float64 reference."""
    from matpac_cli.inference.predictor import Predictor

    p = Predictor.load(str(ckpts["tiny608"]), device="cuda", precision="auto")
    assert p.dtype in (torch.bfloat16, torch.float16)
    got = run_pipeline(p, clips, layers=(2,), batch_size=8, frames=False)
    for name in CLIPS:
        _assert_close(got[name].outputs[0].embedding[0], ref608[name][2].mean(0), 5e-2, name)


def test_predictor_embed_on_arrays_matches_reference(ckpts):
    """The in-memory API (`Predictor.embed`) gives the spec's embedding for arrays, any rate."""
    from matpac_cli.inference.predictor import Predictor

    pred = Predictor.load(str(ckpts["tiny608"]), device="cpu")
    sd = torch.load(ckpts["tiny608"], weights_only=True)
    rng = np.random.default_rng(5)
    for sr, shape in ((16000, (16000 * 14,)), (44100, (44100 * 3, 2)), (22050, (2000,))):
        wave = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        got = pred.embed(wave, sr, batch_size=2)
        np.testing.assert_allclose(got, R.reference_embedding(sd, wave, sr), atol=1e-4)
    both = pred.embed(wave, 22050, layers=(1, 2))
    assert both.shape == (2, 640)
    np.testing.assert_allclose(both[0], R.reference_embedding(sd, wave, 22050, layer=1), atol=1e-4)
